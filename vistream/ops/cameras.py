"""The daemon's cameras: each one's reader process, ring and online state, and the set of them.

The daemon's tick calls `Cameras.supervise`: for every camera `CameraRuntime.supervise` (a hung
reader is killed, a dead one started again within its restart budget) and `observe` (online or
not, from the ring header the reader writes); what is news, the daemon announces on MQTT.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from vistream.config.models import CameraConfig
from vistream.ops.logs import camera
from vistream.ops.process import SPAWN_ERRNOS, Child, StopFlag, stop_all
from vistream.ops.status import CameraStatus
from vistream.ops.supervise import RestartBudget
from vistream.ring.lifetime import SharedRing
from vistream.ring.naming import segment_name, shm_shortage
from vistream.ring.shm import FrameRing, RingLayout, State

log = logging.getLogger(__name__)

READER_GRACE_S = 10.0  # on top of the camera's open/read timeouts before a silent reader counts as hung
OFFLINE_WARN_S = 60.0  # a camera offline this long gets a warning (once per outage)
FAILED_RETRY_S = 10.0  # a camera whose ring could not be made is tried again this often (and at reloads)


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
        if self.child.alive:
            return
        if self.child.retry_at is not None:  # its last start made no process: no restart to budget
            if self.child.retry_due(now):
                self.child.start()
            return
        if not self.budget.take():
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


@dataclass(frozen=True)
class Entry:
    """One camera of the running config: its ring and reader, or why it could not be started."""

    cfg: CameraConfig
    ring: SharedRing | None = None  # None: it failed to start (no room for its ring)
    runtime: CameraRuntime | None = None  # its reader; None while a reload replaces it, or failed
    failed: str | None = None


class Cameras:
    """Every camera of the daemon: rings, readers, and the ones that failed to start.

    One mapping, swapped whole and written by the main thread only (start, reload, supervision);
    any thread may call `status()`, `config()` and `ring()`, which read one version of it and copy
    ring headers under the ring's lease (vistream.ring.lifetime). `spawn(cfg, ring_name)` makes a
    camera's reader child.
    """

    def __init__(
        self,
        instance: str,
        layout: RingLayout,
        spawn: Callable[[CameraConfig, str], Child],
        retry_s: float = FAILED_RETRY_S,
    ) -> None:
        self.instance, self.layout, self._spawn, self.retry_s = instance, layout, spawn, retry_s
        self._entries: dict[str, Entry] = {}
        self._retry_at = 0.0
        self._announced: set[str] = set()  # cameras whose online state MQTT has been told

    # -- readers (any thread) --------------------------------------------------------

    def ring(self, name: str) -> AbstractContextManager[FrameRing | None]:
        """The camera's ring under a lease, for one copy; None when it has none (any more)."""
        entry = self._entries.get(name)
        return entry.ring.use() if entry and entry.ring else nullcontext(None)

    def release(self, name: str, seq: int) -> None:
        """Let the reader overwrite frame `seq` of the camera (its result is handled), if it has a ring."""
        with self.ring(name) as ring:
            if ring is not None:
                ring.release(seq)

    def config(self, name: str) -> CameraConfig | None:
        """The config of a camera whose reader runs; None for no such camera."""
        entry = self._entries.get(name)
        return entry.cfg if entry and entry.runtime else None

    def status(self) -> list[CameraStatus]:
        """Every camera, in config order, with a copy of its ring header; failed ones with why."""
        out = []
        for entry in self._entries.values():
            if entry.failed is not None:
                out.append(CameraStatus(entry.cfg, failed=entry.failed))
                continue
            rt = entry.runtime
            with self.ring(entry.cfg.name) as ring:
                header = ring.header.copy() if ring is not None else None
            if rt is not None and header is not None:  # else it is being replaced or removed
                out.append(CameraStatus(rt.cfg, rt.online, rt.restarts, header,
                                        spawn_failures=rt.child.spawn_failures))  # fmt: skip
        return out

    @property
    def running(self) -> list[CameraRuntime]:
        return [e.runtime for e in self._entries.values() if e.runtime is not None]

    @property
    def failed(self) -> dict[str, str]:
        return {name: e.failed for name, e in self._entries.items() if e.failed is not None}

    def ring_names(self) -> dict[str, str]:
        """Camera -> its segment's name, for the scheduler."""
        return {name: e.ring.name for name, e in self._entries.items() if e.ring is not None}

    # -- the main thread ----------------------------------------------------------------

    def _set(self, name: str, entry: Entry | None) -> None:
        """A new mapping with the camera's entry replaced (in its place), added or dropped."""
        if entry is None:
            self._entries = {k: v for k, v in self._entries.items() if k != name}
        elif name in self._entries:
            self._entries = {k: entry if k == name else v for k, v in self._entries.items()}
        else:
            self._entries = {**self._entries, name: entry}

    def add(self, cam: CameraConfig) -> str | None:
        """Make the camera's ring and start its reader; None, or why it cannot be (no room in
        /dev/shm: it is kept as failed, for `retry_due`)."""
        shortage = self.make_ring(cam)
        if shortage is None:
            self.start(cam)
        return shortage

    def make_ring(self, cam: CameraConfig) -> str | None:
        """The camera's ring, without its reader yet (at boot the scheduler is given the rings
        first); None, or why there is no room for it."""
        shortage = shm_shortage(self.layout.total_bytes)
        if shortage:
            self._set(cam.name, Entry(cam, failed=shortage))
            return shortage
        try:
            ring = SharedRing(FrameRing.create(segment_name(self.instance, cam.name), self.layout))
        except OSError as exc:
            if exc.errno not in SPAWN_ERRNOS:
                raise
            why = f"cannot make its ring: {os.strerror(exc.errno)}"  # out of descriptors: retried
            self._set(cam.name, Entry(cam, failed=why))
            return why
        self._set(cam.name, Entry(cam, ring))
        return None

    def start(self, cam: CameraConfig) -> None:
        """Start the camera's reader on its ring (a camera that failed only takes the new config)."""
        entry = self._entries.get(cam.name)
        if entry is None or entry.ring is None:
            if entry is not None:
                self._set(cam.name, Entry(cam, failed=entry.failed))
            return
        child = self._spawn(cam, entry.ring.name)
        self._set(cam.name, Entry(cam, entry.ring, CameraRuntime(cam, entry.ring.owned, child)))
        child.start()

    def stop(self, names: list[str], timeout: float, stop: StopFlag | None = None) -> None:
        """Stop these cameras' readers together, with one deadline (see `stop_all`); their rings stay."""
        gone = [e for n in names if (e := self._entries.get(n)) is not None and e.runtime is not None]
        for e in gone:
            self._set(e.cfg.name, Entry(e.cfg, e.ring))
        stop_all([e.runtime.child for e in gone if e.runtime], timeout, stop)
        for e in gone:
            if e.runtime:
                e.runtime.child.close()

    def supervise(self, now: float) -> list[tuple[str, bool]]:
        """Supervise every reader (`CameraRuntime.supervise`) and see whether it streams; returns
        the cameras whose online state is news to announce (a change, or the first word on one)."""
        news = []
        for rt in self.running:
            rt.supervise(now)
            online = rt.streaming(now)
            if self.observe(rt, online, now):
                news.append((rt.name, online))
        return news

    def observe(self, rt: CameraRuntime, online: bool, now: float) -> bool:
        """Record whether the camera is online; True when that is news to announce. A camera whose
        reader a reload replaced stays announced: its new runtime says nothing until it changes."""
        news = rt.observe(online, now, announced=rt.name in self._announced)
        if news:
            self._announced.add(rt.name)
        return news

    def stop_all(self, timeout: float) -> None:
        stop_all([rt.child for rt in self.running], timeout)

    def remove(self, name: str) -> None:
        """Forget the camera (its reader is stopped already); its ring is retired: unlinked now,
        unmapped once no thread reads it (never during a copy)."""
        entry = self._entries.get(name)
        self._set(name, None)
        self._announced.discard(name)
        if entry is not None and entry.ring is not None:
            entry.ring.retire()

    def retire_all(self) -> None:
        entries, self._entries = self._entries, {}
        for entry in entries.values():
            if entry.ring is not None:
                entry.ring.retire()

    def release_holds(self) -> None:
        """Drop every hold (the scheduler that made them is gone)."""
        for entry in self._entries.values():
            if entry.ring is not None:
                entry.ring.owned.release_all()

    def retry_due(self, now: float, *, force: bool = False) -> list[CameraConfig]:
        """The failed cameras to try again now: at a reload (`force`), or every `retry_s`."""
        failed = [e.cfg for e in self._entries.values() if e.failed is not None]
        if not failed or (now < self._retry_at and not force):
            return []
        self._retry_at = now + self.retry_s
        return failed
