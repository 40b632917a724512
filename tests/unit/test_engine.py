"""The event engine (vistream/events/engine.py) on synthetic frames: tracker, geometry and rules together.

Frames are 1920x1080 at 10 fps on a fake clock (`captured_mono` = t, `captured_at` = WALL0 + t).
The camera `front` has the lower half of the image as zone `driveway` and a vertical line `gate` down
the middle, drawn top to bottom: its left is the right half of the image, so walking from right to
left across it is `in`.
"""

from __future__ import annotations

import itertools
from typing import Any

from vistream.config.models import Config
from vistream.events.engine import EventEngine, FrameOutcome
from vistream.events.tracking import CameraTracker
from vistream.scheduler.messages import Detection, FrameResult

WALL0 = 1_763_700_000.0
NAMES = {0: "person", 2: "car"}
W, H = 1920, 1080


def config(**alerts: dict[str, Any]) -> Config:
    rules = [{"name": name, **rule} for name, rule in alerts.items()]
    return Config.model_validate(
        {
            "mqtt": {"topic_prefix": "home/vs"},
            "cameras": [
                {
                    "name": "front",
                    "url": "rtsp://cam.local/front",
                    "detect_fps": 10,
                    "zones": {"driveway": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]},
                    "lines": {"gate": [[0.5, 0], [0.5, 1]]},
                },
                {"name": "back", "url": "rtsp://cam.local/back", "detect_fps": 10},
            ],
            "alerts": rules,
        }
    )


DEFAULT_ALERTS: dict[str, dict[str, Any]] = {
    "person_in_driveway": {"labels": ["person"], "zone": "driveway", "min_duration_s": 1, "end_after_s": 2},
    "gate_crossing": {"labels": ["person"], "line": "gate", "end_after_s": 2},
}


def engine(counters: dict[tuple[str, str, str], int] | None = None, **alerts: dict[str, Any]) -> EventEngine:
    ids = (f"ev{i}" for i in itertools.count(1))
    return EventEngine(config(**(alerts or DEFAULT_ALERTS)), NAMES, counters, new_id=lambda: next(ids))


def person_at(x: float, y: float, cls: int = 0, conf: float = 0.9) -> Detection:
    """A 100 x 200 px box whose bottom-centre is at (x, y) pixels."""
    return (cls, conf, x - 50, y - 200, x + 50, y)


def walk() -> list[tuple[float, float]]:
    """Bottom-centre positions, 40 px a frame: down into the driveway, left across the gate, up out.

    (1500, 400) -> (1500, 800): enters the zone (y >= 540) at the 4th step, t = 0.4 s
    (1500, 800) -> (500, 800): crosses the gate (x = 960) at t = 2.4 s
    (500, 800) -> (500, 400): leaves the zone after t = 4.1 s (y = 560 is the last point in it)
    """
    down = [(1500.0, 400.0 + 40 * i) for i in range(10)]
    left = [(1500.0 - 40 * i, 800.0) for i in range(25)]
    up = [(500.0, 800.0 - 40 * i) for i in range(11)]
    return down + left + up


def feed(eng: EventEngine, camera: str, frames: list[list[Detection]], t0: float = 0.0) -> list[FrameOutcome]:
    return [
        eng.process(FrameResult(camera, i, WALL0 + t0 + i / 10, t0 + i / 10, W, H, dets))
        for i, dets in enumerate(frames)
    ]


