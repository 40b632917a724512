"""Motion gating: is anything moving on a camera, so that its frame is worth the model's time?

The reader scores each sampled frame on a small blurred grey copy (160 px wide by default): the
absolute difference between the frame and a running-average background (cv2.accumulateWeighted),
thresholded per pixel (`pixel_threshold`), gives the changed pixels; the score is the fraction of
the frame's unmasked area they cover, written into the frame's ring slot. The scheduler skips a
frame whose score is under `min_area` (see `vistream.scheduler.policy.MotionGate`), unless a track
moved lately on that camera (and some pixels changed) or `keepalive_s` passed since its last
inference.

The main process tells the scheduler about moving tracks (`TrackActivity`): a slow or distant
walker may change fewer pixels than `min_area`, and a tracked object must not lose its track to a
gap in the frames. A still object (a parked car, a person standing) does not keep the model busy:
its track is kept alive by the frames the scheduler repeats to the event engine instead.

A score of -1 means "not computed" (gating off): such frames are never skipped.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

if TYPE_CHECKING:
    import av

    from vistream.config.models import MotionConfig

NOT_COMPUTED = -1.0
BLUR = (5, 5)  # takes the compression noise of the small copy out of the difference


def small_size(width: int, height: int, target_width: int) -> tuple[int, int]:
    """The motion copy of a width x height frame: `target_width` wide (never upscaled), even sides."""
    w = min(width, target_width)
    h = max(2, round(height * w / max(width, 1)))
    return max(2, w // 2 * 2), h // 2 * 2


class MotionDetector:
    """The changed-area fraction of each grey frame against a running-average background.

    `mask` polygons (normalised 0..1 like zones) are excluded: changes inside them never count.
    The first frame (and the first after a size change) scores 1.0: there is no background yet,
    and a camera that (re)connects should be looked at.
    """

    def __init__(
        self,
        pixel_threshold: float = 25,
        min_area: float = 0.001,
        alpha: float = 0.2,
        mask: Sequence[Sequence[tuple[float, float]]] = (),
    ) -> None:
        self.pixel_threshold = pixel_threshold
        self.min_area = min_area
        self.alpha = alpha
        self.mask_polygons = [list(p) for p in mask]
        self._bg: np.ndarray | None = None
        self._include: np.ndarray | None = None  # True where changes count
        self._included = 0

    def _reset(self, grey: np.ndarray) -> None:
        h, w = grey.shape
        excluded = np.zeros((h, w), np.uint8)
        for polygon in self.mask_polygons:
            pts = np.array([[round(x * (w - 1)), round(y * (h - 1))] for x, y in polygon], np.int32)
            cv2.fillPoly(excluded, [pts], 1)
        self._include = excluded == 0
        self._included = int(self._include.sum())
        self._bg = grey.astype(np.float32)

    def score(self, grey: np.ndarray) -> float:
        """Score one (h, w) uint8 grey frame and learn it into the background."""
        blurred = cv2.GaussianBlur(grey, BLUR, 0)
        if self._bg is None or self._bg.shape != blurred.shape:
            self._reset(blurred)
            return 1.0
        assert self._include is not None
        diff = cv2.absdiff(blurred.astype(np.float32), self._bg)
        changed = np.count_nonzero((diff > self.pixel_threshold) & self._include)
        cv2.accumulateWeighted(blurred, self._bg, self.alpha)
        return changed / self._included if self._included else 0.0

    def moving(self, score: float) -> bool:
        return score < 0 or score >= self.min_area


class FrameMotion:
    """The reader's side: a decoded frame to its motion score, on a swscale grey copy.

    Scaling only the luma plane to 160 px costs far less than the model's RGB pass; its
    swscale context is kept from frame to frame like the reader's others.
    """

    def __init__(self, cfg: MotionConfig) -> None:
        self.width = cfg.width
        self.detector = MotionDetector(cfg.pixel_threshold, cfg.min_area, cfg.alpha, cfg.mask)
        self._scaler = VideoReformatter()

    def score(self, frame: av.VideoFrame) -> float:
        w, h = small_size(frame.width, frame.height, self.width)
        grey = self._scaler.reformat(frame, width=w, height=h, format="gray", threads=1)
        plane = grey.planes[0]
        rows = np.frombuffer(memoryview(plane), np.uint8, count=h * plane.line_size)
        rows = rows.reshape(h, plane.line_size)
        return self.detector.score(rows[:, :w])


@dataclass(frozen=True)
class _Anchor:
    """Where a track last counted as moving, and when it was last seen."""

    x: float
    y: float
    seen: float


@dataclass
class TrackActivity:
    """Which cameras have a track that moved lately, from the results the main process handles.

    `update` returns the monotonic time until which the camera counts as active (the scheduler then
    infers its frames whatever their motion score), or None when no known track moved by more than
    `min_move` (a fraction of the frame's width or height) from where it last counted as moving, so
    a slow walker adds up. Positions are bottom-centres of boxes in camera pixels, as zones use them.

    A track seen for the first time does not count: on a still scene the model's detections of
    small or half-hidden objects come and go from frame to frame (ByteTrack then reports the track
    again, or a new one), and that must not keep the model busy. Something that really comes into
    view changes pixels (the motion score), and moves on from where it was first seen. A track not
    seen for `forget_s` is forgotten.
    """

    hold_s: float = 2.0
    min_move: float = 0.01
    forget_s: float = 10.0
    _tracks: dict[str, dict[Hashable, _Anchor]] = field(default_factory=dict)

    def update(
        self,
        camera: str,
        boxes: Sequence[tuple[Hashable | None, tuple[float, float, float, float]]],
        width: int,
        height: int,
        now_mono: float,
    ) -> float | None:
        """`boxes`: (track key or None, (x1, y1, x2, y2)) of one inferred frame's objects. The key
        names the tracker too (its generation and the id): a rebuilt tracker numbers from 1 again,
        and its track 3 is not the old track 3 having moved."""
        anchors = self._tracks.setdefault(camera, {})
        moved = False
        for track_id, (x1, _y1, x2, y2) in boxes:
            if track_id is None:
                continue
            x, y = (x1 + x2) / 2, y2
            before = anchors.get(track_id)
            if before is not None and (
                abs(x - before.x) <= self.min_move * width and abs(y - before.y) <= self.min_move * height
            ):
                anchors[track_id] = _Anchor(before.x, before.y, now_mono)
                continue
            moved = moved or before is not None
            anchors[track_id] = _Anchor(x, y, now_mono)
        for track_id in [t for t, a in anchors.items() if now_mono - a.seen > self.forget_s]:
            del anchors[track_id]
        return now_mono + self.hold_s if moved else None

    def forget(self, camera: str) -> None:
        self._tracks.pop(camera, None)
