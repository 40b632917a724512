"""Polling for a condition in integration tests, which watch real processes from outside."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(check: Callable[[], object], timeout: float, what: str, every: float = 0.25) -> object:
    """Poll `check` until it returns something true, and return that; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)
    return value


def settled(read: Callable[[], float], what: str, every: float = 1.5, tries: int = 30) -> float:
    """A counter once two reads `every` s apart agree (the scheduler reports its figures once a
    second); fail naming `what` when it never does in `tries` reads."""
    last = None
    for _ in range(tries):
        value = read()
        if value == last:
            return value
        last = value
        time.sleep(every)
    raise AssertionError(f"{what} never settled")
