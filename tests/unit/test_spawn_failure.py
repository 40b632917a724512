"""A child process that cannot be made (the daemon out of file descriptors) is a counted, retried
event, never an exception out of the daemon's tick."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import resource
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from vistream.config.models import CameraConfig
from vistream.ops.cameras import Cameras
from vistream.ops.logs import LogHub
from vistream.ops.process import Child
from vistream.ops.scheduler import SchedulerRuntime
from vistream.ops.stats import SchedulerStats
from vistream.ops.supervise import Limits
from vistream.ring.shm import RingLayout


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


def exits_at_once(stop: Any) -> int:
    return 0


def test_a_scheduler_whose_queues_cannot_be_made_is_tried_again() -> None:
    """1. A scheduler runs and exits; its restart's launch (queues, semaphores: descriptors) fails
       with EMFILE: no exception out of `supervise`, one spawn failure counted, nothing started.
    2. Not retried before the backoff (1 s), and not charged to the restart budget.
    3. After it the launch works: a new scheduler starts, counting on from the old totals."""
    hub = LogHub()
    hub.start()
    launched: list[Child] = []
    full = [False]

    def launch(base: SchedulerStats) -> tuple[Child, Any]:
        if full[0]:
            raise OSError(errno.EMFILE, "Too many open files")
        child = Child("scheduler", exits_at_once, (), hub, logging.INFO)  # type: ignore[arg-type]
        launched.append(child)
        spec = SimpleNamespace(
            results=queue.Queue(), stats=queue.Queue(), control=queue.Queue(), beat=[0.0] * 3
        )
        return child, spec

    runtime = SchedulerRuntime(launch)
    try:
        runtime.start()
        assert launched[0].join(20)  # it exited
        full[0] = True
        now = time.monotonic()
        assert runtime.supervise(now, Limits()) is None
        assert runtime.spawn_failures == 1 and runtime.restarts == 1 and len(launched) == 1
        assert runtime.supervise(now + 0.5, Limits()) is None and len(launched) == 1
        full[0] = False
        assert runtime.supervise(now + 1.6, Limits()) is None
        assert len(launched) == 2 and runtime.restarts == 1 and runtime.spawn_failures == 1
    finally:
        for child in launched:
            child.stop(0.5)
            child.close()
        hub.stop()


def test_a_camera_whose_ring_cannot_be_opened_is_failed_then_started() -> None:
    """1. The process is out of descriptors for real (RLIMIT_NOFILE at the highest open one, the
       gaps filled): adding a camera makes no ring and starts no reader; it is failed, saying why.
    2. Descriptors again: its retry makes the ring and starts the reader."""
    instance = f"t{uuid.uuid4().hex[:6]}"
    spawned: list[Any] = []

    def spawn(cam: CameraConfig, ring_name: str) -> Any:
        spawned.append(SimpleNamespace(start=lambda: True, alive=False, retry_at=None, spawn_failures=0))
        return spawned[-1]

    cams = Cameras(instance, RingLayout(2, 64, 64, plane_width=64, plane_height=48), spawn, retry_s=10.0)
    cam = CameraConfig(name="late", url="rtsp://h/late")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    try:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1, hard)
        )
        with contextlib.suppress(OSError):
            while True:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
        reason = cams.add(cam)
        for fd in fillers:
            os.close(fd)
        fillers.clear()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert reason == "cannot make its ring: Too many open files"
        assert cams.failed == {"late": reason} and not spawned
        (cfg,) = cams.retry_due(100.0)
        assert cams.add(cfg) is None and cams.failed == {} and len(spawned) == 1
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        cams.retire_all()
