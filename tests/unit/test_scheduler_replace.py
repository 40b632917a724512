"""A SIGTERM that arrives while a reload replaces the scheduler is acted on within a second."""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from types import SimpleNamespace
from typing import Any

from vistream.ops.logs import LogHub
from vistream.ops.process import SPAWN, Child, StopFlag
from vistream.ops.scheduler import SchedulerRuntime
from vistream.ops.stats import SchedulerStats


def finishing_a_long_batch(in_batch: Any, stop: Any) -> int:
    """A scheduler that heeds SIGTERM only after its batch, which takes far longer than 3 s."""
    in_batch.set()
    time.sleep(60)
    return 0


def test_sigterm_during_a_scheduler_replacement_cuts_its_wait_short() -> None:
    """1. A reload replaces the scheduler (a new model); the running one is in a batch that outlasts
       the 3 s it is given to stop.
    2. SIGTERM reaches the daemon 0.3 s into that wait (the handler only sets the stop flag).
    3. `replace` returns within a second of it: the old scheduler is killed at once, and no
       successor is started (it would load the model only to be stopped)."""
    hub = LogHub()
    hub.start()
    launched: list[Child] = []
    in_batch = SPAWN.Event()

    def launch(base: SchedulerStats) -> tuple[Child, Any]:
        child = Child("scheduler", finishing_a_long_batch, (in_batch,), hub, logging.INFO)
        launched.append(child)
        spec = SimpleNamespace(
            results=queue.Queue(), stats=queue.Queue(), control=queue.Queue(), beat=[0.0] * 3
        )
        return child, spec

    flag = StopFlag()
    before = signal.signal(signal.SIGTERM, flag.set)
    runtime = SchedulerRuntime(launch)
    try:
        runtime.start()
        assert in_batch.wait(60), "the scheduler child did not start"  # its SIGTERM handler is set
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
        t0 = time.monotonic()
        timer.start()
        runtime.replace(3.0, flag)
        took = time.monotonic() - t0
        timer.join()
    finally:
        signal.signal(signal.SIGTERM, before)
        for child in launched:
            child.stop(0.5)
            child.close()
        hub.stop()
    assert flag
    assert took < 1.3, f"replace took {took:.1f}s after SIGTERM at 0.3s"
    assert len(launched) == 1, "a successor was started after SIGTERM"