def test_a_person_walking_through_a_zone_and_across_a_line() -> None:
    """1. A person walks down into the driveway, left across the gate, and up out of it; then 3 s of
       empty frames.
    2. Every detection carries track id 1 from the first frame.
    3. The zone rule starts 1 s after they enter (t = 1.4), updates while they walk (at most once a
       second), and ends 2 s after the last frame they were in the zone; its active flag goes ON
       and OFF; one snapshot is requested for the start frame.
    4. The gate crossing (right to left: `in`) counts 1 on `front/gate/in` and starts the line
       rule's event, which ends 2 s later.
    """
    eng = engine()
    frames = [[person_at(x, y)] for x, y in walk()] + [[] for _ in range(30)]
    outcomes = feed(eng, "front", frames)

    assert {o.track_id for out in outcomes for o in out.objects} == {1}
    events = [(i / 10, ev) for i, out in enumerate(outcomes) for ev in out.events]
    zone = [(t, ev.type) for t, ev in events if ev.rule == "person_in_driveway"]
    assert zone[0] == (1.4, "start") and zone[-1][1] == "end"
    updates = [t for t, kind in zone if kind == "update"]
    assert updates and all(b - a >= 1 for a, b in itertools.pairwise([1.4, *updates]))
    end = next(ev for _, ev in events if ev.type == "end" and ev.rule == "person_in_driveway")
    assert end.ended_at == WALL0 + 4.1 and zone[-1][0] == 6.1
    line = [(t, ev.type, ev.count) for t, ev in events if ev.rule == "gate_crossing"]
    assert line == [(2.4, "start", 1), (4.4, "end", 1)]

    actives = [(i / 10, *a) for i, out in enumerate(outcomes) for a in out.active]
    assert actives == [
        (1.4, "front", "person_in_driveway", True),
        (2.4, "front", "gate_crossing", True),
        (4.4, "front", "gate_crossing", False),
        (6.1, "front", "person_in_driveway", False),
    ]
    counters = [(i / 10, *c) for i, out in enumerate(outcomes) for c in out.counters]
    assert counters == [(2.4, "front", "gate", "in", 1)]
    snapshots = [s for out in outcomes for s in out.snapshots]
    assert [(s.rule, s.seq, s.event_id) for s in snapshots] == [
        ("person_in_driveway", 14, "ev1"),
        ("gate_crossing", 24, "ev2"),
    ]


def test_event_payload_names_the_snapshot_topic() -> None:
    """A start event's payload has the spec's fields and names `{prefix}/{camera}/{rule}/snapshot`."""
    eng = engine()
    out = feed(eng, "front", [[person_at(1000, 900)]] * 11)
    start = next(ev for o in out for ev in o.events)
    payload = start.payload()
    assert payload["snapshot"] == "home/vs/front/person_in_driveway/snapshot"
    assert payload["track_id"] == 1 and payload["label"] == "person" and payload["zone"] == "driveway"
    assert payload["box"] == [950.0, 700.0, 1050.0, 900.0] and payload["started_at"] == WALL0 + 1.0


def test_counters_are_restored_and_go_on() -> None:
    """1. The engine starts with counters restored from a previous run: 41 in, 7 out.
    2. A person crosses right to left (in), then back (out): 42 and 8, never back to 0.
    """
    eng = engine(counters={("front", "gate", "in"): 41, ("front", "gate", "out"): 7})
    assert eng.counters == {("front", "gate", "in"): 41, ("front", "gate", "out"): 7}
    there = [(1100.0 - 40 * i, 800.0) for i in range(8)]
    outcomes = feed(eng, "front", [[person_at(x, y)] for x, y in there + there[::-1]])
    changes = [c for out in outcomes for c in out.counters]
    assert changes == [("front", "gate", "in", 42), ("front", "gate", "out", 8)]
    assert eng.counters == {("front", "gate", "in"): 42, ("front", "gate", "out"): 8}


def test_counters_count_the_labels_of_the_rules_on_the_line() -> None:
    """A car crosses the gate beside a person: the person-only rule on the gate counts the person only;
    without any rule on the gate, both count."""
    two = [[person_at(1100 - 40 * i, 800), person_at(1100 - 40 * i, 300, cls=2)] for i in range(8)]
    person_only = feed(engine(), "front", two)
    assert [c for out in person_only for c in out.counters] == [("front", "gate", "in", 1)]
    no_line_rule = engine(zone_only=DEFAULT_ALERTS["person_in_driveway"])
    any_label = feed(no_line_rule, "front", two)
    assert [c for out in any_label for c in out.counters] == [("front", "gate", "in", 2)]


