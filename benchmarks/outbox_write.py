"""What writing alert messages costs the results thread: inline commits (before) against the writer thread.

The message stream is real: the event engine and the alerts stage run over `--cameras` cameras at
10 fps for `--seconds` s, a person walking into each camera's zone and across its line every 6 s
(starts, updates, ends, active flags, counters, open-event state), and what each frame hands over is
recorded; every event start gets a 60 KB snapshot, the size of a 720p JPEG. Then it is replayed at
the frames' own pace against a real outbox (WAL, synchronous=FULL) on disk, with a delivery thread
acknowledging rows as `Delivery` does (reads a page, waits 5 ms for PUBACKs, deletes them: a commit,
an fsync, under the outbox's lock), in two modes:

- `inline`: `outbox.add_many(...)` on the results thread for every frame with messages, as alerts.py
  did before the writer thread;
- `writer`: `OutboxWriter.put(...)` on the results thread, the commit on the writer's thread (one
  transaction for everything queued meanwhile).

Prints and writes to `--out` the results thread's latency per frame with messages (p50, p99, max)
in each mode, and the writer's commits (how many, their p99).

    .venv/bin/python benchmarks/outbox_write.py [--cameras 8] [--seconds 20] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from vistream.bench.measure import machine_info
from vistream.config.models import Config
from vistream.outputs.alerts import Alerts
from vistream.outputs.outbox import Message, Outbox
from vistream.outputs.writer import Entry, OutboxWriter
from vistream.ring.lifetime import fixed
from vistream.scheduler.messages import FrameResult

REPO = Path(__file__).resolve().parent.parent
W, H, FPS = 1280, 720, 10
SNAPSHOT = bytes(60_000)


class Recorder:
    """Stands in for the OutboxWriter while the stream is made: keeps what each frame hands over."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, list[Entry], dict[str, str | None]]] = []
        self.now = 0.0

    def put(self, entries: list[Entry], state: dict[str, str | None] | None = None) -> None:
        out: list[Entry] = []
        for e in entries:
            if e.event is not None and e.event[1] == "start":  # the start's snapshot, before it
                topic = f"vs/{e.message.camera}/walk/snapshot"
                out.append(Entry(Message(e.message.camera, topic, SNAPSHOT, retain=True, kind="snapshot")))
            out.append(e)
        self.frames.append((self.now, out, dict(state or {})))

    def get_state(self, key: str) -> None:
        return None

    def states(self, prefix: str) -> dict[str, str]:
        return {}


def config(cameras: int) -> Config:
    cams = [
        {
            "name": f"cam{i}",
            "url": f"rtsp://cam.local/{i}",
            "detect_fps": FPS,
            "zones": {"yard": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]},
            "lines": {"mid": [[0, 0.5], [1, 0.5]]},
        }
        for i in range(cameras)
    ]
    rules = [{"name": "walk", "labels": ["person"], "zone": "yard", "end_after_s": 1}]
    return Config.model_validate({"mqtt": {"topic_prefix": "vs"}, "cameras": cams, "alerts": rules})


def stream(cameras: int, seconds: float) -> Recorder:
    """Each camera: every 6 s a person walks down into the yard (crossing `mid`), stays, leaves."""
    alerts = Alerts(config(cameras), None, fixed({}))
    alerts.bind({0: "person"})
    rec = Recorder()
    alerts.writer = rec  # type: ignore[assignment]
    for n in range(int(seconds * FPS)):
        t = n / FPS
        for c in range(cameras):
            phase = (t + c * 0.7) % 6.0
            dets = []
            if phase < 3.0:  # walking down, then standing in the yard, moving a little
                y = min(700.0, 250 + 150 * phase) + (20 if int(phase * 10) % 7 == 0 else 0)
                dets = [(0, 0.6 + 0.1 * phase, 600.0, y - 150, 680.0, y)]
            rec.now = t
            alerts.process(FrameResult(f"cam{c}", n + 1, 1.7e9 + t, t, W, H, dets, track_ids=(1,) * len(dets),
                                       tracker=1 + int((t + c * 0.7) // 6)))  # fmt: skip
        alerts.tick(t)
    return rec


def deliver(outbox: Outbox, stop: threading.Event) -> None:
    """What Delivery does to the outbox: read a page, wait for the PUBACKs, delete the rows."""
    while not stop.is_set():
        rows = outbox.pending_rows(limit=100)
        if not rows:
            stop.wait(0.02)
            continue
        time.sleep(0.005)
        outbox.ack_many(r.id for r in rows)


def replay(rec: Recorder, mode: str, folder: Path) -> dict[str, Any]:
    outbox = Outbox(folder / f"{mode}.sqlite3")
    writer = OutboxWriter(outbox, "open/{}".format) if mode == "writer" else None
    if writer is not None:
        writer.start()
    stop = threading.Event()
    sender = threading.Thread(target=deliver, args=(outbox, stop), daemon=True)
    sender.start()
    took: list[float] = []
    t0 = time.monotonic()
    for when, entries, state in rec.frames:
        pause = t0 + when - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        start = time.perf_counter()
        if writer is not None:
            writer.put(entries, state)
        else:
            outbox.add_many([e.message for e in entries], state=state)
        took.append(time.perf_counter() - start)
    figures: dict[str, Any] = {}
    if writer is not None:
        writer.flush(30.0)
        writer.stop()
        figures |= {
            "commits": writer.commits,
            "commit_p99_ms": round(writer.commit_s.quantile(0.99) * 1e3, 2),
        }
    stop.set()
    sender.join(5)
    outbox.close()
    ms = sorted(t * 1e3 for t in took)
    return {
        "frames_with_messages": len(ms),
        "messages": sum(len(e) for _, e, _ in rec.frames),
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 3),
        "max_ms": round(ms[-1], 3),
        **figures,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", type=int, default=8, help="cameras at 10 fps (default 8)")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of frames (default 20)")
    ap.add_argument("--dir", type=Path, default=None, help="where the outboxes go (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "outbox-write.json")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # the stream's snapshots are lost on purpose (no rings): say nothing
    rec = stream(args.cameras, args.seconds)
    with tempfile.TemporaryDirectory(prefix="outbox-write-", dir=args.dir) as tmp:
        figures = {mode: replay(rec, mode, Path(tmp)) for mode in ("inline", "writer")}
    report = {
        "benchmark": "outbox_write",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info() | {"loadavg": os.getloadavg()},
        "cameras": args.cameras,
        "seconds": args.seconds,
        "figures": figures,
    }
    for mode, f in figures.items():
        print(f"{mode:>7}: " + ", ".join(f"{k} {v}" for k, v in f.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
