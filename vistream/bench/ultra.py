"""Ultralytics' own predictor on the same streams: `YOLO(model).predict(source=<.streams>, stream=True)`.

Run by `vistream bench` in a process of its own, so its CPU and memory are measured apart:

    python -m vistream.bench.ultra --source FILE.streams --model M [--imgsz 640] [--device cpu]
        [--warmup 15] [--seconds 60]

One line per step on stdout: `STARTED <s>` when the first result arrives (every stream open),
`WINDOW` when the warm-up is over and counting starts, `RESULT {json}` at the end (the images counted in
the window: each batch holds one image per stream, and yields one result per image).
A failure (a stream that cannot be opened stops the predictor before it starts) prints
`ERROR <type>: <message>` and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ultralytics import YOLO

    model = YOLO(args.model)
    t_start = time.monotonic()
    results = model.predict(
        source=args.source, stream=True, imgsz=args.imgsz, device=args.device, verbose=False
    )
    images, started, t_window = 0, -1.0, -1.0
    for _result in results:  # one per image: a batch yields one result per stream
        now = time.monotonic()
        if started < 0:
            started = now
            print(f"STARTED {now - t_start:.2f}", flush=True)
        if t_window < 0 and now - started >= args.warmup:
            t_window = now
            print("WINDOW", flush=True)
        if t_window >= 0:
            images += 1
            if now - t_window >= args.seconds:
                return {
                    "images": images,
                    "window_s": now - t_window,
                    "images_per_s": images / (now - t_window),
                    "started_after_s": started - t_start,
                }
    raise RuntimeError("the predictor stopped: a stream ended")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--source", required=True, help="a .streams file: one URL a line")
    parser.add_argument("--model", required=True)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=float, default=15)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args(argv)
    from setproctitle import setproctitle

    setproctitle("vistream-bench: ultralytics")
    try:
        result = run(args)
    except Exception as exc:  # the parent records what stopped it
        line = str(exc).strip().splitlines()
        print(f"ERROR {type(exc).__name__}: {line[-1] if line else ''}", flush=True)
        sys.stdout.flush()
        os._exit(1)
    print(f"RESULT {json.dumps(result)}", flush=True)
    # Alive until the parent has read its CPU time and stops it (an exited process has no title to be
    # known by); not through the generator's close, which joins the stream threads with long timeouts.
    time.sleep(60)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
