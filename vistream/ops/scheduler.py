"""The scheduler as the daemon runs it: its child process, queues, heartbeat, totals and restarts.

`SchedulerRuntime` is to the scheduler what `CameraRuntime` is to a reader: the one place that
starts it, supervises it (`supervise`: a hung one is killed, a dead one started again within its
budget), replaces it (a reload's new model) and stops it, with one restart sequence for all of
these. `Liveness` is the only reader of the heartbeat slots the scheduler writes.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vistream.ops.process import SPAWN, SPAWN_BACKOFF_S, SPAWN_ERRNOS, Child, StopFlag, stop_all
from vistream.ops.stats import SchedulerStats
from vistream.ops.supervise import Limits, RestartBudget
from vistream.scheduler.loop import BEAT_BATCH_START, BEAT_READY, BEAT_TIME, SchedulerSpec, run_scheduler

if TYPE_CHECKING:
    from vistream.config.models import Config
    from vistream.ops.logs import LogHub

log = logging.getLogger(__name__)

STOP_S = 3.0
# What a scheduler exits with when it cannot load the model (3) or the config does not fit the
# model (2): its own verdict, final however often it is restarted.
CANNOT_BOOT = (2, 3)


class Liveness:
    """The scheduler's heartbeat as the main process reads it (shared doubles: last loop time,
    the running batch's start or 0, the model-loaded flag); only the scheduler writes them."""

    def __init__(self, beat: Any) -> None:
        self._beat = beat

    @property
    def loaded(self) -> bool:
        return bool(self._beat[BEAT_READY])

    def in_batch_s(self, now: float) -> float:
        """How long the running batch has taken so far; 0 when idle."""
        start = self._beat[BEAT_BATCH_START]
        return now - start if start else 0.0

    def idle_s(self, now: float) -> float:
        """How long since the loop last turned."""
        return now - self._beat[BEAT_TIME]

    def progressing(self, now: float, window_s: float) -> bool:
        """Loaded, and the loop turned within `window_s` (a batch, or idle for want of frames)."""
        return self.loaded and self.idle_s(now) < window_s

    def hung(self, now: float, stall_s: float) -> bool:
        """Loaded and stuck: one batch, or no turn at all, for longer than `stall_s`."""
        return self.loaded and (self.in_batch_s(now) > stall_s or self.idle_s(now) > stall_s)

    def why_not(self, now: float, window_s: float) -> str | None:
        """Why it does not count as progressing, one line; None when it does."""
        if not self.loaded:
            return "the scheduler is loading the model"
        batch = self.in_batch_s(now)
        if batch >= window_s:
            return f"the scheduler has been stuck in one batch for {batch:.1f}s (limit {window_s:g}s)"
        idle = self.idle_s(now)
        if idle >= window_s:
            return f"the scheduler made no progress for {idle:.1f}s (limit {window_s:g}s)"
        return None


@dataclass
class Incarnation:
    """One scheduler process and the queues made for it (fresh each time: a process killed while
    holding a queue's lock would leave it locked for its successor)."""

    child: Child
    results: Any
    stats: Any
    control: Any
    liveness: Liveness
    latest: SchedulerStats = field(default_factory=SchedulerStats)


