"""The alert rule state machines (vistream/events/rules.py) on a fake clock.

Frames come every 0.1 s unless a test says otherwise; `t` is the monotonic capture time and the wall
capture time is WALL0 + t, so payload times can be checked exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from vistream.config.models import AlertRule
from vistream.events.geometry import Box
from vistream.events.rules import Clock, Event, RuleMachine, Seen, accepts, machine_for

WALL0 = 1_763_700_000.0
BOX: Box = (100.0, 100.0, 200.0, 300.0)


def rule(**kw: Any) -> AlertRule:
    kw.setdefault("name", "person_in_driveway")
    if "line" not in kw:
        kw.setdefault("zone", "driveway")
    return AlertRule(**kw)


def machine(r: AlertRule) -> RuleMachine:
    ids = (f"ev{i}" for i in itertools.count(1))
    return machine_for("front", r, "vistream/front/rule/snapshot", new_id=lambda: next(ids))


def obj(track: int | None, box: Box = BOX, conf: float = 0.9, label: str = "person", d: Any = None) -> Seen:
    return Seen(track, label, conf, box, d)


def run(
    m: RuleMachine, seen_at: Callable[[float], Sequence[Seen]], until: float, step: float = 0.1
) -> list[tuple[float, Event]]:
    """Feed frames from t = 0 to `until` (inclusive); returns (t, event) in order."""
    out = []
    for i in range(round(until / step) + 1):
        t = round(i * step, 6)
        out += [(t, ev) for ev in m.step(Clock(i, WALL0 + t, t), seen_at(t))]
    return out


def kinds(events: list[tuple[float, Event]]) -> list[tuple[float, str, int | None]]:
    return [(t, ev.type, ev.track_id) for t, ev in events]


def test_dwell_not_yet_met() -> None:
    """A person in the zone for 1.9 s under a 2 s dwell starts nothing; the rule stays inactive."""
    m = machine(rule(min_duration_s=2))
    assert run(m, lambda t: [obj(1)], until=1.9) == []
    assert not m.active


def test_dwell_met_starts_one_event_with_the_spec_fields() -> None:
    """1. A person stays in the zone: the event starts on the frame where 2 s are reached, once.
    2. Its payload carries exactly the spec's fields, with the start frame's capture time.
    """
    m = machine(rule(min_duration_s=2))
    events = run(m, lambda t: [obj(1)], until=3)
    assert kinds(events) == [(2.0, "start", 1)]
    ev = events[0][1]
    assert ev.seq == 20 and m.active
    assert ev.payload() == {
        "type": "start",
        "id": "ev1",
        "camera": "front",
        "rule": "person_in_driveway",
        "label": "person",
        "track_id": 1,
        "zone": "driveway",
        "started_at": WALL0 + 2.0,
        "ended_at": None,
        "max_confidence": 0.9,
        "box": list(BOX),
        "count": None,
        "snapshot": "vistream/front/rule/snapshot",
    }


@pytest.mark.parametrize(
    ("gap", "start_at"),
    [
        (0.9, 2.0),  # missed for less than a second: the dwell goes on across the gap
        (1.0, 3.0),  # a gap of a second: the dwell starts again when it comes back at 1.0
    ],
)
def test_dwell_tolerates_missed_detections_not_absences(gap: float, start_at: float) -> None:
    """A person seen at t = 0, missing until t = `gap`, then seen again; the dwell is 2 s."""
    m = machine(rule(min_duration_s=2))
    events = run(m, lambda t: [obj(1)] if t == 0 or t >= gap else [], until=6)
    assert kinds(events) == [(start_at, "start", 1)]


def test_untracked_objects_start_nothing() -> None:
    """A detection without a track id (not yet confirmed by the tracker) cannot dwell or start."""
    m = machine(rule())
    assert run(m, lambda t: [obj(None)], until=1) == []


@pytest.mark.parametrize(
    ("labels", "label", "confidence", "ok"),
    [
        (["person"], "person", 0.5, True),  # min_confidence is inclusive
        (["person"], "person", 0.49, False),
        (["person"], "car", 0.9, False),
        (["person", "car"], "car", 0.9, True),
        (None, "dog", 0.9, True),  # no labels: any label
    ],
)
def test_accepts_labels_and_confidence(
    labels: list[str] | None, label: str, confidence: float, ok: bool
) -> None:
    """What the engine lets through to a rule: one of its labels at min_confidence (0.5) or more."""
    assert accepts(rule(labels=labels), label, confidence) is ok


def test_end_after_missing() -> None:
    """1. A person is in the zone from t = 0 to t = 5 (no dwell): start at 0.
    2. Frames go on without them: the end comes at 8 (end_after_s 3), ended_at is the capture time
       of the last frame they were seen in, and the rule is no longer active.
    """
    m = machine(rule(end_after_s=3))
    events = run(m, lambda t: [obj(1)] if t <= 5 else [], until=10)
    assert kinds(events) == [(0.0, "start", 1), (8.0, "end", 1)]
    end = events[-1][1].payload()
    assert end["ended_at"] == WALL0 + 5 and end["id"] == "ev1" and end["box"] == list(BOX)
    assert not m.active


def test_cooldown_blocks_new_events_until_it_is_over() -> None:
    """1. Track 1 from 0 to 1 s: its event starts at 0 and ends at 4 (end_after_s 3).
    2. Track 2 enters at 5, during the 10 s cooldown: nothing until 14, then its event starts.
    3. Meanwhile events of different tracks may run at once: track 3 and 4 both start at 20.
    """
    m = machine(rule(end_after_s=3, cooldown_s=10))

    def seen(t: float) -> list[Seen]:
        return [obj(1)] * (t <= 1) + [obj(2)] * (t >= 5) + [obj(3), obj(4)] * (t >= 20)

    events = run(m, seen, until=21)
    assert kinds(events) == [
        (0.0, "start", 1),
        (4.0, "end", 1),
        (14.0, "start", 2),
        (20.0, "start", 3),
        (20.0, "start", 4),
    ]
    assert len({ev.id for _, ev in events if ev.type == "start"}) == 4


def test_updates_are_rate_limited_to_one_a_second() -> None:
    """A person walks fast (the box moves 30 px every 0.1 s): updates carry the new box, 1 s apart."""
    m = machine(rule())

    def walking(t: float) -> list[Seen]:
        x = 100 + 300 * t
        return [obj(1, box=(x, 100.0, x + 100, 300.0))]

    events = run(m, walking, until=3.05)
    assert kinds(events) == [(0.0, "start", 1), (1.0, "update", 1), (2.0, "update", 1), (3.0, "update", 1)]
    assert events[1][1].payload()["box"] == [400.0, 100.0, 500.0, 300.0]


def test_updates_only_for_material_changes() -> None:
    """1. A person stands still with a box jittering by 2 px: no update.
    2. Their confidence rises from 0.6 to 0.62 (not material), then to 0.7 at 3 s: one update.
    """
    m = machine(rule())

    def standing(t: float) -> list[Seen]:
        jitter = 2.0 * (round(t * 10) % 2)
        conf = 0.6 if t < 2 else 0.62 if t < 3 else 0.7
        return [obj(1, box=(100 + jitter, 100.0, 200 + jitter, 300.0), conf=conf)]

    events = run(m, standing, until=5)
    assert kinds(events) == [(0.0, "start", 1), (3.0, "update", 1)]
    assert events[1][1].max_confidence == 0.7


def test_count_rising_and_falling() -> None:
    """min_count 2, min_duration_s 1, a frame every 0.5 s; objects in the zone over time:

    1. 1 object (0-2 s): nothing.
    2. 2 objects from 2 s: the count event starts at 3 s (after the 1 s dwell) with count 2,
       no track id, the union box.
    3. 3 objects from 5 s: update count 3; 4 objects at 5.5 s: held back (1 s limit), sent at 6 s.
    4. Back to 2 at 8 s: update count 2. Down to 1 at 10 s: the rule stops holding (no update);
       the end comes at 12.5 s (end_after_s 3 after the last frame with 2, at 9.5 s).
    """
    m = machine(rule(min_count=2, min_duration_s=1))
    counts = [(10, 1), (8, 2), (5.5, 4), (5, 3), (2, 2), (0, 1)]

    def seen(t: float) -> list[Seen]:
        n = next(n for since, n in counts if t >= since)
        return [obj(i, box=(100.0 * i, 100.0, 100.0 * i + 50, 300.0)) for i in range(1, n + 1)]

    events = run(m, seen, until=14, step=0.5)
    assert [(t, ev.type, ev.count) for t, ev in events] == [
        (3.0, "start", 2),
        (5.0, "update", 3),
        (6.0, "update", 4),
        (8.0, "update", 2),
        (12.5, "end", 2),
    ]
    start = events[0][1]
    assert start.track_id is None and start.box == (100.0, 100.0, 250.0, 300.0)
    assert start.label == "person"


def test_line_rule_counts_crossings_in_its_direction() -> None:
    """Rule on `in` crossings only:

    1. An `out` crossing at 1 s starts nothing.
    2. `in` by track 5 at 2 s starts the event (count 1, track 5); `in` by track 6 at 2.5 s updates
       it at 3 s (count 2, track 6: held back by the 1 s limit and sent with the next frame).
    3. No crossing after that: the event ends 3 s after the last one, at 5.5 s.
    """
    m = machine(rule(line="gate", direction="in"))
    crossings = {1.0: obj(4, d="out"), 2.0: obj(5, d="in"), 2.5: obj(6, d="in")}
    events = run(m, lambda t: [crossings[t]] if t in crossings else [], until=7, step=0.5)
    assert [(t, ev.type, ev.count, ev.track_id) for t, ev in events] == [
        (2.0, "start", 1, 5),
        (3.0, "update", 2, 6),
        (5.5, "end", 2, 6),
    ]
    payload = events[0][1].payload()
    assert payload["line"] == "gate" and payload["direction"] == "in" and "zone" not in payload


@pytest.mark.parametrize(("direction", "starts"), [("in", 1), ("out", 0), ("both", 1)])
def test_line_rule_direction_filter(direction: str, starts: int) -> None:
    """A single `in` crossing starts an event for rules on `in` and `both`, not `out`."""
    m = machine(rule(line="gate", direction=direction))
    events = run(m, lambda t: [obj(1, d="in")] if t == 1 else [], until=2)
    assert [ev.type for _, ev in events] == ["start"] * starts


def test_tick_ends_events_when_frames_stop() -> None:
    """1. A person is in the zone from 0 to 2 s, then the camera goes offline (no more frames).
    2. tick() at 4.9 s ends nothing; at 5.0 s (end_after_s 3 after the last frame) it ends the event.
    """
    m = machine(rule(end_after_s=3))
    assert kinds(run(m, lambda t: [obj(1)], until=2)) == [(0.0, "start", 1)]
    assert m.tick(4.9) == []
    ended = m.tick(5.0)
    assert [ev.type for ev in ended] == ["end"] and ended[0].ended_at == WALL0 + 2
    assert not m.active and m.tick(6) == []
