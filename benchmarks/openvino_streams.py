"""OpenVINO on a CPU: one synchronous request per batch (LATENCY hint, every thread on each layer)
against one asynchronous request per image spread over 2 streams (THROUGHPUT hint), which is what
`vistream.detector.openvino.STREAMS` chooses between.

The two detectors are loaded side by side and measured in alternating rounds, so load from other
processes on a shared machine falls on both alike; the input is a letterboxed frame of the street
clip (real boxes, real NMS).

    .venv/bin/python benchmarks/openvino_streams.py [--rounds 5] [--seconds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

from vistream.config.models import ModelConfig
from vistream.detector.openvino import OpenVinoDetector

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def street_frame(hw: tuple[int, int]) -> np.ndarray:
    with av.open(str(SHARED / "samples" / "street-1080p.mp4")) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    h, w = hw
    scale = min(h / frame.shape[0], w / frame.shape[1])
    small = cv2.resize(frame, (round(frame.shape[1] * scale), round(frame.shape[0] * scale)))
    out = np.full((h, w, 3), 114, np.uint8)
    top, left = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3, help="per mode, batch size and round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "openvino-streams.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vistream-bench-cache.") as cache:
        cfg = ModelConfig(
            path=str(SHARED / "models" / "yolov8n.pt"), device="cpu", threads=args.threads, cache_dir=cache
        )
        dets = {
            "sync": OpenVinoDetector(cfg, 4, streams=1),
            "async-2-streams": OpenVinoDetector(cfg, 4, streams=2),
        }
    frame = street_frame(cfg.input_hw)
    for d in dets.values():
        d.input_buffer[:] = frame
        d.warmup()
    same = all(
        np.allclose(a, b, atol=1e-3)
        for a, b in zip(dets["sync"].infer(4), dets["async-2-streams"].infer(4), strict=True)
    )
    runs: dict[str, list[float]] = {}
    load_start = os.getloadavg()
    for _ in range(args.rounds):
        for mode, d in dets.items():
            for n in (1, 4):
                t0, images = time.perf_counter(), 0
                while time.perf_counter() - t0 < args.seconds:
                    d.infer(n)
                    images += n
                runs.setdefault(f"{mode} batch {n}", []).append(images / (time.perf_counter() - t0))
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "same_boxes": same,
        "img_per_s_median": {k: float(np.median(v)) for k, v in runs.items()},
        "img_per_s_rounds": runs,
        "load_start": load_start,
        "load_end": os.getloadavg(),
    }
    for k, v in runs.items():
        print(f"{k}: median {np.median(v):.1f} img/s, rounds {[round(x, 1) for x in v]}")
    print(f"same boxes: {same}; load average {load_start} -> {result['load_end']}")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
