"""The fitted batch shape against the square: does it find the same people, and how much faster is it?

    .venv/bin/python benchmarks/batch_shape.py [--backend torch] [--frames 40] [--seconds 8]
        [--out benchmarks/results/batch-shape-cpu-torch.json]

1. Recall. Frames of the sample clips (street-1080p at 1920x1080, crowd-480p at 640x480), spread over
   each clip, letterboxed the way the readers do into the 640x640 square and into the shape the daemon
   fits (384x640 for the street camera alone, 480x640 for the 4:3 crowd camera and for the mix of
   both). Person boxes found in the square (conf >= model.conf) are the reference, mapped to camera
   pixels; the recall of a shape is how many of them it finds again at IoU >= 0.5, and its precision
   how many of its boxes the square found too.
2. Speed, model alone, for the 4-camera mix of the pipeline benchmark (2 street, 2 crowd): batches
   of 4 at the square, batches of 4 at the one fitted shape (480x640), and the alternative of one
   shape per aspect (a batch of 2 street frames at 384x640, then 2 crowd frames at 480x640):
   img/s = 4 / (time of both batches).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np

from vistream.bench.measure import machine_info, table, time_infer
from vistream.bench.recall import matched
from vistream.config.models import ModelConfig
from vistream.detector import load_detector
from vistream.scheduler.shape import batch_shape
from vistream.sources.letterbox import letterbox

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CLIPS = {"street": SHARED / "samples" / "street-1080p.mp4", "crowd": SHARED / "samples" / "crowd-480p.mp4"}
MODEL = SHARED / "models" / "yolov8n.pt"
PERSON = 0
CONFIDENT = 0.5  # persons the square finds at least this sure of: the ones a rule would act on


def clip_frames(path: Path, count: int) -> list[np.ndarray]:
    """`count` RGB frames spread evenly over the clip."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        total = stream.frames or 300
        every = max(1, total // count)
        frames = [
            f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(stream)) if i % every == 0
        ]
    return frames[:count]


def letterboxed(frame: np.ndarray, hw: tuple[int, int], shift: int = 0) -> tuple[np.ndarray, Any]:
    """The frame as a reader writes it into a slot of shape `hw` (swscale's bilinear resize via PyAV),
    or moved `shift` rows down from there."""
    h, w = frame.shape[:2]
    box = letterbox(w, h, hw[1], hw[0])
    box = dataclasses.replace(box, top=box.top + shift)
    img = np.empty((*hw, 3), np.uint8)
    resized = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(width=box.new_w, height=box.new_h)
    box.inner(img)[...] = resized.to_ndarray()
    box.fill_padding(img)
    return img, box


def persons(detector: Any, frames: list[np.ndarray], hw: tuple[int, int], shift: int = 0) -> list[np.ndarray]:
    """Person boxes (x1, y1, x2, y2, conf) per frame, in camera pixels, inferred at shape `hw`."""
    detector.reshape(*hw)
    detector.warmup()
    out = []
    for frame in frames:
        img, box = letterboxed(frame, hw, shift)
        detector.input_buffer[0] = img
        found = detector.infer(1)[0]
        found = found[found[:, 5] == PERSON][:, :5].copy()
        found[:, [0, 2]] = (found[:, [0, 2]] - box.left) / box.scale
        found[:, [1, 3]] = (found[:, [1, 3]] - box.top) / box.scale
        out.append(found)
    return out


def recall_figures(detector: Any, frames: dict[str, list[np.ndarray]], imgsz: int) -> list[dict[str, Any]]:
    sizes = {name: (f[0].shape[1], f[0].shape[0]) for name, f in frames.items()}
    mix = batch_shape(sizes.values(), imgsz)
    rows = []
    for name, clip in frames.items():
        square = persons(detector, clip, (imgsz, imgsz))
        # The model's own jitter: the same square with the frame half a stride-32 cell lower.
        shifted = persons(detector, clip, (imgsz, imgsz), shift=16)
        rows.append(compared(name, "square moved 16 px", [imgsz, imgsz], square, shifted))
        for label, hw in (("own", batch_shape([sizes[name]], imgsz)), ("mix", mix)):
            if hw == (imgsz, imgsz) or any(r["clip"] == name and r["shape"] == list(hw) for r in rows):
                continue
            rows.append(compared(name, label, list(hw), square, persons(detector, clip, hw)))
    return rows


