"""Supervision helpers: how often a dead child may be restarted."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


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
