"""One ByteTrack tracker per camera (Ultralytics' `BYTETracker`), fed with irregular frame times.

ByteTrack counts time in frames: its Kalman filter moves a box by one velocity step per update and a
lost track is removed after `track_buffer` updates. Our frames arrive at the camera's `detect_fps`
when all is well, and with gaps when the scheduler sheds load. So each update first advances the
tracker by the number of nominal intervals (1 / detect_fps) that really passed since the previous
inferred frame: k Kalman predict steps instead of one, and the frame counter moves on by k, so a
track is kept for `track_buffer_s` seconds of real time whatever got dropped in between.

`match_thresh` is 0.9 instead of Ultralytics' 0.8: at a low `detect_fps` a walking person moves a
good part of their width between frames and the overlap with the prediction shrinks. At 0.8 the
walking person of the street sample clip lost their track at 2 fps (most detections got no id, the
others two different ones); at 0.9 they keep one id at 2 and at 15 fps, also with frames dropped
(tests/integration/test_tracking.py, which also fails when the time steps are ignored).

ByteTrack's point is to use the weak boxes too: a detection below `track_high_thresh` cannot start
or win a track, but in a second association it can continue a confirmed track that no confident
box matched (a person half hidden for a few frames). So the detector of a tracked camera runs NMS
at `nms_conf` (model.conf, or `track_low_thresh` when that is lower, as Ultralytics' `model.track`
lowers its conf to 0.1) and the tracker gets every box; `reported` then keeps what the daemon
shows: the boxes at model.conf or above, and the weaker ones that continue a confirmed track, as
Ultralytics' track output does. Tracks start only from boxes at model.conf or above
(`TrackerSettings.for_conf`), so a reported track never consists of weak boxes alone.

Each matched detection also gets its track's box (`CameraTracker.boxes`): the Kalman filter's
estimate after the match, what `model.track` reports as the box. Zones and lines place a track by
it: the detection's own box jitters from frame to frame, and a person standing on a line crossed it
back and forth by the jitter of their feet.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import SimpleNamespace

import numpy as np

from vistream.detector.ultralytics import ultralytics_import
from vistream.scheduler.messages import Detection, TrackBox

with ultralytics_import():
    from ultralytics.trackers.byte_tracker import BYTETracker


@dataclass(frozen=True)
class TrackerSettings:
    """ByteTrack's knobs; the thresholds are Ultralytics' bytetrack.yaml defaults but match_thresh."""

    track_high_thresh: float = 0.25  # first association with detections at least this confident
    track_low_thresh: float = 0.1  # second association with the ones between the two
    new_track_thresh: float = 0.25  # a detection nothing matched starts a track from this confidence
    match_thresh: float = 0.9  # largest accepted (1 - IoU * score) cost; see the module docstring
    fuse_score: bool = True
    track_buffer_s: float = 2.0  # a lost track can be found again for this long

    def for_conf(self, conf: float) -> TrackerSettings:
        """These settings for a camera that reports boxes from confidence `conf` (model.conf) up:
        a new track starts only from a box that is reported anyway."""
        return replace(self, new_track_thresh=max(self.new_track_thresh, conf))


def nms_conf(conf: float, settings: TrackerSettings | None = None) -> float:
    """The confidence a tracked camera's detector keeps boxes from: model.conf, or ByteTrack's low
    threshold when that is lower, so the tracker's second association gets the weak boxes."""
    return min(conf, (settings or TrackerSettings()).track_low_thresh)


def reported(detections: Sequence[Detection], ids: Sequence[int | None], conf: float) -> list[int]:
    """Indices of the detections the daemon reports: those at `conf` (model.conf) or above, and the
    weaker ones that continue a confirmed track (`ids`, from `CameraTracker.update`)."""
    pairs = enumerate(zip(detections, ids, strict=True))
    return [i for i, (detection, track) in pairs if detection[1] >= conf or track is not None]


