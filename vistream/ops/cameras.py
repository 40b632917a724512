"""One camera as the daemon watches it: its reader process, its ring, and whether it is online.

The daemon's tick calls `supervise` (a hung reader is killed, a dead one started again within
its restart budget) and `observe` (online or not, from the ring header the reader writes) for
every camera; what `observe` says is news, the daemon announces on MQTT.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from vistream.config.models import CameraConfig
from vistream.ops.logs import camera
from vistream.ops.process import Child
from vistream.ops.supervise import RestartBudget
from vistream.ring.shm import FrameRing, State

log = logging.getLogger(__name__)

READER_GRACE_S = 10.0  # on top of the camera's open/read timeouts before a silent reader counts as hung
OFFLINE_WARN_S = 60.0  # a camera offline this long gets a warning (once per outage)


@dataclass
class CameraRuntime:
    cfg: CameraConfig
    ring: FrameRing
    child: Child
    budget: RestartBudget = field(default_factory=RestartBudget)
    online: bool = False
    restarts: int = 0
    offline_since: float | None = None  # when the daemon last saw it go offline (monotonic)
    offline_warned: bool = False

    @property
    def name(self) -> str:
        return self.cfg.name

    def supervise(self, now: float) -> None:
        """Kill a reader that wrote no heartbeat for longer than its timeouts allow; start a dead
        one again (at most 5 a minute: its budget)."""
        hdr, extra = self.ring.header, camera(self.name)
        silent = now - max(float(hdr["heartbeat"]), self.child.started_at)
        if self.child.alive and silent > self.cfg.open_timeout_s + self.cfg.read_timeout_s + READER_GRACE_S:
            log.error("camera %s: reader silent for %.0fs: killing it", self.name, silent, extra=extra)
            self.child.stop(1.0)
        if self.child.alive or not self.budget.take():
            return
        log.error("camera %s: reader exited (code %s): restarting it", self.name, self.child.exitcode,
                  extra=extra)  # fmt: skip
        self.child.close()
        self.restarts += 1
        hdr["state"] = State.STARTING
        self.child.start()

    def streaming(self, now: float) -> bool:
        """Is the reader alive, streaming, and was its last frame recent?"""
        hdr = self.ring.header
        return (
            self.child.alive
            and int(hdr["state"]) == State.STREAMING
            and now - float(hdr["last_frame"]) < self.cfg.read_timeout_s
        )

    def observe(self, online: bool, now: float, *, announced: bool) -> bool:
        """Record whether the camera is online; True when that is news to announce (a change, or
        the first word on a camera not `announced` yet). A change is logged; an outage that lasts
        a minute gets one warning."""
        extra = camera(self.name)
        if online == self.online and announced:
            if online:
                return False
            if self.offline_since is None:  # a reader restarted by a reload: its outage starts now
                self.offline_since = now
            down = now - self.offline_since
            if down >= OFFLINE_WARN_S and not self.offline_warned:
                self.offline_warned = True
                hdr = self.ring.header
                state = State.NAMES.get(int(hdr["state"]), "?")
                log.warning("camera %s: offline for %.0fs (reader %s, %d reconnects)",
                            self.name, down, state, int(hdr["reconnects"]), extra=extra)  # fmt: skip
            return False
        self.online = online
        if online and self.offline_since is not None:
            log.info(
                "camera %s: online, after %.0fs offline", self.name, now - self.offline_since, extra=extra
            )
        else:
            log.info("camera %s: %s", self.name, "online" if online else "offline", extra=extra)
        self.offline_since, self.offline_warned = (None, False) if online else (now, False)
        return True
