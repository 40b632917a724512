"""Line counts of the crowd clip by Ultralytics' own tracking, as a reference for the daemon's counters.

    .venv/bin/python benchmarks/line_reference.py [--clip ../shared/samples/crowd-480p.mp4]
        [--model ../shared/models/yolov8n.pt] [--line 0.02,0.5,0.98,0.5] [--as-daemon]
        [--offline [--precision fp32] [--no-weak-boxes] [--no-track-boxes]]
        [--out benchmarks/results/line-reference.json]  # -as-daemon.json, -offline.json

1. Every frame of one pass of the clip (decoded by PyAV, as the daemon's readers do) goes through
   `model.track(frame, persist=True, tracker="bytetrack.yaml", classes=[0])` on the CPU (torch
   fp32), with Ultralytics' defaults otherwise (imgsz 640, conf 0.1: `track` lowers it so
   ByteTrack's second association gets the weak boxes; NMS IoU 0.7; match_thresh 0.8, track_buffer
   30 frames). The boxes are what `model.track` reports: each track's Kalman state after its match,
   not the detection's own box (the daemon places tracks by that box too).
2. A crossing check written here, sharing no code with vistream (not `vistream.events.geometry`),
   with the semantics of docs/events.md: the point of a box is its **bottom-centre** (where a person
   stands), normalised by the frame's width and height; a crossing is a track's point moving from
   one side of the segment p1 -> p2 to the other between two of its positions, through the segment
   (not its extension); a point exactly on the line is no side, the track's last sided point is
   kept; `in` is from the left of p1 -> p2 to its right as seen on the picture (y down), so for the
   default line across the middle, drawn left to right, `in` is walking down the picture.
3. It prints the counts per direction, and also the crossings the first 0.5 s of a second pass
   would add with the tracker kept (a file camera loops at once, so a counter read just after the
   first pass may hold some of them; tests/integration/test_line_reference.py pads the clip with
   black frames for that reason), and writes the JSON with the machine it ran on.

`--as-daemon` runs the same with the daemon's detection and tracker settings (NMS at conf 0.1 and
IoU 0.45, match_thresh 0.9, track_buffer 2 s = 60 frames at 30 fps; vistream/events/tracking.py), to
tell a difference of settings from a difference of counting. `--offline` counts with the daemon's
own parts instead (`daemon_offline`: its detector, tracker and event engine on every frame, without
processes, so without dropped frames); `--no-weak-boxes` and `--no-track-boxes` undo the two changes
of issue 18.

On the crowd clip with the default line (Xeon with AMX, 2 cores, Ultralytics 8.4.190, OpenVINO
2026.4.1): in 14, out 13; `--as-daemon` in 13, out 12; `--offline` in 13, out 12 (bf16 and fp32),
11/10 at bf16 and 12/11 at fp32 with `--no-weak-boxes --no-track-boxes`, the daemon before issue 18.
benchmarks/README.md has the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
# Run as a script, this folder is first on sys.path, and its triton.py would shadow the `triton` torch
# imports: nothing of it is needed here.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
SHARED = REPO.parent / "shared"
CLIP = SHARED / "samples" / "crowd-480p.mp4"
MODEL = SHARED / "models" / "yolov8n.pt"
RESULTS = REPO / "benchmarks" / "results"
MIDLINE = ((0.02, 0.5), (0.98, 0.5))  # across the plaza, as in tests/integration/test_alerts.py
PERSON = 0
CUT_FRAMES = 15  # 0.5 s of a second pass at 30 fps

XY = tuple[float, float]
# The daemon's detection and ByteTrack settings (vistream ModelConfig defaults, TrackerSettings).
DAEMON_DETECT = {"conf": 0.1, "iou": 0.45}  # NMS at ByteTrack's low threshold (model.conf 0.25)
DAEMON_TRACKER = {"match_thresh": 0.9, "track_buffer": 60}


def side(p1: XY, p2: XY, point: XY) -> int:
    """+1 right of p1 -> p2 as seen on the picture (y down), -1 left, 0 on the line."""
    cross = float((p2[0] - p1[0]) * (point[1] - p1[1]) - (p2[1] - p1[1]) * (point[0] - p1[0]))
    return (cross > 0) - (cross < 0)


def through_segment(p1: XY, p2: XY, a: XY, b: XY) -> bool:
    """Does the move a -> b (a and b on opposite sides of the line) meet the closed segment p1 p2?

    It does when p1 and p2 are not strictly on the same side of the line through a and b.
    """
    return side(a, b, p1) * side(a, b, p2) <= 0


@dataclass
class Crossings:
    """Crossings of one line: the last sided point of each track, and the count per direction."""

    p1: XY
    p2: XY
    last: dict[int, XY] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"in": 0, "out": 0})

    def update(self, track: int, point: XY) -> str | None:
        now = side(self.p1, self.p2, point)
        if now == 0:
            return None  # on the line: where it came from still counts
        before = self.last.get(track)
        self.last[track] = point
        if before is None or side(self.p1, self.p2, before) == now:
            return None
        if not through_segment(self.p1, self.p2, before, point):
            return None
        direction = "in" if now > 0 else "out"
        self.counts[direction] += 1
        return direction


def frames(clip: Path) -> Iterator[np.ndarray]:
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="bgr24")


def tracker_yaml(directory: Path, as_daemon: bool) -> str:
    """Ultralytics' bytetrack.yaml, or a copy with the daemon's ByteTrack settings."""
    if not as_daemon:
        return "bytetrack.yaml"
    from ultralytics.utils import ROOT

    settings = yaml.safe_load((ROOT / "cfg" / "trackers" / "bytetrack.yaml").read_text())
    path = directory / "bytetrack-vistream.yaml"
    path.write_text(yaml.safe_dump(settings | DAEMON_TRACKER))
    return str(path)


def reference(
    clip: Path = CLIP,
    model_path: Path = MODEL,
    line: tuple[XY, XY] = MIDLINE,
    as_daemon: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """Counts of one pass of `clip` per direction, and what 0.5 s of a second pass adds."""
    from ultralytics import YOLO

    model = YOLO(str(model_path))
    crossings = Crossings(*line)
    crossed: list[tuple[int, str]] = []  # (frame index, direction) of every crossing
    clip_frames = list(frames(clip))
    with tempfile.TemporaryDirectory() as tmp:
        tracker = tracker_yaml(Path(tmp), as_daemon)
        kwargs: dict[str, Any] = {"persist": True, "tracker": tracker, "classes": [PERSON], "device": device}
        kwargs |= {"verbose": False} | (DAEMON_DETECT if as_daemon else {})
        started = time.monotonic()
        for index, image in enumerate([*clip_frames, *clip_frames[:CUT_FRAMES]]):
            tracked: Any = model.track(image, **kwargs)  # one frame in, a list of one Results out
            result = tracked[0]
            height, width = result.orig_shape
            boxes = result.boxes  # a track's box as Ultralytics reports it: its Kalman state, matched
            if boxes.id is None:
                continue
            for track, (x1, _, x2, y2) in zip(boxes.id.int().tolist(), boxes.xyxy.tolist(), strict=True):
                direction = crossings.update(track, ((x1 + x2) / 2 / width, y2 / height))
                if direction is not None:
                    crossed.append((index, direction))
        seconds = time.monotonic() - started
    n = len(clip_frames)
    return {
        "clip": clip.name,
        "frames": n,
        "model": model_path.name,
        "line": [list(p) for p in line],
        "point": "bottom-centre",
        "settings": "vistream's (conf 0.1, iou 0.45, match_thresh 0.9, track_buffer 60)"
        if as_daemon
        else "Ultralytics' track defaults (conf 0.1, iou 0.7, bytetrack.yaml)",
        "counts": {d: sum(1 for i, c in crossed if c == d and i < n) for d in ("in", "out")},
        "second_pass_first_0.5s": {d: sum(1 for i, c in crossed if c == d and i >= n) for d in ("in", "out")},
        "crossing_frames": {d: [i for i, c in crossed if c == d and i < n] for d in ("in", "out")},
        "seconds": round(seconds, 1),
    }


def daemon_offline(
    clip: Path = CLIP,
    model_path: Path = MODEL,
    line: tuple[XY, XY] = MIDLINE,
    precision: str = "auto",
    weak_boxes: bool = True,
    track_boxes: bool = True,
) -> dict[str, Any]:
    """The daemon's counts of one pass of `clip` with every frame inferred: its detector (the default
    backend, `precision`), tracker and event engine, without processes, rings or MQTT, so without
    dropped frames. `weak_boxes=False` runs NMS at model.conf (the tracker never sees a weaker box),
    `track_boxes=False` places tracks by their detections' boxes: the daemon before issue 18."""
    from vistream.config.models import Config
    from vistream.detector import load_detector
    from vistream.events.engine import EventEngine
    from vistream.events.tracking import CameraTracker, TrackerSettings, reported
    from vistream.scheduler.loop import camera_detections, detector_model
    from vistream.scheduler.messages import FrameResult
    from vistream.scheduler.shape import batch_shape
    from vistream.sources.letterbox import letterbox

    fps = 30
    camera = {
        "name": "crowd",
        "url": str(clip),
        "detect_fps": fps,
        "lines": {"midline": [list(p) for p in line]},
    }
    cfg = Config.model_validate(
        {"model": {"path": str(model_path), "device": "cpu", "precision": precision, "classes": ["person"]},
        "cameras": [camera]}
    )  # fmt: skip
    conf = cfg.model.conf
    detector = load_detector(detector_model(cfg.model) if weak_boxes else cfg.model, 1)
    tracker = CameraTracker(fps, TrackerSettings().for_conf(conf))
    engine = EventEngine(cfg, detector.names)
    started = time.monotonic()
    n = 0
    with av.open(str(clip)) as container:
        for n, frame in enumerate(container.decode(video=0), 1):
            if n == 1 and detector.fixed_input is None:  # the batch shape the scheduler would fit
                detector.reshape(*batch_shape([(frame.width, frame.height)], cfg.model.imgsz))
                detector.warmup()
            buf = detector.input_buffer[0]
            box = letterbox(frame.width, frame.height, buf.shape[1], buf.shape[0])
            buf[...] = 114
            box.inner(buf)[...] = frame.reformat(box.new_w, box.new_h, format="rgb24").to_ndarray()
            meta: Any = SimpleNamespace(
                scale=box.scale, pad_x=box.left, pad_y=box.top, width=frame.width, height=frame.height
            )
            found = camera_detections(meta, detector.infer(1)[0])
            t = n / fps
            ids = tracker.update(found, t)
            keep = reported(found, ids, conf)
            result = FrameResult(
                "crowd", n, t, t, frame.width, frame.height, [found[i] for i in keep],
                track_ids=tuple(ids[i] for i in keep), tracker=1,
                track_boxes=tuple(tracker.boxes[i] for i in keep) if track_boxes else None,
            )  # fmt: skip
            engine.process(result)
    seconds = time.monotonic() - started
    backend, runs_at = detector.backend, detector.precision
    detector.close()
    counts = {d: engine.counters[("crowd", "midline", d)] for d in ("in", "out")}
    return {
        "clip": clip.name,
        "frames": n,
        "model": model_path.name,
        "line": [list(p) for p in line],
        "settings": f"vistream offline, {backend} {runs_at}, weak boxes {'on' if weak_boxes else 'off'}, "
        f"track boxes {'on' if track_boxes else 'off'}",
        "counts": counts,
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clip", type=Path, default=CLIP)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--line", default=",".join(str(v) for p in MIDLINE for v in p), help="x1,y1,x2,y2")
    parser.add_argument(
        "--as-daemon", action="store_true", help="the daemon's detection and tracker settings"
    )
    parser.add_argument("--device", default="cpu")
    offline = parser.add_argument_group("--offline: the daemon's own detector, tracker and engine")
    offline.add_argument("--offline", action="store_true", help="count with vistream, every frame")
    offline.add_argument("--precision", default="auto", help="model.precision (auto: bf16 on AMX)")
    offline.add_argument("--no-weak-boxes", action="store_true", help="NMS at model.conf")
    offline.add_argument("--no-track-boxes", action="store_true", help="place tracks by detections")
    parser.add_argument(
        "--out", type=Path, help="default: benchmarks/results/line-reference[-as-daemon|-offline].json"
    )
    args = parser.parse_args(argv)
    kind = "-offline" if args.offline else "-as-daemon" if args.as_daemon else ""
    out = args.out or RESULTS / f"line-reference{kind}.json"
    x1, y1, x2, y2 = (float(v) for v in args.line.split(","))
    line = ((x1, y1), (x2, y2))
    from vistream.bench.measure import machine_info

    if args.offline:
        result = daemon_offline(
            args.clip, args.model, line, args.precision, not args.no_weak_boxes, not args.no_track_boxes
        )
    else:
        result = reference(args.clip, args.model, line, args.as_daemon, args.device)
    print(f"{result['clip']}, {result['frames']} frames, line {result['line']}, {result['settings']}")
    for direction, count in result["counts"].items():
        extra = result.get("second_pass_first_0.5s", {}).get(direction)
        print(
            f"  {direction:>3}: {count} crossings"
            + (f" (0.5 s of a second pass adds {extra})" * (extra is not None))
        )
    print(f"  {result['seconds']} s on {machine_info()['cpu_model']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(), **result}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
