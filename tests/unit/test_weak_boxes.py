"""A tracked camera's weak boxes: the detector keeps them for ByteTrack, the daemon reports only those
that continue a confirmed track, and each tracked detection carries its track's (Kalman) box.

Uses test_scheduler's rig: a real scheduler loop on real rings with a fake detector and clock.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from unit.test_scheduler import Rig, rig  # noqa: F401  (the fixture)
from vistream.config.models import BatchingConfig, ModelConfig
from vistream.detector import ModelLoadError
from vistream.ops.process import StopFlag
from vistream.ring.shm import State
from vistream.scheduler import loop
from vistream.scheduler.messages import Fatal, FrameResult


class Sink:
    """A results queue that keeps what is put (and the `multiprocessing.Queue` calls `_flush` makes)."""

    def __init__(self) -> None:
        self.got: list[Any] = []

    def put(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.got.append(msg)

    def close(self) -> None:
        pass

    def join_thread(self) -> None:
        pass

    def cancel_join_thread(self) -> None:
        pass


@pytest.mark.parametrize(("conf", "nms_conf"), [(0.25, 0.1), (0.5, 0.1), (0.05, 0.05)])
def test_the_detector_of_tracked_cameras_keeps_boxes_down_to_bytetracks_low_threshold(
    monkeypatch: pytest.MonkeyPatch, conf: float, nms_conf: float
) -> None:
    """The scheduler loads its detector (every camera is tracked there) with NMS at
    min(model.conf, track_low_thresh 0.1), as Ultralytics' `model.track` runs at conf 0.1: at
    model.conf the second association of ByteTrack would never get a box. The rest of the model
    config is the configured one."""
    loaded: list[ModelConfig] = []

    def load_detector(model: ModelConfig, max_batch: int) -> Any:
        loaded.append(model)
        raise ModelLoadError("enough: the test only wants the config")

    monkeypatch.setattr(loop, "load_detector", load_detector)
    model = ModelConfig(path="fake.pt", conf=conf, iou=0.5)
    results = Sink()
    spec = loop.SchedulerSpec(
        model, BatchingConfig(), {}, threading.Semaphore(0), results, Sink(), Sink(), [0.0, 0.0, 0.0]
    )
    assert loop.run_scheduler(spec, stop=StopFlag()) == 3
    assert isinstance(results.got[0], Fatal)
    assert [m.conf for m in loaded] == [nms_conf]
    assert loaded[0].model_copy(update={"conf": conf}) == model


def test_weak_boxes_are_reported_only_where_they_continue_a_confirmed_track(rig: Rig) -> None:  # noqa: F811
    """model.conf 0.25 (the default); the detector gives camera `a` (model-input pixels, x 4 in the
    camera's):
    1. a walker at 0.9 on frames 0-3, at 0.15 on frames 4-6 (half hidden), at 0.9 again on 7-8;
    2. a stray box at 0.15 on every frame, far from the walker;
    3. from frame 5 a new object at 0.6.
    Reported: the walker on every frame with one track id, its weak frames included (ByteTrack's
    second association continued the track); never the stray (no track holds it, and a box under
    model.conf starts none); the new object from its first frame, without an id until its track is
    confirmed. Each tracked detection carries its track's box, not the detection's."""
    walker_conf = [0.9] * 4 + [0.15] * 3 + [0.9] * 2
    frame_no = [0]

    def infer(n: int) -> list[np.ndarray]:
        i = frame_no[0]
        x = 2 + 0.25 * i
        rows = [[x, 2, x + 4, 12, walker_conf[i], 0], [11, 1, 15, 5, 0.15, 0]]
        if i >= 5:
            rows.append([10, 9, 14, 15, 0.6, 0])
        return [np.array(rows, np.float32)]

    rig.detector.infer = infer  # type: ignore[method-assign]
    rig.rings["b"].header["state"] = State.CONNECTING
    s = rig.start()
    frames: list[FrameResult] = []
    for i in range(len(walker_conf)):
        frame_no[0] = i
        rig.clock.t += 0.2
        rig.write("a")
        s.step()
        frames += rig.results.get_nowait().frames
    assert len(frames) == len(walker_conf)
    confs = [[round(d[1], 2) for d in f.detections] for f in frames]
    assert confs == [[0.9]] * 4 + [[0.15]] + [[0.15, 0.6]] * 2 + [[0.9, 0.6]] * 2, confs
    walker = {f.track_ids[0] for f in frames if f.track_ids}
    assert len(walker) == 1 and None not in walker, walker
    newcomer = [f.track_ids[1] for f in frames[5:] if f.track_ids]
    assert newcomer[0] is None and newcomer[1] is not None and len(set(newcomer[1:])) == 1, newcomer
    for f in frames:
        assert f.track_ids is not None and f.track_boxes is not None
        assert [box is None for box in f.track_boxes] == [i is None for i in f.track_ids]
    for f in frames[1:]:  # the walker moves: its track's box is the Kalman estimate, not the detection's
        assert f.track_boxes is not None and f.track_boxes[0] not in (None, f.detections[0][2:])
