"""The Triton backend against in-process inference of the same model on the same machine.

    flock /tmp/vistream-itest.lock .venv/bin/python benchmarks/triton_hop.py [--seconds 30] [--input uint8]

The model is `vistream export-triton`'s entry of yolov8n, served by the test Triton server
(tests/support/triton_server.py: PyTriton's tritonserver, the entry's model.onnx on onnxruntime
with 1 thread) and run in-process by the onnxruntime backend on the default entry's file with 1
thread. `--input uint8` serves the `--input uint8` entry (bytes on the wire, preprocessing in the
model) instead, and writes triton-cpu-uint8.json.

1. The hop: one batch of the street frame (1 and 4 frames, 384x640) through the backend's
   `infer`, in-process and through Triton over gRPC: p50/p99 and what the hop adds.
2. The daemon on two RTSP street cameras at `--fps` each (10; 30 offers more than either keeps up
   with), `--seconds` per backend: frames/s
   inferred, via Triton / in-process; the mean batch Triton executed (its own statistics).
3. Recovery: Triton stopped for 5 s and started again during the Triton run: seconds from its
   ready line to the daemon's first detections.

JSON into benchmarks/results/triton-cpu.json. On a 2-core machine the server and the daemon share
the cores, so this is the hop's cost, not Triton's speed on a GPU box.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.daemon import VISTREAM, DaemonProcess, base_config, metric_sum  # noqa: E402
from support.mosquitto import Mosquitto, Subscriber  # noqa: E402
from support.procs import free_port  # noqa: E402
from support.rtsp_server import RtspServer  # noqa: E402
from support.triton_server import TritonServer  # noqa: E402

from vistream.config.models import ModelConfig  # noqa: E402
from vistream.detector import load_detector  # noqa: E402

MODEL = REPO.parent / "shared" / "models" / "yolov8n.pt"
CLIP = REPO.parent / "shared" / "samples" / "street-1080p.mp4"
MAX_BATCH = 4


def export(root: Path, name: str = "yolov8n", input_type: str = "float32") -> Path:
    env = {**os.environ, "XDG_CACHE_HOME": str(root / "cache")}
    cmd = [*VISTREAM, "export-triton", "--model", str(MODEL), "--out", str(root / "models")]
    cmd += ["--name", name, "--max-batch", str(MAX_BATCH), "--input", input_type]
    subprocess.run(cmd, env=env, check=True)
    return root / "models" / name


def street_frame() -> np.ndarray:
    import av
    import cv2

    with av.open(str(CLIP)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    out = np.full((384, 640, 3), 114, np.uint8)
    out[12:372] = cv2.resize(frame, (640, 360), interpolation=cv2.INTER_AREA)
    return out


def hop(path: str, frame: np.ndarray, reps: int) -> dict[str, dict[str, float]]:
    det = load_detector(ModelConfig(path=path, device="cpu", threads=1, imgsz=640), MAX_BATCH)
    det.reshape(384, 640)
    out = {}
    for n in (1, MAX_BATCH):
        det.input_buffer[:n] = frame
        det.infer(n)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            det.infer(n)
            times.append(time.perf_counter() - t0)
        out[f"batch{n}"] = {
            "p50_ms": round(float(np.percentile(times, 50)) * 1000, 1),
            "p99_ms": round(float(np.percentile(times, 99)) * 1000, 1),
        }
    det.close()
    return out


def daemon_run(
    model: str,
    seconds: float,
    rtsp: RtspServer,
    broker: Mosquitto,
    workdir: Path,
    triton: TritonServer | None,
    fps: float = 10,
) -> dict[str, float]:
    cams = [{"name": n, "url": rtsp.url(n), "detect_fps": fps} for n in ("street1", "street2")]
    cfg = base_config(MODEL, broker.port, free_port(), "benchtriton", cams)
    cfg["model"] = {"path": model, "threads": 1, "conf": 0.4}
    cfg["batching"] = {"max_batch": MAX_BATCH, "max_wait_ms": 20, "max_frame_age_ms": 1500}
    workdir.mkdir()
    out: dict[str, float] = {}
    with Subscriber(broker.host, broker.port, "benchtriton/#") as sub, DaemonProcess(cfg, workdir) as daemon:
        sub.wait_for(lambda m: m.topic.endswith("/detections"), timeout=180)
        time.sleep(5)  # batch shape fitted, rates steady
        start_t, start_n = time.monotonic(), metric_sum(daemon.metrics(), "vistream_frames_inferred_total")
        base = triton.statistics() if triton else None
        time.sleep(seconds)
        text = daemon.metrics()
        out["frames_per_s"] = round(
            (metric_sum(text, "vistream_frames_inferred_total") - start_n) / (time.monotonic() - start_t), 2
        )
        out["e2e_mean_s"] = round(
            metric_sum(text, "vistream_e2e_latency_seconds_sum")
            / max(1, metric_sum(text, "vistream_e2e_latency_seconds_count")),
            3,
        )
        if triton and base:
            stats = triton.statistics()
            images = stats["inference_count"] - base["inference_count"]
            out["triton_mean_batch"] = round(
                images / max(1, stats["execution_count"] - base["execution_count"]), 2
            )
            ports = (triton.grpc_port, triton.http_port, triton.metrics_port)
            triton.stop()
            time.sleep(5)
            triton.__init__(triton.entry, *ports)  # type: ignore[misc]
            triton.start()
            back = time.time()
            first = sub.wait_for(
                lambda m: m.topic.endswith("/detections") and m.json()["captured_at"] > back, 60
            )
            out["recovery_s"] = round(first.json()["published_at"] - back, 2)
        daemon.terminate()
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--reps", type=int, default=40)
    p.add_argument(
        "--fps", type=float, default=10, help="detect_fps per camera (30: more than either keeps up with)"
    )
    p.add_argument(
        "--input", choices=("float32", "uint8"), default="float32", help="the served entry's input"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="default benchmarks/results/triton-cpu[-uint8].json"
    )
    args = p.parse_args()
    suffix = "" if args.input == "float32" else f"-{args.input}"
    args.out = args.out or REPO / "benchmarks" / "results" / f"triton-cpu{suffix}.json"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        entry = export(root)
        served = entry if args.input == "float32" else export(root, f"yolov8n_{args.input}", args.input)
        frame = street_frame()
        triton = TritonServer(served, free_port(), free_port(), free_port()).start()
        try:
            url = f"grpc://127.0.0.1:{triton.grpc_port}/{served.name}"
            local_hop = hop(str(entry / "1" / "model.onnx"), frame, args.reps)
            triton_hop = hop(url, frame, args.reps)
            with RtspServer({"street1": CLIP, "street2": CLIP}) as rtsp, Mosquitto() as broker:
                local = daemon_run(
                    str(entry / "1" / "model.onnx"),
                    args.seconds,
                    rtsp,
                    broker,
                    root / "local",
                    None,
                    args.fps,
                )
                remote = daemon_run(url, args.seconds, rtsp, broker, root / "triton", triton, args.fps)
        finally:
            triton.stop()
    added = {
        b: {q: round(triton_hop[b][q] - local_hop[b][q], 1) for q in ("p50_ms", "p99_ms")} for b in local_hop
    }
    result = {
        "frames_per_s_ratio_triton_over_inprocess": round(remote["frames_per_s"] / local["frames_per_s"], 2),
        "hop_added_ms": added,
        "triton_mean_batch": remote.get("triton_mean_batch"),
        "recovery_s": remote.get("recovery_s"),
        "inprocess": {"infer": local_hop, "daemon": local},
        "triton": {"infer": triton_hop, "daemon": remote},
        "setup": f"yolov8n 384x640, {args.input} entry, onnxruntime 1 thread each side, "
        f"2 RTSP 1080p cameras at {args.fps:g} fps "
        f"each, max_batch {MAX_BATCH}, max_inflight 2, {os.cpu_count()} CPUs, {args.seconds:g} s per run",
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
