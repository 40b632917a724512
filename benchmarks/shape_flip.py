"""What a camera flipping between portrait and landscape costs the other cameras (issue 20).

Runs the real daemon (torch on CPU unless --backend) on two RTSP cameras at --fps each: `a`, the
street clip (1920x1080), and `b`, 1280x720 frames of the same clip, three times:

1. steady: `b` stays landscape (the reference);
2. flipping: `b` alternates 1280x720 and 720x1280 every 2 s, `batching.reshape_after_s` at its
   default (the shape waits for a new fit to hold: b's portrait frames are letterboxed into it);
3. flipping, refit at once (`reshape_after_s: 0`, the behaviour before): every flip drains the
   batches, reshapes and re-warms the model, and drops the frames made for the old shape.

Prints and writes `a`'s inferred frames per second over --seconds in each, its `reshape` drops, and
the batch shapes seen. With --rounds N the three runs are repeated N times, interleaved (a shared
machine's load changes from one minute to the next), and the median of each is reported; the load
average at each run's end is recorded beside it.

    .venv/bin/python benchmarks/shape_flip.py [--seconds 30] [--fps 5] [--rounds 1]
        [--out benchmarks/results/shape-flip-cpu.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from pipeline import CLIPS, MODEL  # noqa: E402
from support import hostile  # noqa: E402
from support.daemon import DaemonProcess, base_config  # noqa: E402
from support.mosquitto import Mosquitto  # noqa: E402
from support.procs import free_port  # noqa: E402
from support.rtsp_server import RtspServer  # noqa: E402

from vistream.bench.measure import machine_info  # noqa: E402


def run(
    rtsp: RtspServer, broker: Mosquitto, mount: str, hold: float | None, args: argparse.Namespace
) -> dict[str, Any]:
    cams = [
        {"name": "a", "url": rtsp.url("street"), "detect_fps": args.fps},
        {"name": "b", "url": rtsp.url(mount), "detect_fps": args.fps},
    ]
    cfg = base_config(MODEL, broker.port, free_port(), "vsflip", cams)
    cfg["model"]["backend"] = args.backend
    if hold is not None:
        cfg["batching"]["reshape_after_s"] = hold
    with tempfile.TemporaryDirectory() as tmp, DaemonProcess(cfg, Path(tmp)) as daemon:
        deadline = time.monotonic() + 180
        while daemon.metric("vistream_frames_inferred_total", camera="b") < 5:
            if time.monotonic() > deadline or (daemon.proc and daemon.proc.poll() is not None):
                raise SystemExit(f"the daemon did not start:\n{daemon.log[-3000:]}")
            time.sleep(0.5)
        time.sleep(5)  # warm
        inferred = daemon.metric("vistream_frames_inferred_total", camera="a")
        reshape = daemon.metric("vistream_frames_dropped_total", camera="a", reason="reshape")
        shapes, t0 = set(), time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            shapes.add((daemon.metric("vistream_batch_shape", side="height"),
                        daemon.metric("vistream_batch_shape", side="width")))  # fmt: skip
            time.sleep(0.25)
        took = time.monotonic() - t0
        inferred = daemon.metric("vistream_frames_inferred_total", camera="a") - inferred
        reshape = daemon.metric("vistream_frames_dropped_total", camera="a", reason="reshape") - reshape
        out = {
            "load_average_1m": round(os.getloadavg()[0], 2),
            "a_inferred_per_s": round(inferred / took, 2),
            "a_reshape_drops": reshape,
            "batch_shapes_seen": sorted(f"{h:.0f}x{w:.0f}" for h, w in shapes),
        }
        daemon.terminate()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30, help="measuring window of each run")
    ap.add_argument("--fps", type=float, default=5, help="detect_fps of each camera")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the three runs, interleaved")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "shape-flip-cpu.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as clips:
        flip = hostile.alternating_clip(Path(clips) / "flip.mp4", CLIPS["street"])
        steady = hostile.alternating_clip(Path(clips) / "steady.mp4", CLIPS["street"], flips=False)
        mounts = {"street": CLIPS["street"], "flip": flip, "steady": steady}
        with RtspServer(mounts) as rtsp, Mosquitto() as broker:
            cases = {
                "steady": ("steady", None),
                "flipping": ("flip", None),
                "flipping_refit_at_once": ("flip", 0.0),
            }
            rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
            for _ in range(args.rounds):
                for name, (mount, hold) in cases.items():
                    rounds[name].append(run(rtsp, broker, mount, hold, args))
                    print(name, rounds[name][-1], flush=True)
    runs = {}
    for name, each in rounds.items():
        runs[name] = {
            "a_inferred_per_s": statistics.median(r["a_inferred_per_s"] for r in each),
            "a_reshape_drops": statistics.median(r["a_reshape_drops"] for r in each),
            "batch_shapes_seen": sorted({s for r in each for s in r["batch_shapes_seen"]}),
            "rounds": each,
        }
    ref = runs["steady"]["a_inferred_per_s"]
    for name, r in runs.items():
        r["a_share_of_steady"] = round(r["a_inferred_per_s"] / ref, 3) if ref else None
        share, shapes = r["a_share_of_steady"], ", ".join(r["batch_shapes_seen"])
        print(f"{name:24} a: {r['a_inferred_per_s']:5.2f} frames/s ({share:.0%} of steady), "
              f"{r['a_reshape_drops']:.0f} reshape drops, shapes {shapes}")  # fmt: skip
    result = {
        "benchmark": "shape_flip",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {
            "seconds": args.seconds,
            "fps": args.fps,
            "backend": args.backend,
            "rounds": args.rounds,
            "flip_period_s": 2.0,
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
