"""The daemon's line counters on the crowd clip against Ultralytics' own tracking plus a crossing check
of its own (benchmarks/line_reference.py).

Run it under the shared lock:
`flock /tmp/vistream-itest.lock .venv/bin/pytest tests/integration/test_line_reference.py`.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from types import ModuleType
from typing import Any

import av
import numpy as np
import pytest
from support.daemon import DaemonProcess, base_config, metric_sum
from support.mosquitto import Mosquitto, Subscriber
from support.procs import free_port

from vistream.ops.stats import DROP_REASONS

pytestmark = [pytest.mark.integration, pytest.mark.serial]

REPO = Path(__file__).resolve().parents[2]
CLIP_FRAMES = 409  # crowd-480p.mp4, 30 fps
TAIL = 90  # black frames after the clip: 3 s, more than ByteTrack's 2 s buffer
LOOP = CLIP_FRAMES + TAIL
READ_AT = CLIP_FRAMES + 60  # 2 s after the last frame: its results are in, the next loop is 1 s away
TOLERANCE = 0.10


def line_reference() -> ModuleType:
    """benchmarks/line_reference.py as a module (benchmarks/ is no package, and its triton.py must not
    shadow the real one on sys.path)."""
    spec = importlib.util.spec_from_file_location("line_reference", REPO / "benchmarks" / "line_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference(samples_dir: Path, model_path: Path) -> dict[str, Any]:
    """Ultralytics' counts of one pass of the clip (about 35 s of CPU), before the daemon starts."""
    return dict(line_reference().reference(samples_dir / "crowd-480p.mp4", model_path))


def padded_clip(clip: Path, out: Path, fps: int = 30) -> Path:
    """The clip, losslessly re-encoded (the same decoded pixels), then TAIL black frames.

    A file camera loops at once, so a counter read "after the clip" would hold crossings of the next
    loop's first frames, or of a track that jumps across the line at the cut. In the black tail there
    are no detections: the counters stand still, and every track is given up before the next loop,
    which starts as fresh as the first one did.
    """
    with av.open(str(clip)) as src:
        frames = [f.to_ndarray(format="yuv420p") for f in src.decode(video=0)]
    assert len(frames) == CLIP_FRAMES
    black = np.full_like(frames[0], 128)
    black[: frames[0].shape[0] * 2 // 3] = 16  # Y plane black, chroma neutral
    with av.open(str(out), "w") as dst:
        stream = dst.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        stream.options = {"qp": "0", "preset": "ultrafast"}  # lossless
        for arr in [*frames, *[black] * TAIL]:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="yuv420p")):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    with av.open(str(out)) as back:
        again = [f.to_ndarray(format="yuv420p") for f in islice(back.decode(video=0), CLIP_FRAMES)]
    assert all(np.array_equal(a, b) for a, b in zip(frames, again, strict=True)), "not lossless"
    return out


def frame_counts(daemon: DaemonProcess) -> dict[str, float]:
    page = daemon.metrics()
    names = ("decoded", "sampled", "inferred", "dropped", "deferred", "skipped")
    figures = {n: metric_sum(page, f"vistream_frames_{n}_total", camera="crowd") for n in names}
    for reason in DROP_REASONS:
        figures[f"dropped_{reason}"] = metric_sum(
            page, "vistream_frames_dropped_total", camera="crowd", reason=reason
        )
    return figures


def own_count(sub: Subscriber, prefix: str, seqs: range, line: Any) -> dict[str, Any]:
    """The reference's crossing check run on the daemon's own tracks (its detections messages) of the
    frames `seqs`, placed by the detections' boxes (the messages show those; the counters place a
    track by its Kalman box): the difference from the counters is what the track boxes change. Not
    exact: the messages round boxes to 0.1 px, and a frame whose message is missing (QoS 0) is one
    position less; `frames` says how many came."""
    crossings = line_reference().Crossings(*line)
    docs = [m.json() for m in sub.messages if m.topic == f"{prefix}/crowd/detections"]
    docs = sorted((d for d in docs if d["seq"] in seqs), key=lambda d: d["seq"])
    crossed = []
    for doc in docs:
        for obj in doc["objects"]:
            if obj["track_id"] is not None:
                x1, _, x2, y2 = obj["box"]
                point = ((x1 + x2) / 2 / doc["width"], y2 / doc["height"])
                if direction := crossings.update(obj["track_id"], point):
                    crossed.append((doc["seq"] - seqs.start, direction))
    return {**crossings.counts, "frames": f"{len(docs)} of {len(seqs)}", "at": crossed}


@dataclass(frozen=True)
class Reading:
    """The counters, the newest frame published and the frame figures, 2 s into a black tail."""

    counts: dict[str, int]
    seq: int
    figures: dict[str, float]


