"""OpenVINO's precisions on this CPU: how much faster bf16 (and fp16) is than fp32, and what it costs.

    .venv/bin/python benchmarks/precision.py [--frames 40] [--seconds 10] [--threads N]
        [--out benchmarks/results/precision-openvino.json]

The figures `model.precision`'s default for OpenVINO was chosen from (docs/performance.md, Precision).

1. Recall against torch fp32. Frames of the sample clips (street-1080p, crowd-480p), spread over each
   clip, letterboxed as the readers do into the batch shape the daemon fits for the mix of both
   (480x640). Person boxes torch finds in fp32 are the reference; the recall of a precision is how
   many of them OpenVINO finds again at IoU >= 0.5 (all of them, and those torch is at least 0.5
   sure of), its precision how many of its boxes torch found too. OpenVINO fp32 is in the table as
   the runtime's own difference from torch.
2. Speed, model alone, the 4-camera mix of `vistream bench` (2 street, 2 crowd frames): batches of 4
   at 480x640, img/s from the median batch time.
A precision the CPU has no units for is still run: the plugin falls back to fp32, and the `runs at`
column says so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from batch_shape import CLIPS, MODEL, REPO, clip_frames, compared, letterboxed, persons

from vistream.bench.measure import machine_info, table, time_infer
from vistream.config.models import ModelConfig
from vistream.detector import load_detector
from vistream.scheduler.shape import batch_shape

PRECISIONS = ("fp32", "bf16", "fp16")


def detector_for(args: argparse.Namespace, backend: str, precision: str) -> Any:
    cfg = ModelConfig(
        path=args.model,
        device="cpu",
        backend=backend,
        precision=precision,
        imgsz=args.imgsz,
        threads=args.threads,
        cache_dir=args.cache_dir,
    )
    return load_detector(cfg, 4)


def speed(detector: Any, frames: dict[str, list[Any]], hw: tuple[int, int], seconds: float) -> dict:
    detector.reshape(*hw)
    detector.warmup()
    street, crowd = frames["street"][0], frames["crowd"][0]
    for i, frame in enumerate((street, street, crowd, crowd)):
        detector.input_buffer[i] = letterboxed(frame, hw)[0]
    timed = time_infer(detector, 4, seconds)
    return timed | {"img_per_s_median": 4000 / timed["ms_per_batch_median"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(MODEL))
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--frames", type=int, default=40, help="frames per clip for the recall")
    p.add_argument("--seconds", type=float, default=10.0, help="timing per precision")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cache-dir", type=Path, default=None, help="model.cache_dir (default: the user's)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "precision-openvino.json")
    args = p.parse_args(argv)
    frames = {name: clip_frames(path, args.frames) for name, path in CLIPS.items()}
    sizes = [(f[0].shape[1], f[0].shape[0]) for f in frames.values()]
    hw = batch_shape(sizes, args.imgsz)

    reference = detector_for(args, "torch", "fp32")
    truth = {name: persons(reference, clip, hw) for name, clip in frames.items()}
    torch_speed = speed(reference, frames, hw, args.seconds)
    reference.close()
    runs: list[dict[str, Any]] = [
        {"backend": "torch", "asked": "fp32", "runs_at": "fp32", "speed": torch_speed}
    ]
    for precision in PRECISIONS:
        detector = detector_for(args, "openvino", precision)
        found = {name: persons(detector, clip, hw) for name, clip in frames.items()}
        runs.append(
            {
                "backend": "openvino",
                "asked": precision,
                "runs_at": detector.precision,
                "recall": [
                    compared(name, f"openvino {precision}", list(hw), truth[name], found[name])
                    for name in frames
                ],
                "speed": speed(detector, frames, hw, args.seconds),
            }
        )
        detector.close()
    result = {
        "benchmark": "precision",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": args.model,
        "shape_hw": list(hw),
        "frames_per_clip": args.frames,
        "runs": runs,
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    print(f"\n{m['cpu_model']}, {m['cpu_count']} CPUs, flags {' '.join(m['cpu_precision_flags'])}")
    print(f"model alone, batches of 4 (2 street + 2 crowd) at {hw[0]}x{hw[1]}; recall against torch fp32:")
    fp32 = runs[1]["speed"]["img_per_s_median"]
    rows = []
    for run in runs:
        recall = {r["clip"]: r for r in run.get("recall", [])}
        figures = [
            f"{recall[c][k]:.3f}" if c in recall else "-"
            for c in frames
            for k in ("recall", "recall_confident", "precision")
        ]
        img_s = run["speed"]["img_per_s_median"]
        rows.append(
            [
                f"{run['backend']} {run['asked']}",
                run["runs_at"],
                f"{img_s:.1f}",
                f"{img_s / fp32:.2f}",
                *figures,
            ]
        )
    table(
        ["model", "runs at", "img/s", "x openvino fp32",
         *(f"{c} {k}" for c in frames for k in ("recall", "recall conf>=0.5", "precision"))],
        rows,
    )  # fmt: skip
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
