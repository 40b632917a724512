"""Supervision helpers: how often a dead child may be restarted, and how long a stall may last."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from vistream.ops.systemd import Notifier

log = logging.getLogger(__name__)

STALL_S = 60.0  # without a systemd watchdog: one batch (or loop, or thread turn) this long is a hang
PROGRESS_WINDOW_S = 10.0  # the pipeline flows if every stage turned this recently


@dataclass(frozen=True)
class Limits:
    """How long a stage may make no progress before the daemon acts, and how often it pings systemd.

    Under a systemd watchdog of W seconds (WATCHDOG_USEC), the daemon must restart a hung
    scheduler itself, and have it back, well before systemd gives up on the whole service:

    * WATCHDOG=1 goes out every W/4 while results flow (`ping_s`);
    * a stage that made no progress for W/4 (at most 60 s) is a hang: a scheduler is killed
      and started again, a stuck thread stops the daemon (`stall_s`);
    * the pipeline stops counting as flowing half of that after its last progress (`window_s`).

    A hang at time T starves the watchdog from T + window_s, so the last ping went out no
    earlier than T + window_s - ping_s and systemd acts no earlier than T + window_s - ping_s + W;
    the daemon kills the scheduler at T + stall_s. What is left in between (`reload_budget_s`:
    5W/8 up to W = 80 s, so 37.5 s of the unit's 60) is how long the new scheduler may take to
    load the model and make progress again; a model that loads slower needs a longer WatchdogSec.
    """

    stall_s: float = STALL_S
    window_s: float = PROGRESS_WINDOW_S
    ping_s: float | None = None  # None: no watchdog to feed

    @classmethod
    def for_watchdog(cls, timeout_s: float | None) -> Limits:
        if not timeout_s:
            return cls()
        stall = min(STALL_S, timeout_s / 4)
        return cls(stall_s=stall, window_s=min(PROGRESS_WINDOW_S, stall / 2), ping_s=timeout_s / 4)

    def describe(self, timeout_s: float) -> str:
        """One line for the log at ready: what the daemon does under a watchdog of `timeout_s`."""
        ping, budget = self.ping_s or 0.0, self.reload_budget_s(timeout_s)
        return (
            f"systemd watchdog {timeout_s:.0f}s: WATCHDOG=1 every {ping:.0f}s while results flow; "
            f"a scheduler stuck for {self.stall_s:.0f}s is restarted and has {budget:.0f}s to make "
            "progress before systemd steps in"
        )

    def reload_budget_s(self, timeout_s: float) -> float:
        """Seconds a restarted scheduler has to make progress before systemd's watchdog fires."""
        ping = self.ping_s or 0.0
        return self.window_s - ping + timeout_s - self.stall_s


class RestartBudget:
    """At most `per_minute` restarts in any 60 s window (gunicorn-style crash-loop brake).

    A child that keeps dying is restarted again once the window allows,
    never given up on: a camera that crashes its decoder today may be fixed tomorrow.
    """

    def __init__(self, per_minute: int = 5, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._times: deque[float] = deque()

    def take(self) -> bool:
        now = self._clock()
        while self._times and now - self._times[0] >= 60.0:
            self._times.popleft()
        if len(self._times) >= self.per_minute:
            return False
        self._times.append(now)
        return True


class Turning(Protocol):
    """A thread of the daemon's own that reports its last turn (`beat`, monotonic)."""

    @property
    def alive(self) -> bool: ...
    @property
    def beat(self) -> float: ...
    def start(self) -> None: ...


class Threads:
    """The daemon's own threads (the result pump, the log hub): started again when dead, at most
    5 a minute each (`restarts` counts them). A thread cannot be killed: one stuck past the stall
    limit is named by `supervise`, and the daemon stops for its service manager to restart it.
    `parts()` gives the threads by name, as they are now."""

    def __init__(self, parts: Callable[[], dict[str, Turning]], names: tuple[str, ...]) -> None:
        self._parts = parts
        self.restarts = dict.fromkeys(names, 0)
        self._budgets = {name: RestartBudget() for name in names}

    def turning(self, now: float, window_s: float) -> bool:
        """Is every thread alive and has it turned within `window_s`?"""
        return all(part.alive and now - part.beat < window_s for part in self._parts().values())

    def supervise(self, now: float, stall_s: float) -> str | None:
        """Start dead threads again (within their budget); a line naming one stuck past `stall_s`."""
        for name, part in self._parts().items():
            if part.alive:
                if now - part.beat > stall_s:
                    return f"the {name} thread made no progress for {now - part.beat:.0f}s: stopping"
            elif self._budgets[name].take():
                log.error("the %s thread died: starting it again", name)
                self.restarts[name] += 1
                part.start()
        return None


class Watchdog:
    """What the daemon tells systemd as it runs: WATCHDOG=1 every `ping_s` while results flow (a
    hang starves it), and a STATUS= line every `status_s`. Nothing without a notify socket."""

    def __init__(self, notifier: Notifier, ping_s: float | None, status_s: float = 5.0) -> None:
        self.notifier, self.ping_s, self.status_s = notifier, ping_s, status_s
        self._last_ping = self._last_status = float("-inf")

    def tick(self, now: float, flowing: Callable[[float], bool], status: Callable[[], str]) -> None:
        n = self.notifier
        if not n.enabled:
            return
        if self.ping_s and now - self._last_ping >= self.ping_s and flowing(now):
            n.watchdog()
            self._last_ping = now
        if now - self._last_status >= self.status_s:
            self._last_status = now
            n.status(status())
