"""The daemon's scheduler totals across a scheduler restart: never twice, never backwards."""

from __future__ import annotations

import queue
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from vistream import daemon as daemon_mod
from vistream.config.models import Config
from vistream.daemon import Daemon, SchedulerRuntime
from vistream.ops.stats import CameraCounts, SchedulerStats


class DeadChild:
    alive, exitcode, started_at = False, -9, 0.0

    def stop(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        pass


def test_scrapes_during_a_scheduler_swap_see_its_totals_exactly_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """1. A scheduler reported 10 inferred frames of `a`, accounted up to seq 12, then died.
    2. The supervisor replaces it. Scrapes made while the new one is being set up (here: from
       inside the new child's constructor and its start) see 10: never 20 (the totals both in
       the base and in the runtime being replaced), never 0 (in neither).
    3. The new scheduler is told to count from seq 12, where the old one left off."""
    cfg = Config.model_validate(
        {"mqtt": {"client_id": f"t{uuid.uuid4().hex[:6]}"}, "cameras": [{"name": "a", "url": "/dev/null"}]}
    )
    d = Daemon(cfg)
    d.logs = None  # type: ignore[assignment]
    d._rings = {"a": SimpleNamespace(name="ring-a", owned=SimpleNamespace(release_all=lambda: None))}  # type: ignore[dict-item]
    scraped: list[int] = []
    specs: list[Any] = []

    def scrape() -> None:
        scraped.append(d.scheduler_stats().cameras["a"].inferred)

    class NewChild(DeadChild):
        alive = True

        def __init__(self, title: str, target: Any, args: tuple[Any, ...], *rest: Any) -> None:
            specs.append(args[0])
            scrape()

        def start(self) -> None:
            scrape()

    monkeypatch.setattr(daemon_mod, "Child", NewChild)
    old = SchedulerRuntime(DeadChild(), None, queue.Queue(), None, [time.monotonic(), 0.0, 1.0])  # type: ignore[arg-type]
    old.latest = SchedulerStats(cameras={"a": CameraCounts(inferred=10)}, positions={"a": 12})
    d._totals = (SchedulerStats(), old)
    d.scheduler = old
    scrape()
    d._supervise_scheduler(time.monotonic())
    scrape()
    assert d.scheduler is not old and d.scheduler_restarts == 1
    assert scraped == [10, 10, 10, 10]
    assert specs[0].start_seqs == {"a": 12}