def read_in_tail(daemon: DaemonProcess, sub: Subscriber, prefix: str, decoded: int) -> Reading:
    """What was published once the reader decoded `decoded` frames; fails when the next loop had begun."""
    deadline = time.monotonic() + 120
    while (figures := frame_counts(daemon))["decoded"] < decoded:
        assert time.monotonic() < deadline, f"the reader decoded {figures['decoded']} frames, not {decoded}"
        time.sleep(0.05)
    messages = sub.messages
    counts = {}
    for direction in ("in", "out"):
        topic = f"{prefix}/crowd/midline/{direction}/count"
        payloads = [m.payload for m in messages if m.topic == topic]
        counts[direction] = int(payloads[-1]) if payloads else 0
    seq = max((m.json()["seq"] for m in messages if m.topic == f"{prefix}/crowd/detections"), default=0)
    late = frame_counts(daemon)["decoded"]
    assert late < (decoded // LOOP + 1) * LOOP, f"read after the next loop began ({late} frames decoded)"
    return Reading(counts, seq, figures)


def run_daemon(
    tmp_path: Path, mosquitto: Mosquitto, model_path: Path, clip: Path, line: Any, fps: int = 30
) -> dict[str, Any]:
    """Counts of the second loop of `clip` (a padded clip) by the daemon at detect_fps `fps`, with the
    reference's check run on its tracks of that loop and its frame figures of that loop."""
    prefix = "ilineref"
    camera = {"name": "crowd", "url": str(clip), "detect_fps": fps, "lines": {"midline": line}}
    cfg = base_config(model_path, mosquitto.port, free_port(), prefix, [camera])
    cfg["model"]["classes"] = ["person"]
    cfg["state_dir"] = str(tmp_path / "state")
    with (
        Subscriber(mosquitto.host, mosquitto.port, f"{prefix}/crowd/#") as sub,
        DaemonProcess(cfg, tmp_path) as daemon,
    ):
        first = read_in_tail(daemon, sub, prefix, READ_AT)
        second = read_in_tail(daemon, sub, prefix, LOOP + READ_AT)
        assert daemon.terminate()[0] == 0
    return {
        "counts": {d: second.counts[d] - first.counts[d] for d in second.counts},
        "first_loop": first.counts,
        "own_check": own_count(sub, prefix, range(first.seq + 1, second.seq + 1), line),
        "frames": {k: v - first.figures[k] for k, v in second.figures.items() if v - first.figures[k]},
    }


@pytest.mark.timeout(420)
def test_line_counts_match_ultralytics_tracking(
    tmp_path: Path, mosquitto: Mosquitto, model_path: Path, samples_dir: Path, reference: dict[str, Any]
) -> None:
    """The daemon counts crossings of a line across the crowd clip's plaza within 10 % of the
    reference, per direction.

    1. The reference (benchmarks/line_reference.py): `model.track` on every frame of one pass of the
       clip (persist=True, bytetrack.yaml, persons, CPU torch fp32, Ultralytics' defaults otherwise)
       and a crossing check of its own with the documented semantics (bottom-centre of the box,
       through the segment, `in` from the left of p1 -> p2 to its right).
    2. The daemon plays the same frames (the clip losslessly re-encoded with 3 s of black after it,
       see `padded_clip`) as a file camera at detect_fps 30, with the line midline; Mosquitto and
       a subscriber record the retained counters.
    3. One pass is the second loop (the first may start while the model loads): the counters 2 s
       into the black tail of the second loop minus those 2 s into the first one's. The frames of
       that loop the daemon inferred, dropped and deferred are reported with the counts.

    Why 10 %: the two sides feed ByteTrack different inputs by design: the daemon runs OpenVINO
    (bf16 on an AMX CPU) with NMS IoU 0.45, match_thresh 0.9 and a 2 s buffer
    (vistream/events/tracking.py), the reference torch fp32, IoU 0.7, match_thresh 0.8 and a 1 s
    buffer. Both give ByteTrack the boxes down to conf 0.1 and place a track by its Kalman box. With a
    few dozen people that may move a crossing or two in a dozen (a track that breaks up or flickers
    on the line); a wrong reference point, a flipped direction, lost frames or crossings counted
    twice move them by far more.

    Ultralytics 8.4.190, OpenVINO 2026.4.1, a 2-core Xeon with AMX: the reference counts in 14,
    out 13, the daemon in 13, out 12 (`own_check`, the same tracks placed by their detections'
    boxes: 11 and 10). Until issue 18 the daemon counted 11 and 10 and this test was an expected
    failure. Measured offline on every frame (`benchmarks/line_reference.py --offline`):

    - The daemon's line logic: none. `own_check`, the reference's crossing check on the daemon's
      tracks placed by their detections' boxes, gives 11 and 10, what `--offline --no-track-boxes`
      counts at bf16.
    - The track's point: the detection's box instead of the Kalman-filtered box `model.track`
      reports cost one crossing per direction at fp32 (12/11 -> 13/12) and two at bf16
      (11/10 -> 13/12). The daemon now places tracks by their Kalman box.
    - conf 0.25 instead of 0.1 (ByteTrack's second association got no box): no crossing on this
      clip, at bf16 and fp32, with either box (13/12 with the Kalman box either way). The daemon
      now runs NMS at 0.1 and reports a weaker box only where it continues a confirmed track.
    - OpenVINO bf16 against fp32 (the precision choice, docs/performance.md): none with the Kalman
      boxes (13/12 both), one per direction with the detections' (11/10 against 12/11).
    - Dropped frames: little at this load. The daemon drops up to 18 % of the frames at 30 fps on 2
      shared cores (overwritten: one camera means batches of one, and decoding shares the cores),
      none offline; with the Kalman boxes offline and daemon agree (13/12). Under a much heavier
      load (other test suites on the same 2 cores, 60 % of the frames dropped) it counted 12 and 11,
      outside 10 %: `frames` in the report says how many were inferred.
    - What is left (14/13 against 13/12) is the reference's other settings: `--as-daemon` runs
      `model.track` with the daemon's.
    """
    started = time.monotonic()
    clip = padded_clip(samples_dir / "crowd-480p.mp4", tmp_path / "crowd-padded.mp4")
    got = run_daemon(tmp_path, mosquitto, model_path, clip, reference["line"])
    want = reference["counts"]
    report = f"reference {want}, daemon {got}; {time.monotonic() - started:.0f} s"
    print(report)
    off = [d for d in ("in", "out") if abs(got["counts"][d] - want[d]) > TOLERANCE * want[d]]
    assert not off, f"{', '.join(off)} off by more than {TOLERANCE:.0%}: {report}"
