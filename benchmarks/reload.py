"""What a live reload (SIGHUP) costs the cameras it does not touch, and how fast a new camera starts.

Runs the real daemon on RTSP cameras (the test harness's Mosquitto and GStreamer RTSP server), then
rewrites its config (one camera added, one removed, the others unchanged) and sends SIGHUP. Reports,
for the unchanged cameras, the frames lost across the reload (reader restarts, `unattached` drops,
sequence numbers that started over or jumped more than the load explains) and their inferred rate
before and after; and the time from SIGHUP to the new camera's first detection.

    .venv/bin/python benchmarks/reload.py [--seconds 20] [--out benchmarks/results/reload-cpu.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from pipeline import CLIPS, MODEL, scrape  # noqa: E402
from support.daemon import DaemonProcess, base_config  # noqa: E402
from support.mosquitto import Mosquitto, Subscriber  # noqa: E402
from support.procs import free_port  # noqa: E402
from support.rtsp_server import RtspServer  # noqa: E402

PREFIX = "vsreload"


def seqs(sub: Subscriber, camera: str, start: float, end: float) -> list[int]:
    topic = f"{PREFIX}/{camera}/detections"
    return [m.json()["seq"] for m in sub.messages if m.topic == topic and start <= m.timestamp < end]


def window(sub: Subscriber, camera: str, start: float, end: float) -> dict[str, Any]:
    got = seqs(sub, camera, start, end)
    gaps = [b - a for a, b in itertools.pairwise(got)]
    return {
        "inferred_per_s": round(len(got) / (end - start), 2),
        "largest_seq_step": max(gaps, default=0),
        "seq_went_back": any(g <= 0 for g in gaps),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20, help="window before and after the reload")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "reload-cpu.json")
    args = ap.parse_args()
    mounts = {"street1": CLIPS["street"], "crowd1": CLIPS["crowd"], "street2": CLIPS["street"],
              "crowd2": CLIPS["crowd"]}  # fmt: skip
    with (
        RtspServer(mounts) as rtsp,
        Mosquitto() as broker,
        tempfile.TemporaryDirectory() as tmp,
        Subscriber(broker.host, broker.port, f"{PREFIX}/#") as sub,
    ):
        cams = [
            {"name": "keep1", "url": rtsp.url("street1"), "detect_fps": 3},
            {"name": "keep2", "url": rtsp.url("crowd1"), "detect_fps": 3},
            {"name": "drop", "url": rtsp.url("street2"), "detect_fps": 3},
        ]
        cfg = base_config(MODEL, broker.port, free_port(), PREFIX, cams)
        with DaemonProcess(cfg, Path(tmp)) as daemon:
            assert daemon.proc is not None
            deadline = time.monotonic() + 120
            while not all(seqs(sub, c["name"], 0, 1e12) for c in cams):
                if time.monotonic() > deadline:
                    raise SystemExit("cameras did not start")
                time.sleep(0.5)
            time.sleep(5)  # warm
            before_start = time.monotonic()
            time.sleep(args.seconds)
            metrics_before = scrape(daemon)
            new = {"name": "new", "url": rtsp.url("crowd2"), "detect_fps": 3}
            daemon.path.write_text(yaml.safe_dump({**cfg, "cameras": [cams[0], cams[1], new]}))
            hup = time.monotonic()
            daemon.proc.send_signal(signal.SIGHUP)
            while not seqs(sub, "new", hup, 1e12):
                if time.monotonic() - hup > 60:
                    raise SystemExit("the new camera never published")
                time.sleep(0.05)
            first = next(m.timestamp for m in sub.messages if m.topic == f"{PREFIX}/new/detections")
            first_detection_s = first - hup
            time.sleep(args.seconds)
            after_end = time.monotonic()
            metrics_after = scrape(daemon)
            daemon.terminate()
        result: dict[str, Any] = {"sighup_to_new_camera_first_detection_s": round(first_detection_s, 2)}

        def delta(metric: str, **labels: str) -> float:
            key = (metric, tuple(sorted(labels.items())))
            return metrics_after.get(key, 0.0) - metrics_before.get(key, 0.0)

        for name in ("keep1", "keep2"):
            lost = {
                "unattached": delta("vistream_frames_dropped_total", camera=name, reason="unattached"),
                "reader_restarts": delta("vistream_process_restarts_total", process=f"reader/{name}"),
                "decoded": delta("vistream_frames_decoded_total", camera=name),
            }
            result[name] = {
                "before": window(sub, name, before_start, hup),
                "after": window(sub, name, hup, after_end),
                "across_reload": window(sub, name, hup - 2, hup + 5),
                "frames_lost": lost,
            }
    print(json.dumps(result, indent=2))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