def compared(
    clip: str, label: str, shape: list[int], square: list[np.ndarray], other: list[np.ndarray]
) -> dict[str, Any]:
    """Recall of the square's persons in `other` (all of them, and those of conf >= 0.5), and precision."""
    confident = [s[s[:, 4] >= CONFIDENT] for s in square]
    pairs = list(zip(square, other, strict=True))
    ref, got = sum(len(s) for s in square), sum(len(o) for o in other)
    strong = sum(len(c) for c in confident)
    return {
        "clip": clip, "shape": shape, "as": label, "frames": len(square),
        "persons_square": ref, "persons_other": got, "persons_square_confident": strong,
        "recall": sum(matched(s, o) for s, o in pairs) / ref if ref else None,
        "recall_confident": sum(matched(c, o) for c, (_, o) in zip(confident, pairs, strict=True)) / strong
        if strong else None,
        "precision": sum(matched(o, s) for s, o in pairs) / got if got else None,
    }  # fmt: skip


def shapes_label(figures: dict[str, Any]) -> str:
    return " + ".join("x".join(map(str, hw)) for hw in figures.get("shapes") or [figures["shape"]])


def speed_figures(detector: Any, frames: dict[str, list[np.ndarray]], imgsz: int, seconds: float) -> dict:
    street, crowd = frames["street"][0], frames["crowd"][0]
    sizes = [(street.shape[1], street.shape[0]), (crowd.shape[1], crowd.shape[0])]
    mix = batch_shape(sizes, imgsz)
    out: dict[str, Any] = {}

    def timed(hw: tuple[int, int], batch: list[np.ndarray]) -> dict[str, Any]:
        detector.reshape(*hw)
        detector.warmup()
        for i, frame in enumerate(batch):
            detector.input_buffer[i] = letterboxed(frame, hw)[0]
        return time_infer(detector, len(batch), seconds)

    for key, hw in (("square_b4", (imgsz, imgsz)), ("fitted_b4", mix)):
        out[key] = timed(hw, [street, street, crowd, crowd]) | {"shape": list(hw)}
        out[key]["ms_per_4_images"] = out[key]["ms_per_batch_median"]
        out[key]["img_per_s"] = 4000 / out[key]["ms_per_batch_median"]  # medians throughout
    groups = [
        timed(batch_shape([size], imgsz), [f, f]) for size, f in zip(sizes, (street, crowd), strict=True)
    ]
    per_call = sum(g["ms_per_batch_median"] for g in groups) / 1000
    out["per_aspect_2x_b2"] = {
        "shapes": [list(batch_shape([s], imgsz)) for s in sizes],
        "ms_per_4_images": 1000 * per_call,
        "img_per_s": 4 / per_call,
        "groups": groups,
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="torch")
    p.add_argument("--model", default=str(MODEL))
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--frames", type=int, default=40, help="frames per clip for the recall")
    p.add_argument("--seconds", type=float, default=8.0, help="timing per shape")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    out = args.out or REPO / "benchmarks" / "results" / f"batch-shape-cpu-{args.backend}.json"
    cfg = ModelConfig(
        path=args.model, device="cpu", backend=args.backend, imgsz=args.imgsz, threads=args.threads
    )
    detector = load_detector(cfg, 4)
    frames = {name: clip_frames(path, args.frames) for name, path in CLIPS.items()}
    recall = recall_figures(detector, frames, args.imgsz)
    speed = speed_figures(detector, frames, args.imgsz, args.seconds)
    detector.close()
    result = {
        "benchmark": "batch_shape",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "backend": args.backend,
        "model": args.model,
        "imgsz": args.imgsz,
        "recall": recall,
        "speed": speed,
        "machine": machine_info(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nrecall against the {args.imgsz}x{args.imgsz} square (persons, IoU >= 0.5), {args.backend}:")
    table(
        ["clip", "against", "shape", "frames", "persons (square)", "persons", "recall", "recall conf>=0.5",
         "precision"],
        [
            [r["clip"], r["as"], "x".join(map(str, r["shape"])), r["frames"], r["persons_square"],
             r["persons_other"], *(f"{r[k]:.3f}" for k in ("recall", "recall_confident", "precision"))]
            for r in recall
        ],
    )  # fmt: skip
    print(f"\nmodel alone, 2 street + 2 crowd frames, {args.backend}:")
    table(
        ["batches", "shape", "img/s", "ms per 4 images (median)"],
        [
            [label, shapes_label(speed[key]),
             f"{speed[key]['img_per_s']:.1f}", f"{speed[key]['ms_per_4_images']:.0f}"]
            for label, key in (("square, batch 4", "square_b4"), ("fitted, batch 4", "fitted_b4"),
                               ("per aspect, 2 batches of 2", "per_aspect_2x_b2"))
        ],
    )  # fmt: skip
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
