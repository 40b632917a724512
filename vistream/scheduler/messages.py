"""What the scheduler process tells the main process, and what it is told.

Small picklable records: frames themselves never travel through queues,
only their identities and the boxes found in them.
"""

from __future__ import annotations

from dataclasses import dataclass

# One detection: class id, confidence, x1, y1, x2, y2 in camera pixels.
Detection = tuple[int, float, float, float, float, float]
# A track's box after it was matched to a detection: x1, y1, x2, y2 in camera pixels.
TrackBox = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class FrameResult:
    camera: str
    seq: int
    captured_at: float  # Unix time, for payloads
    captured_mono: float  # time.monotonic() of the same moment, for durations and the tracker's steps
    width: int
    height: int
    # What the daemon reports: the detections at model.conf or above, and weaker ones that continue
    # a confirmed track (the scheduler's tracker sees every box down to its low threshold).
    detections: list[Detection]
    # Not inferred: motion gating skipped the frame, and these are the camera's last inferred
    # detections, for the event engine only (not published, the frame is not held).
    repeated: bool = False
    # The track id of each detection (None: no confirmed track), from the camera's tracker in the
    # scheduler process, and the tracks it gave up on this frame. None: not tracked there.
    track_ids: tuple[int | None, ...] | None = None
    removed_tracks: tuple[int, ...] = ()
    # The generation of the tracker that numbered them (`CameraTracker.generation`): a tracker made
    # again (a scheduler restart, a new detect_fps) numbers its tracks from 1 again.
    tracker: int = 0
    # The box of each detection's track (None: no confirmed track): ByteTrack's Kalman estimate
    # after the match, which jitters less than the detection's box. Where a track is (zones,
    # lines) is taken from it; the payload shows the detection's box, what the model found.
    # None: not tracked in the scheduler.
    track_boxes: tuple[TrackBox | None, ...] | None = None


@dataclass(frozen=True, slots=True)
class BatchResult:
    frames: list[FrameResult]


@dataclass(frozen=True)
class Ready:
    """The model is loaded and warm."""

    names: dict[int, str]
    device: str
    half: bool
    load_s: float
    backend: str  # the `model.backend` it runs on (what `auto` resolved to)
    precision: str  # what it computes in, as the runtime reports it (`Detector.precision`)


@dataclass(frozen=True)
class Fatal:
    """The scheduler cannot run; the daemon exits with `exit_code`."""

    exit_code: int
    message: str


@dataclass(frozen=True)
class AddCamera:
    """A camera joins (or, already known, changes its rate: its tracker starts over)."""

    name: str
    ring_name: str
    detect_fps: float = 5.0


@dataclass(frozen=True)
class RemoveCamera:
    name: str