def test_cameras_without_rules_get_track_ids_and_unknown_cameras_none() -> None:
    """1. Camera `back` has no zones, lines or rules: its objects still get track ids, no events.
    2. A frame of a camera that is not in the config gets its objects back without track ids.
    """
    eng = engine()
    outcomes = feed(eng, "back", [[person_at(300 + 20 * i, 900), person_at(1500, 600)] for i in range(5)])
    assert [[o.track_id for o in out.objects] for out in outcomes] == [[1, 2]] * 5
    assert not any(out.events or out.counters or out.active for out in outcomes)
    stranger = feed(eng, "garage", [[person_at(300, 900)]])[0]
    assert [o.track_id for o in stranger.objects] == [None]
    assert stranger.objects[0].payload() == {
        "label": "person",
        "class_id": 0,
        "confidence": 0.9,
        "box": [250.0, 700.0, 350.0, 900.0],
        "track_id": None,
    }


def test_tick_ends_events_when_the_camera_goes_quiet() -> None:
    """1. A person stands in the driveway for 2 s: the zone event starts at 1 s.
    2. The camera stops sending frames; tick() 1.9 s after the last frame ends nothing, at 2 s it
       ends the event and reports the rule inactive.
    """
    eng = engine()
    outcomes = feed(eng, "front", [[person_at(1000, 900)]] * 21)
    assert [ev.type for out in outcomes for ev in out.events] == ["start"]
    assert eng.active_states() == [("front", "person_in_driveway", True), ("front", "gate_crossing", False)]
    assert eng.tick(3.9).events == []
    out = eng.tick(4.0)
    assert [ev.type for ev in out.events] == ["end"] and out.active == [
        ("front", "person_in_driveway", False)
    ]


def test_tracker_predicts_across_a_gap_of_dropped_frames() -> None:
    """1. A person walks right at 40 px a frame (10 fps) for 1 s.
    2. The next 10 frames are dropped (the scheduler shed load); the person walked on meanwhile, so
       their box is 440 px away from the last one and does not overlap it at all.
    3. The tracker predicts 11 intervals ahead, not one: the same track id goes on.
    """
    tracker = CameraTracker(detect_fps=10)
    ids = [tracker.update([person_at(300 + 40 * i, 900)], i / 10) for i in range(10)]
    ids += [tracker.update([person_at(300 + 40 * i, 900)], i / 10) for i in range(20, 25)]
    assert ids == [[1]] * 15


def test_tracker_ids_need_a_second_frame_and_expire_after_the_buffer() -> None:
    """1. Objects of a camera's very first frame get ids at once.
    2. An object that appears later has no id on its first frame, and one from its second.
    3. A person missing for 1.5 s comes back with their id (the buffer is 2 s); one missing for
       more than 2 s is removed (reported in `removed`) and comes back with a new id.
    """
    tracker = CameraTracker(detect_fps=10)
    still, other = person_at(400, 900), person_at(1400, 900)
    assert tracker.update([still], 0.0) == [1]
    assert tracker.update([still, other], 0.1) == [1, None]
    assert tracker.update([still, other], 0.2) == [1, 2]
    assert tracker.update([other], 1.7) == [2]  # `still` not seen for 1.5 s
    assert tracker.update([still, other], 1.8) == [1, 2]
    removed: list[int] = []
    for i in range(19, 45):
        tracker.update([other], i / 10)
        removed += tracker.removed
    assert removed == [1]
    assert tracker.update([still, other], 4.5)[1] == 2
    assert tracker.update([still, other], 4.6) == [3, 2]


def test_a_reload_keeps_what_did_not_change_and_ends_what_did() -> None:
    """1. A person stands in the driveway: the zone rule's event runs (track 1); counters are 3 in.
    2. Reload with the same config: nothing ends, the event and the track go on, counters stay.
    3. Reload with the zone rule changed (longer dwell): its running event ends now, active OFF;
       the track id is kept (same camera rate), and the new rule starts its own event later."""
    eng = engine(counters={("front", "gate", "in"): 3})
    first = feed(eng, "front", [[person_at(1000, 900)]] * 12)
    start = next(ev for out in first for ev in out.events)
    assert eng.reconfigure(config(**DEFAULT_ALERTS)).events == []
    more = feed(eng, "front", [[person_at(1000, 900)]] * 3, t0=1.2)
    assert [o.track_id for out in more for o in out.objects] == [1, 1, 1]
    assert all(ev.type == "update" and ev.id == start.id for out in more for ev in out.events)
    assert eng.counters[("front", "gate", "in")] == 3

    changed = {
        **DEFAULT_ALERTS,
        "person_in_driveway": {**DEFAULT_ALERTS["person_in_driveway"], "min_duration_s": 2},
    }
    out = eng.reconfigure(config(**changed))
    assert [(ev.type, ev.id) for ev in out.events] == [("end", start.id)]
    assert out.active == [("front", "person_in_driveway", False)]
    later = feed(eng, "front", [[person_at(1000, 900)]] * 25, t0=1.5)
    assert {o.track_id for out in later for o in out.objects} == {1}
    starts = [ev for out in later for ev in out.events if ev.type == "start"]
    assert len(starts) == 1 and starts[0].id != start.id
    assert eng.counters[("front", "gate", "in")] == 3


