"""What the daemon shows to its readers: the HTTP app, the metrics collector, the demo's view.

They get `StatusSource`, a read-only interface, not the daemon (uvicorn hands its protocols a
`ServerState` the same way): what they read is a copy made under the owner's rules (a ring header
copied under the ring's lease, vistream.ring.lifetime; figures under the part's own lock), never a
live object that the main thread may take apart while they hold it. `health` is the one verdict
/healthz, /livez and /api/status give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from vistream.ring.shm import State

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from vistream.config.models import CameraConfig, Config
    from vistream.ops.logs import LogHub
    from vistream.ops.process import StopFlag
    from vistream.ops.scheduler import SchedulerRuntime
    from vistream.ops.stats import SchedulerStats
    from vistream.ops.supervise import Limits
    from vistream.outputs.alerts import Alerts
    from vistream.outputs.mqtt import MqttPublisher
    from vistream.outputs.outbox import Outbox
    from vistream.outputs.results import ResultPump
    from vistream.ring.shm import FrameRing
    from vistream.scheduler.messages import Ready


@dataclass(frozen=True)
class CameraStatus:
    """One camera at one moment: its config, whether it is online, and a copy of its ring header.

    `failed` says why the camera could not be started (no room for its ring in /dev/shm); such a
    camera has no ring, so no header, and is retried by the next reload or after a backoff."""

    cfg: CameraConfig
    online: bool = False
    restarts: int = 0
    header: np.ndarray | None = None  # a copy: reading it never touches shared memory
    failed: str | None = None

    @property
    def name(self) -> str:
        return self.cfg.name

    def field(self, key: str) -> int:
        """An integer field of the header; 0 for a camera without a ring."""
        return int(self.header[key]) if self.header is not None else 0

    def seconds(self, key: str) -> float:
        return float(self.header[key]) if self.header is not None else 0.0

    @property
    def state(self) -> str:
        if self.failed is not None:
            return "failed"
        return State.NAMES.get(self.field("state"), "unknown")


class StatusSource(Protocol):
    """What the daemon's readers may ask of it; the daemon implements it. Nothing here is written
    by a reader: the parts below hand out copies (`pump.snapshot()`, `alerts.figures()`, ...)."""

    @property
    def cfg(self) -> Config: ...
    @property
    def stop_flag(self) -> StopFlag: ...
    @property
    def ready(self) -> Ready | None: ...
    @property
    def limits(self) -> Limits: ...
    @property
    def scheduler(self) -> SchedulerRuntime: ...
    @property
    def pump(self) -> ResultPump: ...
    @property
    def logs(self) -> LogHub: ...
    @property
    def alerts(self) -> Alerts: ...
    @property
    def mqtt(self) -> MqttPublisher: ...
    @property
    def outbox(self) -> Outbox | None: ...
    @property
    def thread_restarts(self) -> dict[str, int]: ...

    def flowing(self, now: float) -> bool:
        """Do results flow end to end (the watchdog's verdict)?"""
        ...

    def outbox_problem(self) -> str | None:
        """Why events cannot be written to the outbox now, or None."""
        ...

    def scheduler_stats(self) -> SchedulerStats:
        """Totals over every scheduler the daemon ran."""
        ...

    def camera_status(self) -> list[CameraStatus]:
        """Every camera of the running config, in config order, those that failed to start included."""
        ...

    def camera_config(self, name: str) -> CameraConfig | None:
        """The config of a running camera; None for no such camera (or one that failed to start)."""
        ...

    def ring(self, name: str) -> AbstractContextManager[FrameRing | None]:
        """The camera's ring under a lease, for one copy; None when it has none (any more)."""
        ...


def health(d: StatusSource, now: float, *, remote: bool = True) -> str | None:
    """None when the model is loaded and results flow (the watchdog's verdict), a remote model
    answers and the event outbox can be written (these two unless `remote` is false: `/livez`);
    else why not, one line.

    "Flow" is what feeds systemd's watchdog: the scheduler looped (a batch, or idle for want of
    frames) within the daemon's progress window (at most the watchdog period, see Limits) and the
    result pump and log hub turn.
    """
    if d.stop_flag:
        return "stopping"
    if d.ready is None:
        return "starting: the model is not loaded yet"
    if d.flowing(now):
        # Everything here turns, but a remote model (Triton) is down: frames are dropped (reason
        # `backend`) until it answers again. Not a reason to starve the watchdog: a restart of
        # this daemon would not bring the server back.
        down = remote and d.scheduler_stats().backend_down
        if down:
            return f"the model backend is unavailable: {down}"
        # Events cannot be written (a locked, read-only or full database): nor would a restart help.
        problem = remote and d.outbox_problem()
        return f"the event outbox cannot be written: {problem}" if problem else None
    window = d.limits.window_s
    live = d.scheduler.liveness
    if not d.scheduler.alive or live is None:
        return "the scheduler is not running (it is being restarted)"
    why = live.why_not(now, window)
    if why:
        return why
    for name, part in (("result pump", d.pump), ("log hub", d.logs)):
        if not part.alive:
            return f"the {name} thread is dead"
        if now - part.beat >= window:
            return f"the {name} thread made no progress for {now - part.beat:.1f}s (limit {window:g}s)"
    return None  # it turned again between flowing() and the checks above
