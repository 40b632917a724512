"""ByteTrack per camera on the real street clip and the real model, at a low and a high detect_fps.

Run it under the shared lock:
`flock /tmp/vistream-itest.lock .venv/bin/pytest tests/integration/test_tracking.py`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import pytest

from vistream.events.geometry import Box
from vistream.events.rules import iou
from vistream.events.tracking import CameraTracker
from vistream.scheduler.messages import Detection

pytestmark = pytest.mark.integration

PERSON = 0


@dataclass(frozen=True)
class Frame:
    index: int  # frame number in the clip (30 fps)
    time: float  # presentation time, seconds: the capture time the tracker sees
    detections: list[Detection]


@pytest.fixture(scope="module")
def street(samples_dir: Path, model_path: Path) -> dict[int, Frame]:
    """Persons found by YOLOv8n (CPU, 640) in the street clip's frames kept at 15 and at 2 fps.

    The clip is 30 fps: every 2nd frame makes 15 fps, every 15th makes 2 fps (161 frames in all).
    """
    from ultralytics import YOLO

    model = YOLO(str(model_path))
    frames: dict[int, Frame] = {}
    with av.open(str(samples_dir / "street-1080p.mp4")) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % 2 and index % 15:
                continue
            image = frame.to_ndarray(format="bgr24")
            result = model.predict(image, imgsz=640, classes=[PERSON], device="cpu", verbose=False)[0]
            boxes = result.boxes.cpu().numpy()
            detections: list[Detection] = [
                (int(c), float(p), float(x1), float(y1), float(x2), float(y2))
                for c, p, (x1, y1, x2, y2) in zip(boxes.cls, boxes.conf, boxes.xyxy, strict=True)
            ]
            frames[index] = Frame(index, float(frame.time or index / 30), detections)
    return frames


def track(frames: list[Frame], detect_fps: float) -> dict[tuple[int, int], int | None]:
    """(frame index, detection index) -> track id, feeding one CameraTracker the real frame times."""
    tracker = CameraTracker(detect_fps)
    ids: dict[tuple[int, int], int | None] = {}
    for frame in frames:
        for j, track_id in enumerate(tracker.update(frame.detections, frame.time)):
            ids[(frame.index, j)] = track_id
    return ids


def longest_walker(street: dict[int, Frame]) -> dict[int, Box]:
    """The person tracked longest at 15 fps who also walks: frame index -> their box.

    At 15 fps a person moves a small fraction of their width between frames, so one id over most of
    the clip is what the tracker's own output shows when it works; a person who moved several box
    widths makes it a walk, not someone standing at a shop window.
    """
    frames = [street[i] for i in sorted(street) if i % 2 == 0]
    ids = track(frames, 15)
    paths: dict[int, dict[int, Box]] = {}
    for (index, j), track_id in ids.items():
        if track_id is not None:
            paths.setdefault(track_id, {})[index] = street[index].detections[j][2:]
    walkers = {tid: p for tid, p in paths.items() if _travel(p) > 3 * _width(p)}
    assert walkers, "nobody walks through the street clip at 15 fps?"
    return max(walkers.values(), key=len)


def _width(path: dict[int, Box]) -> float:
    return sum(b[2] - b[0] for b in path.values()) / len(path)


def _travel(path: dict[int, Box]) -> float:
    first, last = path[min(path)], path[max(path)]
    return float(((first[0] - last[0]) ** 2 + (first[3] - last[3]) ** 2) ** 0.5)


def _reference(path: dict[int, Box], index: int) -> Box | None:
    """The walker's box in frame `index`: seen at 15 fps, or between its 15 fps neighbours."""
    if index in path:
        return path[index]
    before, after = path.get(index - 1), path.get(index + 1)
    if before is None or after is None:
        return None
    x1, y1, x2, y2 = ((a + b) / 2 for a, b in zip(before, after, strict=True))
    return (x1, y1, x2, y2)


@pytest.mark.parametrize(
    ("name", "detect_fps", "keep"),
    [
        ("2 fps", 2, lambda i: i % 15 == 0),
        ("15 fps", 15, lambda i: i % 2 == 0),
        # Load shedding: 40 % of the 15 fps frames dropped at random, so gaps of 2-4 intervals.
        ("15 fps, 40% dropped", 15, lambda i: i % 2 == 0 and random.Random(i).random() > 0.4),
        # Two 1 s outages while people walk: the tracker must predict 15 intervals ahead, not one
        # (with one step per update the walker changes id at each outage).
        ("15 fps, two 1 s gaps", 15, lambda i: i % 2 == 0 and not (100 <= i < 130 or 200 <= i < 230)),
    ],
    ids=["2fps", "15fps", "15fps-dropped", "15fps-gaps"],
)
def test_a_walking_person_keeps_one_track_id(
    street: dict[int, Frame], name: str, detect_fps: float, keep: Callable[[int], bool]
) -> None:
    """A person walking through the street clip keeps one track id at detect_fps 2 as well as 15.

    1. The person: the longest-lived track at 15 fps among those that move over 3 box widths
       (it must span most of the clip: a track that broke up would not).
    2. The clip's frames kept at `detect_fps` (or 15 fps with frames dropped, as under load) go
       through a fresh CameraTracker with their real times.
    3. In every kept frame where the person is detected (a detection overlapping their 15 fps box,
       interpolated between 15 fps frames for the 2 fps ones, with IoU >= 0.5) the detection's
       track id is the same one; at most 10 % of those detections may lack an id (ByteTrack reports
       none for a detection in a frame where the track was not matched) and none may carry another.
    """
    walker = longest_walker(street)
    kept = sorted(street)
    assert len(walker) >= 0.8 * len([i for i in kept if i % 2 == 0]), "the walker's 15 fps track broke up"
    frames = [street[i] for i in kept if keep(i)]
    ids = track(frames, detect_fps)
    seen: list[int | None] = []
    for frame in frames:
        ref = _reference(walker, frame.index)
        if ref is None or not frame.detections:
            continue
        overlaps = [iou(d[2:], ref) for d in frame.detections]
        best = max(range(len(overlaps)), key=overlaps.__getitem__)
        if overlaps[best] >= 0.5:
            seen.append(ids[(frame.index, best)])
    assigned = [tid for tid in seen if tid is not None]
    assert len(seen) >= 0.8 * len([f for f in frames if _reference(walker, f.index)]), name
    assert len(set(assigned)) == 1, f"{name}: the walker's detections carry ids {seen}"
    assert len(assigned) >= 0.9 * len(seen), f"{name}: too many detections without a track: {seen}"