def scheduled(tracker: int, t: float, *tracks: tuple[int, float, float]) -> FrameResult:
    """A frame of `front` tracked in the scheduler by tracker generation `tracker`: (id, x, y) each."""
    dets = [person_at(x, y) for _, x, y in tracks]
    ids = tuple(track_id for track_id, _, _ in tracks)
    return FrameResult("front", round(t * 10), WALL0 + t, t, W, H, dets, track_ids=ids, tracker=tracker)


def test_a_restarted_schedulers_track_3_does_not_cross_from_where_the_old_track_3_was() -> None:
    """1. The scheduler's tracker (generation 1) follows track 3 on the right of the gate.
    2. The scheduler restarts: its new tracker (generation 2) numbers a person on the left of the
       gate 3 as well.
    3. No crossing is counted and no line event starts: the new track 3 was never on the right.
    4. The new track 3 then walks right across the gate: that one crossing (`out`) is counted."""
    eng = engine()
    outs = [eng.process(scheduled(1, i / 10, (3, 1500, 800))) for i in range(5)]
    outs += [eng.process(scheduled(2, 1 + i / 10, (3, 500, 800))) for i in range(5)]
    assert [c for out in outs for c in out.counters] == []
    assert [ev for out in outs for ev in out.events if ev.rule == "gate_crossing"] == []
    out = eng.process(scheduled(2, 1.5, (3, 1500, 800)))
    assert out.counters == [("front", "gate", "out", 1)]


def test_a_detect_fps_reload_gives_a_new_tracker_whose_ids_do_not_cross() -> None:
    """1. The engine tracks `front` itself; its track 1 stands on the right of the gate.
    2. A reload changes detect_fps: a new tracker, the line kept (it did not change).
    3. A person on the left of the gate becomes the new tracker's track 1: no crossing."""
    eng = engine()
    feed(eng, "front", [[person_at(1500, 800)]] * 5)
    cfg = config(**DEFAULT_ALERTS)
    cfg.cameras[0] = cfg.cameras[0].model_copy(update={"detect_fps": 5})
    eng.reconfigure(cfg)
    outs = feed(eng, "front", [[person_at(500, 800)]] * 5, t0=1.0)
    assert {o.track_id for out in outs for o in out.objects} == {1}
    assert [c for out in outs for c in out.counters] == []


def test_a_zone_event_of_an_old_track_is_not_held_by_the_new_track_with_its_id() -> None:
    """1. Track 1 of tracker generation 1 stands in the driveway: its zone event starts.
    2. The scheduler restarts; generation 2's track 1 is another person, also in the driveway.
    3. The old event is not held by them: it ends end_after_s after its own track was last seen,
       with that track's last box, and the new track 1 gets an event of its own."""
    eng = engine()
    outs = [eng.process(scheduled(1, i / 10, (1, 1500, 900))) for i in range(15)]
    first = next(ev for out in outs for ev in out.events)
    outs = [eng.process(scheduled(2, 1.5 + i / 10, (1, 300, 900))) for i in range(25)]
    events = [(ev.type, ev.id) for out in outs for ev in out.events if ev.rule == "person_in_driveway"]
    assert ("end", first.id) in events
    end = next(ev for out in outs for ev in out.events if ev.type == "end")
    assert end.ended_at == WALL0 + 1.4 and end.box == person_at(1500, 900)[2:]
    assert [kind for kind, i in events if i != first.id] == ["start"]


