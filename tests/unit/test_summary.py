"""The periodic summary line and the overload warning."""

from __future__ import annotations

import logging

import pytest

from vistream.ops.stats import CameraCounts, SchedulerStats
from vistream.ops.summary import Summary


def stats(inferred: int, overwritten: int) -> SchedulerStats:
    return SchedulerStats(cameras={"a": CameraCounts(inferred=inferred, overwritten=overwritten)})


def test_overload_is_warned_once_per_ten_minutes(caplog: pytest.LogCaptureFixture) -> None:
    """1. Over a minute, 60 frames/s are sampled but only 15/s inferred: an INFO summary and a WARNING.
    2. The next minute the same: a summary, no second warning (rate-limited).
    3. A minute within capacity: a summary only."""
    caplog.set_level(logging.INFO, logger="vistream.summary")
    s = Summary()
    s.tick(0, 0, stats(0, 0))
    s.tick(60, 3600, stats(900, 2700))
    s.tick(120, 7200, stats(1800, 5400))
    s.tick(180, 7500, stats(2100, 5400))
    levels = [r.levelname for r in caplog.records]
    assert levels == ["INFO", "WARNING", "INFO", "INFO"]
    assert "75% of sampled frames were dropped" in caplog.records[1].getMessage()
    assert "60.0 frames/s sampled, 15.0 inferred" in caplog.records[0].getMessage()