class _Detections:
    """The view of one frame's detections that `BYTETracker.update` reads.

    It needs numpy `conf`, `cls`, `xywh` (centre, size), `len()` and boolean-mask indexing
    (what `Boxes.cpu().numpy()` offers).
    """

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows  # N x 6: class id, confidence, x1, y1, x2, y2

    @classmethod
    def of(cls, detections: Sequence[Detection]) -> _Detections:
        return cls(np.asarray(detections, dtype=np.float64).reshape(-1, 6))

    @property
    def cls(self) -> np.ndarray:
        return self.rows[:, 0]

    @property
    def conf(self) -> np.ndarray:
        return self.rows[:, 1]

    @property
    def xywh(self) -> np.ndarray:
        x1, y1, x2, y2 = self.rows[:, 2], self.rows[:, 3], self.rows[:, 4], self.rows[:, 5]
        return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=1)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, mask: np.ndarray) -> _Detections:
        return _Detections(self.rows[mask])


class _GapAwareByteTracker(BYTETracker):
    """BYTETracker whose one prediction per update covers `steps` nominal frame intervals."""

    steps = 1

    def multi_predict(self, tracks: list) -> None:
        for _ in range(self.steps):
            super().multi_predict(tracks)


class CameraTracker:
    """Track ids for the detections of one camera's frames, which must come in capture order."""

    def __init__(self, detect_fps: float, settings: TrackerSettings | None = None) -> None:
        settings = settings or TrackerSettings()
        self.detect_fps = detect_fps
        self.track_buffer = max(1, math.ceil(settings.track_buffer_s * detect_fps))
        self._tracker = _GapAwareByteTracker(
            SimpleNamespace(
                track_high_thresh=settings.track_high_thresh,
                track_low_thresh=settings.track_low_thresh,
                new_track_thresh=settings.new_track_thresh,
                track_buffer=self.track_buffer,
                match_thresh=settings.match_thresh,
                fuse_score=settings.fuse_score,
            )
        )
        # Which tracker numbered a track id: each new tracker numbers its tracks from 1 again. The
        # monotonic clock is shared by every process of the box, so a tracker made by a restarted
        # scheduler never repeats a generation the main process has seen.
        self.generation = time.monotonic_ns()
        self._last_mono: float | None = None
        self.removed: list[int] = []  # ids of the tracks the last update gave up (they never return)
        self.boxes: list[TrackBox | None] = []  # the last update's track box of each detection
        self._removed_before: set[int] = set()

    def steps_since_last(self, now_mono: float) -> int:
        """Nominal frame intervals since the previous update (at least 1)."""
        if self._last_mono is None:
            return 1
        return max(1, round((now_mono - self._last_mono) * self.detect_fps))

    def update(self, detections: Sequence[Detection], now_mono: float) -> list[int | None]:
        """The track id of each detection, in order; None for a detection no confirmed track holds.
        `boxes` has the box of each one's track then (None where the id is).

        A new object gets its id on the second frame it is seen in (ByteTrack confirms a track
        before reporting it), except on a camera's very first frame.
        """
        steps = self.steps_since_last(now_mono)
        self._last_mono = now_mono
        tracker = self._tracker
        tracker.frame_id += steps - 1  # update() adds the last one
        # Beyond the buffer every lost track is removed anyway: predicting further is wasted work.
        tracker.steps = min(steps, self.track_buffer + 1)
        rows = tracker.update(_Detections.of(detections))
        # A removed track stays in the lost pool for one more update and is removed again then.
        gone = {int(t.track_id) for t in getattr(tracker, "removed_stracks_frame", [])}
        self.removed, self._removed_before = sorted(gone - self._removed_before), gone
        ids: list[int | None] = [None] * len(detections)
        self.boxes = [None] * len(detections)
        for row in rows:  # x1, y1, x2, y2 (the track's Kalman state), id, score, class, detection index
            ids[int(row[7])] = int(row[4])
            self.boxes[int(row[7])] = (float(row[0]), float(row[1]), float(row[2]), float(row[3]))
        return ids