def test_memory_stays_flat_after_100000_one_frame_tracks() -> None:
    """1. 100,000 frames at 10 fps, each with one person the tracker never sees again, in the
       driveway and alternately on both sides of the gate; no removal notice ever comes (lost
       with an overflowing results queue, or a duplicate Ultralytics dropped).
    2. The per-track state of lines and rules stays at what the last seconds put there, and the
       memory allocated by the engine after 10,000 tracks does not grow with 90,000 more."""
    import tracemalloc

    eng = engine()
    cam = eng._cameras["front"]

    def run(first: int, last: int) -> None:
        for i in range(first, last):
            eng.process(scheduled(1, i / 10, (i, 500 if i % 2 else 1500, 800)))

    run(1, 10_000)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    run(10_000, 100_001)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    per_track = [len(cam.lines["gate"])] + [
        len(getattr(m, "_dwells", ())) + len(m._open) for m in cam.machines
    ]
    print(f"per-track entries after 100,000 tracks: {per_track}; memory grown over 90,000: {grown} B")
    assert len(cam.lines["gate"]) <= 1.5 * 10 * 10 + 1  # 1.5 x FORGET_AFTER_S at 10 tracks a second
    assert all(n <= 20 for n in per_track[1:])
    assert grown < 100_000


def glitching(x: float, glitch_x: float, y: float = 800.0) -> list[tuple[float, float]]:
    """A person standing at (x, y) whose detection's bottom-centre jumps to `glitch_x` for one frame
    in every seven (the box flickers wider on one side: an arm, a bag, a passer-by's legs), 4 times."""
    return ([(x, y)] * 6 + [(glitch_x, y)]) * 4 + [(x, y)] * 3


def test_a_track_is_placed_by_its_kalman_box_not_by_the_jitter_of_its_detections() -> None:
    """1. The engine tracks `front` itself. A person stands 30 px right of the gate (x = 990); four
       times their detection's bottom-centre jumps 40 px left for one frame, across the gate.
    2. No crossing is counted and no line event starts: the track's box (ByteTrack's Kalman estimate
       after each match, what Ultralytics' `model.track` reports) only moves ~27 px to the left.
       By the detections' boxes it would be 4 crossings in and 4 out.
    3. What is reported is the detection's box, what the model found; the track's box is beside it."""
    eng = engine()
    outcomes = feed(eng, "front", [[person_at(x, y)] for x, y in glitching(990, 950)])
    assert [c for out in outcomes for c in out.counters] == []
    assert [ev for out in outcomes for ev in out.events if ev.rule == "gate_crossing"] == []
    assert eng.counters[("front", "gate", "in")] == eng.counters[("front", "gate", "out")] == 0
    glitch = outcomes[6].objects[0]
    assert glitch.box == person_at(950, 800)[2:] and glitch.payload()["box"] == list(glitch.box)
    assert glitch.track_box is not None and 960 < (glitch.track_box[0] + glitch.track_box[2]) / 2 < 970


def test_the_scheduler_s_track_boxes_place_objects_in_zones_and_on_lines() -> None:
    """1. Track 1, tracked in the scheduler, stands right of the gate just above the driveway by its
       track boxes; its detections' boxes are left of the gate and inside the driveway.
    2. No crossing and no zone event: the engine places it by the track boxes.
    3. Its track box moves left across the gate: one crossing `in`."""
    eng = engine()

    def frame(t: float, track_x: float) -> FrameResult:
        det = person_at(900, 600)  # left of the gate (x 960), in the driveway (y >= 540)
        place = person_at(track_x, 500)[2:]
        return FrameResult(
            "front", round(t * 10), WALL0 + t, t, W, H, [det], track_ids=(1,), tracker=1, track_boxes=(place,)
        )

    outs = [eng.process(frame(i / 10, 1000)) for i in range(20)]
    assert [c for out in outs for c in out.counters] == [] and [ev for out in outs for ev in out.events] == []
    assert eng.process(frame(2.0, 940)).counters == [("front", "gate", "in", 1)]
