"""A child process that cannot be made (the daemon out of file descriptors) is a counted, retried
event, never an exception out of the daemon's tick."""

from __future__ import annotations

import errno
import time
from typing import Any

import pytest

from vistream.ops.process import Child


class FullHub:
    """A log hub whose pipes cannot be made: the process is out of file descriptors."""

    def __init__(self) -> None:
        self.full = True

    def channel(self) -> Any:
        if self.full:
            raise OSError(errno.EMFILE, "Too many open files")
        raise AssertionError("not reached in this test")


def test_a_child_that_cannot_be_spawned_is_counted_and_retried_with_backoff() -> None:
    """1. EMFILE at start: start() says False, nothing raised, one failure counted.
    2. Not due at once; due after the backoff, which doubles at each failure (1 s, 2 s, ...).
    3. Another OSError (not a shortage) is raised: faults are named, not guessed."""
    child = Child("reader cam", print, (), FullHub())  # type: ignore[arg-type]
    t0 = time.monotonic()
    assert child.start() is False and child.spawn_failures == 1 and not child.alive
    assert child.retry_at is not None and 0.9 <= child.retry_at - t0 <= 1.5
    assert not child.retry_due(t0) and child.retry_due(t0 + 1.6)
    assert child.start() is False and child.spawn_failures == 2
    assert 1.9 <= child.retry_at - t0 <= 2.6

    class Broken(FullHub):
        def channel(self) -> Any:
            raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError, match="Bad file descriptor"):
        Child("reader cam", print, (), Broken()).start()  # type: ignore[arg-type]