class SchedulerRuntime:
    """The scheduler child: start, supervise, replace, stop; its totals over every incarnation.

    `launch(base)` makes the next child and its spec (fresh queues and heartbeat), counting frames
    from where `base` left off; `release_holds()` drops every ring hold a dead or replaced
    scheduler made (the results they waited for will never come). Main thread only, except
    `totals()` and `results()`, which any thread may call.
    """

    def __init__(
        self,
        launch: Callable[[SchedulerStats], tuple[Child, SchedulerSpec]],
        release_holds: Callable[[], None] = lambda: None,
        budget: RestartBudget | None = None,
    ) -> None:
        self._launch = launch
        self._release_holds = release_holds
        self.budget = budget or RestartBudget()
        self.restarts = 0  # started again after dying or hanging
        self.spawn_failures_before = 0  # of the schedulers before the current one
        # A launch that failed for want of descriptors: (its base, when to try again).
        self._relaunch: tuple[SchedulerStats, float] | None = None
        self._relaunch_backoff = SPAWN_BACKOFF_S[0]
        self.results_abandoned = 0  # results left unread in the queues of replaced schedulers
        # (totals of the schedulers that were replaced, the current one): one attribute, so that
        # a scrape never sees a replaced scheduler's totals twice (in both) or not at all.
        self._totals: tuple[SchedulerStats, Incarnation | None] = (SchedulerStats(), None)

    @property
    def current(self) -> Incarnation | None:
        return self._totals[1]

    @property
    def liveness(self) -> Liveness | None:
        cur = self.current
        return cur.liveness if cur else None

    @property
    def alive(self) -> bool:
        cur = self.current
        return bool(cur and cur.child.alive)

    @property
    def exitcode(self) -> int | None:
        cur = self.current
        return cur.child.exitcode if cur else None

    def results(self) -> Any:
        """The current scheduler's results queue (the result pump reads it), None before the first."""
        cur = self.current
        return cur.results if cur else None

    def send(self, msg: Any) -> None:
        """A control message (AddCamera, RemoveCamera) to the running scheduler; none: nothing to tell."""
        cur = self.current
        if cur is not None:
            cur.control.put(msg)

    @property
    def spawn_failures(self) -> int:
        """Starts that made no process (out of descriptors, memory), over every scheduler."""
        cur = self.current
        return self.spawn_failures_before + (cur.child.spawn_failures if cur else 0)

    def totals(self) -> SchedulerStats:
        """Totals over every scheduler this daemon ran (from any thread)."""
        base, cur = self._totals
        return base.merged(cur.latest) if cur else base

    def start(self, base: SchedulerStats | None = None) -> None:
        """Start a scheduler that accounts for frames from where `base` (the totals of the
        schedulers before it; default: those so far) left off."""
        base = self._totals[0] if base is None else base
        try:
            child, spec = self._launch(base)  # its queues and semaphores: pipes, descriptors
        except OSError as exc:
            if exc.errno not in SPAWN_ERRNOS:
                raise
            self.spawn_failures_before += 1
            self._relaunch = (base, time.monotonic() + self._relaunch_backoff)
            log.error("scheduler: cannot make its queues (%s): trying again in %.0fs",
                      os.strerror(exc.errno), self._relaunch_backoff)  # fmt: skip
            self._relaunch_backoff = min(self._relaunch_backoff * 2, SPAWN_BACKOFF_S[1])
            return
        self._relaunch, self._relaunch_backoff = None, SPAWN_BACKOFF_S[0]
        self.spawn_failures_before = self.spawn_failures
        cur = Incarnation(child, spec.results, spec.stats, spec.control, Liveness(spec.beat))
        self._totals = (base, cur)
        child.start()

    def replace(self, timeout: float = STOP_S, stop: StopFlag | None = None) -> None:
        """A new scheduler (a new model or batching); the one running is stopped first.

        A `stop` set meanwhile (SIGTERM to the daemon) cuts the wait short: the old one is killed
        at once and no successor is started (it would only be stopped again, mid-load)."""
        cur = self.current
        if cur is None:
            return
        stop_all([cur.child], timeout, stop)
        if not stop:
            self._restart(cur)

    def stop(self, timeout: float = STOP_S) -> None:
        cur = self.current
        if cur is not None:
            cur.child.stop(timeout)
            self.drain()

    def drain(self) -> None:
        """Take the latest figures the scheduler reported (it reports once a second)."""
        cur = self.current
        if cur is None:
            return
        while True:
            try:
                cur.latest = cur.stats.get_nowait()
            except (queue.Empty, EOFError, OSError, ValueError):
                return

    def supervise(self, now: float, limits: Limits) -> int | None:
        """Kill a hung scheduler; start a dead one again (within the budget). Returns the exit code
        of one that cannot boot (CANNOT_BOOT: the model cannot be loaded), which is final."""
        if self._relaunch is not None:  # no new scheduler could be made: not a restart to budget
            base, due = self._relaunch
            if now >= due:
                self.start(base)
            return None
        cur = self.current
        if cur is None:
            return None
        if cur.child.alive and cur.liveness.hung(now, limits.stall_s):
            log.error("scheduler made no progress for %.0fs: killing it", limits.stall_s)
            cur.child.stop(1.0)
        if cur.child.alive:
            return None
        if cur.child.retry_at is not None:  # its start made no process (out of descriptors): again
            if cur.child.retry_due(now):
                cur.child.start()
            return None
        code = cur.child.exitcode
        if code in CANNOT_BOOT:
            return code
        if not self.budget.take():
            return None
        log.error("scheduler exited (code %s): starting a new one", code)
        self.restarts += 1
        self._restart(cur)
        return None

    def _restart(self, cur: Incarnation) -> None:
        """The one restart sequence: holds dropped, last figures taken, a successor counting on."""
        self._release_holds()
        self.drain()
        base = self._totals[0].merged(cur.latest)
        cur.child.close()
        self.start(base)

    def count_abandoned(self, read: int) -> None:
        """Count the results replaced schedulers queued and nobody read; `read`: results the
        result pump has handled so far (published or dropped), taken when the pump read a new
        scheduler's Ready, being done with the old queues and having read nothing else from the
        new one. A killed scheduler's results after its last report are in neither figure (its
        successor counts those frames as `unattached`); hence the floor at what was counted."""
        base = self._totals[0]
        sent = sum(c.inferred for c in base.cameras.values()) - base.results_overflow
        self.results_abandoned = max(self.results_abandoned, sent - read)


def scheduler_child(
    cfg: Config, rings: dict[str, str], wake: Any, base: SchedulerStats, logs: LogHub, log_level: int
) -> tuple[Child, SchedulerSpec]:
    """The next scheduler child for `rings` (camera -> segment), counting frames from where `base`
    left off; fresh queues and heartbeat (see `Incarnation`)."""
    spec = SchedulerSpec(
        model=cfg.model,
        batching=cfg.batching,
        rings=rings,
        wake=wake,
        results=SPAWN.Queue(cfg.mqtt.queue_size),
        stats=SPAWN.Queue(4),
        control=SPAWN.Queue(),
        beat=SPAWN.Array("d", 3, lock=False),
        start_seqs={name: base.positions.get(name, 0) for name in rings},
        detect_fps={c.name: c.detect_fps for c in cfg.enabled_cameras},
    )
    return Child("scheduler", run_scheduler, (spec,), logs, log_level), spec
