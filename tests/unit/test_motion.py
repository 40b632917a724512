"""Motion gating: the detector on synthetic frames, the gate's policy, moving tracks, repeated frames."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import av
import numpy as np
import pytest

from vistream.config.models import Config, MotionConfig
from vistream.outputs.alerts import Alerts
from vistream.ring.lifetime import fixed
from vistream.ring.shm import FrameRing, RingLayout
from vistream.scheduler.messages import FrameResult
from vistream.scheduler.policy import MotionGate
from vistream.sources.motion import FrameMotion, MotionDetector, TrackActivity, small_size

W, H = 160, 90


def scene(seed: int = 1) -> np.ndarray:
    """A textured grey frame, like a street: smooth shapes, no flat areas."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, (H // 10, W // 10), dtype=np.uint8)
    return np.kron(base, np.ones((10, 10), np.uint8))


def with_square(img: np.ndarray, x: int, y: int, side: int, value: int = 255) -> np.ndarray:
    out = img.copy()
    out[y : y + side, x : x + side] = value
    return out


def settled(det: MotionDetector, img: np.ndarray, n: int = 30) -> MotionDetector:
    for _ in range(n):
        det.score(img)
    return det


def test_first_frame_counts_as_motion() -> None:
    """No background yet (a camera that just connected): the frame is worth looking at."""
    assert MotionDetector().score(scene()) == 1.0


def test_still_scene_scores_zero() -> None:
    """1. A scene learnt into the background.
    2. The same scene with sensor noise of +-3 grey levels: nothing changed, score 0, no motion."""
    det = settled(MotionDetector(), scene())
    noise = np.random.default_rng(7).integers(-3, 4, (H, W))
    noisy = np.clip(scene().astype(int) + noise, 0, 255).astype(np.uint8)
    assert det.score(noisy) == 0.0
    assert not det.moving(0.0)


