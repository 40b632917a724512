"""The scheduler's totals across a scheduler restart: never twice, never backwards."""

from __future__ import annotations

import queue
import time
from types import SimpleNamespace
from typing import Any

from vistream.ops.scheduler import SchedulerRuntime
from vistream.ops.stats import CameraCounts, SchedulerStats
from vistream.ops.supervise import Limits


class FakeChild:
    def __init__(self, alive: bool, on_start: Any = None) -> None:
        self.alive, self.exitcode, self.started_at = alive, None if alive else -9, 0.0
        self.retry_at, self.spawn_failures = None, 0  # every start makes a process
        self._on_start = on_start

    def start(self) -> None:
        if self._on_start:
            self._on_start()

    def stop(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        pass


def spec(base: SchedulerStats) -> Any:
    return SimpleNamespace(
        results=queue.Queue(), stats=queue.Queue(), control=queue.Queue(), beat=[time.monotonic(), 0.0, 1.0],
        start_seqs={"a": base.positions.get("a", 0)},
    )  # fmt: skip


def test_scrapes_during_a_scheduler_swap_see_its_totals_exactly_once() -> None:
    """1. A scheduler reported 10 inferred frames of `a`, accounted up to seq 12, then died.
    2. The runtime replaces it. Scrapes made while the new one is being set up (here: while its
       child and spec are made, and at its start) see 10: never 20 (the totals both in the base
       and in the incarnation being replaced), never 0 (in neither).
    3. The new scheduler is told to count from seq 12, where the old one left off; its holds on
       the rings were dropped first."""
    scraped: list[int] = []
    specs: list[Any] = []
    released: list[int] = []

    def scrape() -> None:
        scraped.append(runtime.totals().cameras["a"].inferred)

    def launch(base: SchedulerStats) -> Any:
        if specs:  # the replacement
            scrape()
            child = FakeChild(alive=True, on_start=scrape)
        else:
            child = FakeChild(alive=False)
        specs.append(spec(base))
        return child, specs[-1]

    runtime = SchedulerRuntime(launch, lambda: released.append(len(specs)))
    runtime.start()
    assert runtime.current is not None
    runtime.current.latest = SchedulerStats(cameras={"a": CameraCounts(inferred=10)}, positions={"a": 12})
    scrape()
    assert runtime.supervise(time.monotonic(), Limits()) is None
    scrape()
    assert runtime.restarts == 1 and runtime.alive
    assert scraped == [10, 10, 10, 10]
    assert specs[1].start_seqs == {"a": 12}
    assert released == [1]


def test_a_scheduler_that_cannot_load_the_model_is_final() -> None:
    """A scheduler that exits 3 (the model cannot be loaded) is not started again: supervise says
    so with the code, and the budget is left untouched."""
    child = FakeChild(alive=False)
    child.exitcode = 3
    runtime = SchedulerRuntime(lambda base: (child, spec(base)))
    runtime.start()
    assert runtime.supervise(time.monotonic(), Limits()) == 3
    assert runtime.restarts == 0
