"""The command line of `vistream bench` (and benchmarks/compare.py): argparse only, so that building
the `vistream` parser imports nothing heavy."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `vistream bench` and benchmarks/compare.py."""
    p.add_argument(
        "--cameras", help="street1,street2,crowd1,crowd2 (default) or a count; <kind><N> picks the clip"
    )
    p.add_argument(
        "--clip", action="append", default=[], metavar="NAME=PATH", help="a clip kind (repeatable)"
    )
    p.add_argument("--seconds", type=float, help="each measurement window (default 60)")
    p.add_argument("--warmup", type=float, help="seconds after ready before measuring (default 15)")
    p.add_argument("--model-seconds", type=float, help="timing the model alone, each (default 10)")
    p.add_argument("--backend", default="auto", help="vistream's model.backend (auto, torch, openvino, ...)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--device", default="cpu")
    p.add_argument("--detect-fps", type=float, default=30, help="offered per camera (default 30)")
    p.add_argument("--dead", type=int, default=0, metavar="N", help="also N cameras where nothing listens")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="model.threads for vistream and the model alone (default: the runtime's)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "fp16", "bf16"),
        help="model.precision for vistream and the model alone (default auto)",
    )
    p.add_argument("--smoke", action="store_true", help="2 cameras, 10 s windows, short warm-ups")
    p.add_argument(
        "--model", help="weights (default ../shared/models/yolov8n.pt when there, else yolov8n.pt)"
    )
    p.add_argument(
        "--out", type=Path, help="JSON path (default benchmarks/results/compare-<backend>[-dead].json)"
    )
