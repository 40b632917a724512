"""benchmarks/soak.py's decisions, without the parts: the warm-up, the fault schedule, what counts
as growth, and that a lost alert (a start, an end, or an event never delivered) fails the run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from soak_probe import duration_s, event_ledger, growth, schedule, verdict, warmup_s

from vistream.bench.mosquitto import Message


@pytest.mark.parametrize(("minutes", "warmup"), [(30, 300), (10, 300), (9, 216), (2, 48)])
def test_warmup_is_five_minutes_or_forty_percent_of_a_short_run(minutes: float, warmup: float) -> None:
    assert warmup_s(60 * minutes) == pytest.approx(warmup)


@pytest.mark.parametrize(("text", "seconds"), [("5", 300), ("5m", 300), ("0.5", 30), ("50s", 50)])
def test_fault_every_reads_minutes_or_seconds(text: str, seconds: float) -> None:
    assert duration_s(text) == seconds


def test_schedule_alternates_broker_and_camera_and_leaves_time_to_settle() -> None:
    """1. 30 minutes, every 5: the broker at 5, 10, ... 25 min, a camera (each in turn) half a period
       later, all over 10 s before the end.
    2. 2 minutes, every 50 s: one broker and one camera outage; the next cycle would end at 120 s."""
    cams = ["street1", "crowd1", "street2", "crowd2"]
    faults = schedule(1800, 300, 20, cams)
    assert [(f["kind"], f["target"], f["start_s"]) for f in faults[:4]] == [
        ("broker", "mosquitto", 300), ("camera", "street1", 450), ("broker", "mosquitto", 600),
        ("camera", "crowd1", 750),
    ]  # fmt: skip
    assert len(faults) == 10 and faults[-1]["end_s"] == 1670
    assert all(f["end_s"] - f["start_s"] == 20 for f in faults)
    short = schedule(120, 50, 20, cams)
    assert [(f["kind"], f["start_s"], f["end_s"]) for f in short] == [("broker", 50, 70), ("camera", 75, 95)]


def sample(
    t: float, rss: dict[str, float], fds: int, quiet: bool = True, segments: int = 4
) -> dict[str, Any]:
    procs = {name: {"rss_mib": mib, "fds": 10} for name, mib in rss.items()}
    return {
        "t_s": t, "quiet": quiet, "processes": procs, "rss_mib_sum": sum(rss.values()), "fds_own": fds,
        "shm": {"segments": segments, "bytes": segments * 1000},
    }  # fmt: skip


BASE = {"main": 140.0, "scheduler": 800.0, "resource_tracker": 12.0}


@pytest.mark.parametrize(
    ("final", "fds", "segments", "failed"),
    [
        ({**BASE, "scheduler": 839.0}, 120, 4, []),  # +4.9 %
        ({**BASE, "scheduler": 841.0}, 120, 4, ["scheduler"]),  # +5.1 %; the sum (+4.3 %) passes
        ({**BASE, "main": 300.0}, 120, 4, ["rss_sum_grew", "main"]),
        ({**BASE, "resource_tracker": 12.9}, 120, 4, []),  # +7.5 % but under 1 MiB: noise
        ({**BASE, "resource_tracker": 13.2}, 120, 4, ["resource_tracker"]),
        (BASE, 121, 4, ["fds_grew"]),
        (BASE, 119, 4, []),
        (BASE, 120, 5, ["shm_grew"]),
    ],
)
def test_growth_from_the_first_quiet_sample_after_the_warm_up(
    final: dict[str, float], fds: int, segments: int, failed: list[str]
) -> None:
    """Samples before the warm-up and during faults are not the baseline: they may be anything."""
    samples = [
        sample(0, {k: v / 2 for k, v in BASE.items()}, 50),  # still starting
        sample(50, {**BASE, "main": 500.0}, 200, quiet=False),  # broker away: not a baseline
        sample(60, BASE, 120),
        sample(90, {**BASE, "main": 999.0}, 300, quiet=False),
        sample(120, final, fds, segments=segments),
    ]
    g = growth(samples, warmup=48)
    assert g["baseline_t_s"] == [60] and g["final_t_s"] == [120]
    found = [k for k in ("rss_sum_grew", "fds_grew", "shm_grew") if g[k]] + g["rss_grew_in"]
    assert found == failed
    assert bool(verdict(g, {}, daemon_alive=True)) == bool(failed)


@pytest.mark.parametrize(
    ("main_mib", "grew"),
    [
        ([138, 138, 144, 138, 139, 151], False),  # passing allocations: the floors are 138 and 139
        ([138, 139, 138, 146, 147, 146], True),  # every late sample is higher: a leak
        ([150, 138, 139, 139, 140, 139], False),  # a high first sample does not hide a later leak ...
        ([150, 138, 139, 146, 147, 146], True),  # ... nor make one
    ],
)
def test_growth_compares_the_floors_of_the_first_and_last_three_quiet_samples(
    main_mib: list[float], grew: bool
) -> None:
    """A real run: the main process's RSS jumped 138 -> 151 MiB in the final sample only and was
    138 again in between; one sample against one sample called that a leak."""
    samples = [sample(48 + 15 * i, {**BASE, "main": mib}, 120) for i, mib in enumerate(main_mib)]
    g = growth(samples, warmup=48)
    assert g["baseline_t_s"] == [48, 63, 78] and g["final_t_s"] == [93, 108, 123]
    assert g["rss_grew_in"] == (["main"] if grew else [])


def test_growth_without_two_quiet_samples_fails_the_run() -> None:
    g = growth([sample(0, BASE, 10), sample(60, BASE, 10, quiet=False), sample(120, BASE, 10)], warmup=48)
    assert "error" in g and verdict(g, {}, daemon_alive=True) == [g["error"]]


def message(kind: str, event_id: str) -> Message:
    payload = json.dumps({"type": kind, "id": event_id, "camera": "crowd1", "rule": "r"}).encode()
    return Message("vssoak/events", payload, False, 0.0)


def ledger(*messages: tuple[str, str], total: int) -> dict[str, Any]:
    out = event_ledger([message(kind, event_id) for kind, event_id in messages])
    return out | {"vistream_events_total": total, "lost": max(0, total - out["started"])}


QUIET = [sample(60, BASE, 120), sample(120, BASE, 120)]


@pytest.mark.parametrize(
    ("events", "lost"),
    [
        # Repeats (at-least-once delivery) count once.
        (ledger(("start", "a"), ("start", "a"), ("update", "a"), ("end", "a"), ("end", "a"), total=1), False),
        (ledger(("start", "a"), ("end", "a"), ("start", "b"), ("end", "b"), total=2), False),
        (ledger(("start", "a"), ("end", "a"), total=2), True),  # a whole event never delivered
        (ledger(("start", "a"), ("start", "b"), ("end", "b"), total=2), True),  # an end lost
        (ledger(("end", "a"), ("start", "b"), ("end", "b"), total=2), True),  # a start lost
    ],
)
def test_a_lost_alert_fails_the_run(events: dict[str, Any], lost: bool) -> None:
    failures = verdict(growth(QUIET, warmup=48), events, daemon_alive=True)
    assert bool(failures) == lost
    assert all(f.startswith("events lost") for f in failures)


def test_events_that_cannot_be_counted_fail_the_run() -> None:
    events = ledger(total=0) | {"metrics_error": "# /metrics failed: HTTP Error 500"}
    assert verdict(growth(QUIET, warmup=48), events, daemon_alive=True) == [
        "events started cannot be counted: # /metrics failed: HTTP Error 500"
    ]
    assert "the daemon exited during the run" in verdict(growth(QUIET, warmup=48), {}, daemon_alive=False)
