"""What the daemon shows to its readers: the HTTP app, the metrics collector, the demo's view.

They get `StatusSource`, a read-only interface, not the daemon (uvicorn hands its protocols a
`ServerState` the same way): what they read is a copy made under the owner's rules (a ring header
copied under the ring's lease, vistream.ring.lifetime; figures under the part's own lock), never a
live part that the main thread may take apart or replace while they hold it. `health` is the one
verdict /healthz, /livez and /api/status give, judged from `Vitals`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from vistream.ring.shm import State

if TYPE_CHECKING:
    from collections import Counter
    from contextlib import AbstractContextManager

    from vistream.config.models import CameraConfig, Config
    from vistream.ops.scheduler import Liveness
    from vistream.ops.stats import Buckets, SchedulerStats
    from vistream.ops.supervise import Turning
    from vistream.outputs.results import LatestFrame
    from vistream.ring.shm import FrameRing
    from vistream.scheduler.messages import Ready


# Events started per (camera, rule), line counters per (camera, line, direction), the recent events.
EventFigures = tuple[dict[tuple[str, str], int], dict[tuple[str, str, str], int], list[dict[str, Any]]]


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
    spawn_failures: int = 0  # starts of its reader that made no process (out of descriptors)

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


@dataclass(frozen=True)
class OutboxFigures:
    """The event outbox at one moment (zeros while there is none)."""

    pending: int = 0
    evicted: int = 0
    write_failures: int = 0
    problem: str | None = None  # why events cannot be written now


@dataclass(frozen=True)
class Figures:
    """The main process's counters at one moment, for /metrics and /api/status."""

    mqtt_connected: bool = False
    mqtt_dropped: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, reason) -> messages
    scheduler_restarts: int = 0
    scheduler_spawn_failures: int = 0  # schedulers that could not be made (out of descriptors)
    results_abandoned: int = 0
    thread_restarts: dict[str, int] = field(default_factory=dict)
    outbox: OutboxFigures = OutboxFigures()
    unwritten: int = 0  # messages handed to the outbox's writer, not written yet
    unwritten_dropped: dict[str, int] = field(default_factory=dict)  # by reason (outputs/writer.py)
    event_errors: int = 0
    snapshots: int = 0
    snapshots_lost: int = 0


@dataclass(frozen=True)
class Vitals:
    """What /healthz, /livez and /api/status judge, at one moment (`health`)."""

    window_s: float  # a stage that made no progress this long does not count as flowing
    stopping: bool = False
    ready: bool = False
    flowing: bool = False  # the watchdog's verdict: the scheduler loops and the threads turn
    scheduler: str | None = None  # why the scheduler does not count as progressing, or None
    threads: tuple[tuple[str, bool, float], ...] = ()  # (name, alive, seconds since its last turn)
    backend_down: str = ""  # a remote model (Triton) that does not answer, and why
    outbox_problem: str | None = None


def vitals(
    now: float,
    window_s: float,
    *,
    stopping: bool,
    ready: bool,
    running: bool,
    liveness: Liveness | None,
    threads: dict[str, Turning],
    backend_down: str = "",
    outbox_problem: str | None = None,
) -> Vitals:
    """The daemon's vitals from its parts: `running`, is the scheduler child alive; `liveness`,
    its heartbeat (None before the first); `threads`, the daemon's own threads by name."""
    why: str | None
    if not running or liveness is None:
        progressing, why = False, "the scheduler is not running (it is being restarted)"
    else:
        progressing, why = liveness.progressing(now, window_s), liveness.why_not(now, window_s)
    turns = tuple((name, part.alive, now - part.beat) for name, part in threads.items())
    flowing = progressing and all(alive and idle < window_s for _, alive, idle in turns)
    return Vitals(window_s, stopping, ready, flowing, why, turns, backend_down, outbox_problem)


class StatusSource(Protocol):
    """What the daemon's readers may ask of it; the daemon implements it. Everything it hands out
    is plain data, a copy made under its owner's rules, except `ring`, a lease for one copy."""

    @property
    def cfg(self) -> Config: ...
    @property
    def ready(self) -> Ready | None: ...

    def vitals(self, now: float) -> Vitals:
        """What `health` judges."""
        ...

    def figures(self) -> Figures:
        """The main process's counters: MQTT, restarts, the outbox, events and snapshots."""
        ...

    def scheduler_stats(self) -> SchedulerStats:
        """Totals over every scheduler the daemon ran."""
        ...

    def pipeline(self) -> tuple[Buckets, dict[str, int], dict[str, Counter[str]]]:
        """Capture -> publish latency, detections published per camera, objects in each camera's
        latest frame (copies, from the result pump)."""
        ...

    def events(self) -> EventFigures:
        """Events started per (camera, rule), line counters, the recent events (copies)."""
        ...

    def latest(self, name: str) -> LatestFrame | None:
        """The camera's latest inferred frame (an immutable record; its pixels are in the ring)."""
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


def health(v: Vitals, *, remote: bool = True) -> str | None:
    """None when the model is loaded and results flow (the watchdog's verdict), a remote model
    answers and the event outbox can be written (these two unless `remote` is false: `/livez`);
    else why not, one line.

    "Flow" is what feeds systemd's watchdog: the scheduler looped (a batch, or idle for want of
    frames) within the daemon's progress window (at most the watchdog period, see Limits) and the
    result pump and log hub turn.
    """
    if v.stopping:
        return "stopping"
    if not v.ready:
        return "starting: the model is not loaded yet"
    if v.flowing:
        # Everything here turns, but a remote model (Triton) is down: frames are dropped (reason
        # `backend`) until it answers again. Not a reason to starve the watchdog: a restart of
        # this daemon would not bring the server back.
        if remote and v.backend_down:
            return f"the model backend is unavailable: {v.backend_down}"
        # Events cannot be written (a locked, read-only or full database): nor would a restart help.
        problem = remote and v.outbox_problem
        return f"the event outbox cannot be written: {problem}" if problem else None
    if v.scheduler:
        return v.scheduler
    for name, alive, idle in v.threads:
        if not alive:
            return f"the {name} thread is dead"
        if idle >= v.window_s:
            return f"the {name} thread made no progress for {idle:.1f}s (limit {v.window_s:g}s)"
    return None  # it turned again between the two readings