def test_change_under_the_pixel_threshold_is_no_motion() -> None:
    """A large area brightens by 15 grey levels (under pixel_threshold 25): a cloud, not motion."""
    det = settled(MotionDetector(pixel_threshold=25), scene())
    brighter = scene().astype(int)
    brighter[:, : W // 2] += 15
    assert det.score(brighter.astype(np.uint8)) == 0.0


def test_change_under_the_area_threshold_is_no_motion() -> None:
    """A 2x2 px blob (0.03% of the frame) changes a lot, but covers less than min_area 0.1%."""
    det = settled(MotionDetector(min_area=0.001), scene())
    score = det.score(with_square(scene(), 50, 40, 2, value=0))
    assert 0 <= score < 0.001 and not det.moving(score)


def test_real_movement_is_motion_and_is_learnt_away_when_it_stops() -> None:
    """1. A 12x12 px object (a person at 160 px) moves across the scene: every frame has motion.
    2. It stops: within a few frames (alpha 0.2) the background has learnt it, motion ends."""
    det = settled(MotionDetector(min_area=0.001), scene())
    for x in range(20, 120, 10):
        assert det.moving(det.score(with_square(scene(), x, 40, 12)))
    parked = with_square(scene(), 120, 40, 12)
    scores = [det.score(parked) for _ in range(15)]
    assert det.moving(scores[0])
    assert scores[-1] == 0.0 and scores.index(0.0) <= 10


def test_movement_inside_a_mask_is_not_motion() -> None:
    """1. A mask over the right third of the frame (a clock, a tree).
    2. An object moves inside it: score 0. 3. The same object moves left of it: motion."""
    mask = [[(0.66, 0.0), (1.0, 0.0), (1.0, 1.0), (0.66, 1.0)]]
    det = settled(MotionDetector(mask=mask), scene())
    for x in (112, 124, 136):
        assert det.score(with_square(scene(), x, 40, 12)) == 0.0
    assert det.moving(det.score(with_square(scene(), 30, 40, 12)))


def test_the_score_is_a_fraction_of_the_unmasked_area() -> None:
    """A mask of half the frame doubles the score of the same change in the other half."""
    plain = settled(MotionDetector(), scene())
    masked = settled(MotionDetector(mask=[[(0.5, 0), (1, 0), (1, 1), (0.5, 1)]]), scene())
    changed = with_square(scene(), 10, 30, 20)
    assert masked.score(changed) == pytest.approx(2 * plain.score(changed), rel=0.05)


def test_a_size_change_starts_over() -> None:
    """A camera that changes resolution gets a new background; its first frame counts as motion."""
    det = settled(MotionDetector(), scene())
    assert det.score(np.zeros((60, 80), np.uint8)) == 1.0


@pytest.mark.parametrize(
    ("size", "expected"),
    [((1920, 1080), (160, 90)), ((640, 480), (160, 120)), ((100, 50), (100, 50)), ((1080, 1920), (160, 284))],
)
def test_small_size_keeps_the_aspect_never_upscales(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert small_size(*size, 160) == expected


def test_frame_motion_scores_decoded_frames() -> None:
    """The reader's path: a yuv420p frame is scaled to a grey copy and scored (still, then moving)."""
    fm = FrameMotion(MotionConfig(enabled=True))

    def frame(img: np.ndarray) -> av.VideoFrame:
        big = np.kron(img, np.ones((4, 4), np.uint8))  # 640x360
        return av.VideoFrame.from_ndarray(np.dstack([big] * 3), format="rgb24").reformat(format="yuv420p")

    assert fm.score(frame(scene())) == 1.0
    for _ in range(20):
        fm.score(frame(scene()))
    assert fm.score(frame(scene())) < 0.001
    assert fm.score(frame(with_square(scene(), 60, 40, 15))) > 0.01


# -- the gating policy ------------------------------------------------------------------


def gate_after_inference(at: float = 100.0) -> MotionGate:
    gate = MotionGate()
    gate.inferred("a", at)
    return gate


@pytest.mark.parametrize(
    ("case", "now", "motion", "active_until", "skip"),
    [
        ("no motion: skipped", 101.0, 0.0, 0.0, True),
        ("motion at the threshold: inferred", 101.0, 0.001, 0.0, False),
        ("gating off (-1): inferred", 101.0, -1.0, 0.0, False),
        ("keepalive due: inferred", 110.0, 0.0, 0.0, False),
        ("keepalive not yet due: skipped", 109.9, 0.0, 0.0, True),
        ("a track moved lately, a few pixels changed: inferred", 101.0, 0.0005, 102.0, False),
        ("a track moved lately, no pixel changed: skipped", 101.0, 0.0, 102.0, True),
        ("the track's activity ran out: skipped", 103.0, 0.0005, 102.0, True),
    ],
)
def test_gate(case: str, now: float, motion: float, active_until: float, skip: bool) -> None:
    """Camera `a` was inferred at t=100, min_area 0.001, keepalive 10 s."""
    gate = gate_after_inference(100.0)
    assert gate.skip("a", now, motion, 0.001, 10.0, active_until) is skip, case


def test_gate_infers_a_camera_it_never_inferred() -> None:
    """A fresh scheduler (or a new camera) has no last inference: its first frame is inferred."""
    gate = MotionGate()
    assert not gate.skip("a", 100.0, 0.0, 0.001, 10.0, 0.0)
    gate.inferred("a", 100.0)
    assert gate.skip("a", 100.2, 0.0, 0.001, 10.0, 0.0)
    gate.forget("a")
    assert not gate.skip("a", 100.4, 0.0, 0.001, 10.0, 0.0)


def test_keepalive_counts_from_the_last_inference() -> None:
    """With no motion at 5 fps for 30 s and keepalive 10 s, one frame in 10 s is inferred."""
    gate = gate_after_inference(0.0)
    inferred = []
    for i in range(1, 151):
        t = i / 5
        if not gate.skip("a", t, 0.0, 0.001, 10.0, 0.0):
            gate.inferred("a", t)
            inferred.append(t)
    assert inferred == [10.0, 20.0, 30.0]


# -- moving tracks (the main process) ----------------------------------------------------


def test_a_moving_track_makes_the_camera_active_a_new_one_does_not() -> None:
    """1. A track seen for the first time: not activity (on a still scene detections come and go).
    2. It moves 30 px (over 1% of 1920): the camera is active for hold_s from that frame."""
    act = TrackActivity(hold_s=2.0)
    assert act.update("a", [(1, (100, 100, 200, 400))], 1920, 1080, 10.0) is None
    assert act.update("a", [(1, (130, 100, 230, 400))], 1920, 1080, 10.2) == pytest.approx(12.2)


def test_a_flickering_track_is_not_activity() -> None:
    """A standing person's detection drops out every other frame (ByteTrack reports the track again
    when it is back): it is compared with where it was, and never counts as moving."""
    act = TrackActivity(hold_s=2.0)
    for i in range(20):
        boxes = [(1, (100.0, 100.0, 200.0, 400.0))] if i % 2 == 0 else []
        assert act.update("a", boxes, 1920, 1080, 10 + i / 5) is None


def test_a_track_unseen_for_forget_s_is_forgotten() -> None:
    act = TrackActivity(hold_s=2.0, forget_s=10.0)
    act.update("a", [(1, (100, 100, 200, 400))], 1920, 1080, 10.0)
    act.update("a", [], 1920, 1080, 20.5)
    assert act.update("a", [(1, (500, 100, 600, 400))], 1920, 1080, 21.0) is None  # new again, not moved


def test_a_still_track_does_not_keep_the_camera_active() -> None:
    """A parked car: its box jitters by a pixel or two from frame to frame, it never counts as moving."""
    act = TrackActivity(hold_s=2.0, min_move=0.01)
    act.update("a", [(1, (100, 100, 200, 400))], 1920, 1080, 10.0)
    for i, jitter in enumerate((1, -2, 3, 0, -1)):
        box = (100 + jitter, 100, 200 + jitter, 400 - jitter)
        assert act.update("a", [(1, box)], 1920, 1080, 10.2 + i / 5) is None


def test_a_slow_walker_adds_up() -> None:
    """5 px per frame (under 1% of 1920 each time) still counts once it has moved 1% from where it
    last counted as moving."""
    act = TrackActivity(hold_s=2.0, min_move=0.01)
    act.update("a", [(1, (100, 100, 200, 400))], 1920, 1080, 10.0)
    results = [
        act.update("a", [(1, (100 + 5 * i, 100, 200 + 5 * i, 400))], 1920, 1080, 10 + i) for i in range(1, 6)
    ]
    assert results[:3] == [None, None, None] and results[3] == 16.0


def test_untracked_detections_do_not_count() -> None:
    act = TrackActivity()
    assert act.update("a", [(None, (0, 0, 10, 10))], 1920, 1080, 10.0) is None


# -- the main process: moving tracks into the ring, repeated frames into the engine ------------


def alerts_config() -> Config:
    return Config.model_validate(
        {
            "model": {"path": "yolov8n.pt"},
            "cameras": [
                {
                    "name": "front",
                    "url": "rtsp://cam.local/front",
                    "detect_fps": 10,
                    "zones": {"yard": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]},
                    "motion": {"enabled": True},
                }
            ],
            "alerts": [{"name": "in_yard", "labels": ["person"], "zone": "yard", "end_after_s": 1}],
        }
    )


def person_at(seq: int, x: float, *, repeated: bool = False) -> FrameResult:
    """Frame `seq` (t = seq / 10 s) of a 320x240 camera with a person whose box is 40 px wide at x."""
    return FrameResult(
        "front", seq, 1e9 + seq / 10, seq / 10, 320, 240, [(0, 0.9, x, 140.0, x + 40, 200.0)], repeated
    )


@pytest.fixture
def gated_ring() -> Iterator[FrameRing]:
    r = FrameRing.create(
        f"vistream-test-{uuid.uuid4().hex[:8]}", RingLayout(2, 16, 16, plane_width=0, plane_height=0)
    )
    yield r
    r.close()
    r.unlink()


def test_the_main_process_marks_a_camera_active_while_a_track_moves(gated_ring: FrameRing) -> None:
    """1. A person walks (10 px per frame at 320 px): each inferred frame moves the camera's
       `active_until` to 2 s after it.
    2. They stop: `active_until` stays where the last move put it, and runs out."""
    alerts = Alerts(alerts_config(), None, fixed({"front": gated_ring}))
    assert alerts.bind({0: "person"}) == []
    for seq in range(1, 6):
        alerts.process(person_at(seq, 100 + 10 * seq))
    assert float(gated_ring.header["active_until"]) == pytest.approx(0.5 + 2.0)
    for seq in range(6, 20):
        alerts.process(person_at(seq, 150))
    assert float(gated_ring.header["active_until"]) == pytest.approx(0.5 + 2.0)


def test_repeated_frames_keep_an_event_open_and_do_not_count_as_moves(gated_ring: FrameRing) -> None:
    """1. A person stands in the yard; the event starts.
    2. For 5 s (end_after_s is 1 s) every frame is skipped for want of motion and reaches the engine
       as the last detections, repeated: the event stays open, and no move is written to the ring.
    3. Without those repeats the engine's tick would have ended it."""
    alerts = Alerts(alerts_config(), None, fixed({"front": gated_ring}))
    alerts.bind({0: "person"})
    assert alerts.engine is not None
    for seq in range(1, 4):
        alerts.process(person_at(seq, 150))
    assert [active for _, _, active in alerts.engine.active_states()] == [True]
    gated_ring.header["active_until"] = 0.0
    for seq in range(4, 54):
        alerts.process(person_at(seq, 150, repeated=True))
        alerts.tick(seq / 10)
    assert [active for _, _, active in alerts.engine.active_states()] == [True]
    assert float(gated_ring.header["active_until"]) == 0.0
    alerts.tick(5.3 + 1.1)  # step 3: no frame at all for end_after_s
    assert [active for _, _, active in alerts.engine.active_states()] == [False]


def test_a_rebuilt_trackers_track_is_not_the_old_one_moving(gated_ring: FrameRing) -> None:
    """1. The scheduler's tracker (generation 1) holds a person still at x=100 as track 1.
    2. The scheduler restarts; its new tracker (generation 2) numbers another person, still at
       x=250, track 1 as well.
    3. No move: a track seen for the first time does not count, whatever its id was before (keyed
       by id alone, the old track 1 seemed to jump 150 px and kept the camera inferred)."""
    alerts = Alerts(alerts_config(), None, fixed({"front": gated_ring}))
    alerts.bind({0: "person"})
    for seq, x, generation in [(1, 100, 1), (2, 100, 1), (3, 250, 2), (4, 250, 2)]:
        frame = dataclasses.replace(person_at(seq, x), track_ids=(1,), tracker=generation)
        alerts.process(frame)
    assert float(gated_ring.header["active_until"]) == 0.0
