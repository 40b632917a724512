"""End-to-end benchmark of `vistream run`: RTSP cameras -> YOLOv8 -> MQTT, measured as users run it.

Starts the real parts the integration tests use (Mosquitto on a free port, the GStreamer RTSP test
server looping the sample clips), runs the daemon as a subprocess, waits until it and every camera
report `online`, lets it warm up, then measures one window: detections received per camera, latency
from capture to publish and to receive, /metrics deltas (decoded, sampled, inferred, dropped by reason,
batch size, inference time, frame age), RSS and CPU of every process. Then SIGTERM, timed.

    .venv/bin/python benchmarks/pipeline.py [--seconds 60] [--warmup 15] [--out FILE.json]
    .venv/bin/python benchmarks/pipeline.py --model-only    # the model alone, batch 1/4/8, img/s
    .venv/bin/python benchmarks/pipeline.py --model-only --backend openvino --threads 2
        # the same on one backend, with its export timed cold (empty cache) and cached
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO / "tests"))  # the real broker/RTSP harness lives with the tests

from support import mosquitto as mosquitto_support  # noqa: E402
from support import rtsp_server as rtsp_support  # noqa: E402
from support.daemon import DaemonProcess, base_config  # noqa: E402
from support.mosquitto import Mosquitto, Subscriber  # noqa: E402
from support.procs import free_port  # noqa: E402
from support.rtsp_server import RtspServer  # noqa: E402

from vistream.bench.compare import camera_mounts  # noqa: E402
from vistream.bench.measure import (  # noqa: E402
    REASONS,
    check_alive,
    detection_figures,
    machine_info,
    measure_window,
    metric_figures,
    stop_if_running,
    table,
    time_infer,
    wait_ready,
)

MODEL = SHARED / "models" / "yolov8n.pt"
CLIPS = {"street": SHARED / "samples" / "street-1080p.mp4", "crowd": SHARED / "samples" / "crowd-480p.mp4"}
PREFIX = "vsbench"
# Zones, the line and the three rules of the sample config, for --alerts (and benchmarks/alerts.py).
SAMPLE_CONFIG = REPO / "samples" / "config.yaml"
LOG_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")


def mounts_for(cameras: list[str]) -> dict[str, Path]:
    """Camera name -> clip: `street*` serves the 1080p street clip, `crowd*` the 480p crowd clip."""
    return camera_mounts(",".join(cameras), CLIPS)


def check_prerequisites(clips: set[Path], harness: bool) -> None:
    """Fail with every missing piece named, before anything is started."""
    problems = [f"not found: {p} (see the README.md next to it)" for p in [MODEL, *clips] if not p.is_file()]
    if harness:
        problems += filter(None, [mosquitto_support.missing_dependency(), rtsp_support.missing_dependency()])
    if problems:
        raise SystemExit("cannot run the benchmark:\n  " + "\n  ".join(problems))


def with_alerts(config: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    """The config with samples/config.yaml's zones, line and three rules on every street<N>/crowd<N> camera.

    street<N> gets the `near_street` zone, crowd<N> the `centre` zone and the `midline` line. The rules
    lose their `cameras:` list, so each applies to every camera that has its zone or line.
    """
    sample = yaml.safe_load(SAMPLE_CONFIG.read_text())
    shapes = {c["name"]: {k: c[k] for k in ("zones", "lines") if k in c} for c in sample["cameras"]}
    cameras = [cam | shapes.get(cam["name"].rstrip("0123456789"), {}) for cam in config["cameras"]]
    rules = [{k: v for k, v in rule.items() if k != "cameras"} for rule in sample["alerts"]]
    return config | {"cameras": cameras, "alerts": rules, "state_dir": str(state_dir)}


def run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    cameras = args.cameras.split(",")
    mounts = mounts_for(cameras)
    check_prerequisites(set(mounts.values()), harness=True)
    result: dict[str, Any] = {"mode": "pipeline", "machine": machine_info(), "load_start": os.getloadavg()}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vistream-bench-")))
        broker = stack.enter_context(Mosquitto())
        rtsp = stack.enter_context(RtspServer(mounts))
        cams = [{"name": c, "url": rtsp.url(c), "detect_fps": args.detect_fps} for c in cameras]
        # Cameras whose URL points at nothing: the live cameras' rates show whether they slow them down.
        dead = [f"dead{i}" for i in range(args.dead)]
        cams += [
            {"name": c, "url": f"rtsp://127.0.0.1:{free_port()}/nothing", "detect_fps": args.detect_fps,
             "reconnect_max_s": 2}
            for c in dead
        ]  # fmt: skip
        config = base_config(MODEL, broker.port, free_port(), PREFIX, cams)
        config["model"].update(device=args.device, imgsz=args.imgsz)
        config["batching"] = {"max_batch": args.max_batch, "max_wait_ms": 10, "max_frame_age_ms": 500}
        if args.alerts:
            config = with_alerts(config, tmp / "state")
        result["config"] = config
        sub = stack.enter_context(Subscriber(broker.host, broker.port, f"{PREFIX}/#"))
        t_start = time.monotonic()
        daemon = stack.enter_context(DaemonProcess(config, tmp))
        stack.callback(stop_if_running, daemon)
        assert daemon.proc is not None
        print(f"daemon pid {daemon.proc.pid} started; waiting for it and {len(cameras)} cameras ...")
        wait_ready(sub, daemon, PREFIX, cameras)
        result["ready_after_s"] = time.monotonic() - t_start
        print(f"ready after {result['ready_after_s']:.1f} s; warming up {args.warmup} s ...")
        time.sleep(args.warmup)
        check_alive(daemon)

        print(f"measuring {args.seconds} s ...")
        before, after, (t0, t1), result["processes"] = measure_window(daemon, args.seconds)
        result["window_s"] = t1 - t0
        result["metrics"] = metric_figures(before, after, cameras + dead, t1 - t0)
        result["detections"] = detection_figures(sub.messages, cameras + dead, (t0, t1))

        code, took = daemon.terminate()
        leftover = sorted(p.name for p in Path("/dev/shm").glob(f"vistream.{PREFIX}.*"))
        result["stop"] = {"exit_code": code, "seconds": took, "shm_left_behind": leftover}
        problems = [line for line in daemon.log.splitlines() if LOG_PROBLEM.search(line)]
        result["log_problems"] = {"count": len(problems), "first": problems[:40]}
    result["load_end"] = os.getloadavg()
    return result


def run_model_only(args: argparse.Namespace) -> dict[str, Any]:
    """The model alone on random input: the ceiling for the daemon's inferred frames per second."""
    check_prerequisites(set(), harness=False)
    import torch

    from vistream.config.models import ModelConfig
    from vistream.detector import load_detector

    result: dict[str, Any] = {"mode": "model-only", "machine": machine_info(), "load_start": os.getloadavg()}
    model = {"path": str(MODEL), "device": args.device, "imgsz": args.imgsz, "backend": args.backend}
    with tempfile.TemporaryDirectory(prefix="vistream-bench-cache.") as cache:
        # Load twice with an empty export cache: the first start exports, the second reuses it.
        cfg = ModelConfig(**model, threads=args.threads, cache_dir=cache)
        result["starts"] = {}
        for start in ("cold", "cached"):
            t0 = time.monotonic()
            detector = load_detector(cfg, args.max_batch)
            detector.warmup()
            result["starts"][start] = {"load_and_warmup_s": time.monotonic() - t0}
            print(f"{start} start: model loaded and warm after {time.monotonic() - t0:.2f} s")
            if start == "cold":
                detector.close()
    result["backend"] = getattr(detector, "backend", args.backend)
    result["config"] = {"model": cfg.model_dump(mode="json"), "torch_threads": torch.get_num_threads()}
    rng = np.random.default_rng(0)
    result["batches"] = {}
    for n in [b for b in (1, 4, 8) if b <= args.max_batch]:
        # Random pixels give few boxes, so NMS costs less than on real footage: a ceiling, not a promise.
        detector.input_buffer[:n] = rng.integers(0, 256, detector.input_buffer[:n].shape, dtype=np.uint8)
        b = result["batches"][n] = time_infer(detector, n, args.model_seconds)
        print(f"batch {n}: {b['img_per_s']:.2f} img/s, {b['ms_per_batch_median']:.0f} ms/batch (median)")
    detector.close()
    result["load_end"] = os.getloadavg()
    return result


def print_summary(r: dict[str, Any]) -> None:
    m, det, procs, secs, cfg = r["metrics"], r["detections"], r["processes"], r["window_s"], r["config"]
    ms = {k: "-" if v is None else f"{v:.0f}" for k, v in m.items() if "_ms_" in k}
    print(f"\n== vistream pipeline, {len(cfg['cameras'])} cameras, {r['machine']['date']} ==")
    print(f"model {cfg['model']}\nbatching {cfg['batching']}, detect_fps {cfg['cameras'][0]['detect_fps']}")
    print(f"ready after {r['ready_after_s']:.1f} s; window {secs:.1f} s")
    if cfg.get("alerts"):
        events = {k: v for k, v in m["all_deltas"].items() if k.startswith("vistream_events_total")}
        print(f"alerts on: {len(cfg['alerts'])} rules; events started in the window: {events or 'none'}")
    print(f"load average at start {r['load_start']}, at end {r['load_end']}")
    rows = []
    for cam, c in [*m["per_camera"].items(), ("total", m["total"])]:
        d = det["per_camera"].get(cam, det)
        rates = [c[k] / secs for k in ("decoded", "sampled", "inferred")]
        counts = [int(c[f"dropped_{r}"]) for r in REASONS] + [int(c["unaccounted"])]
        rows.append([cam, d["fps"], *rates, *counts, d["objects_per_frame"] or 0.0])
    print("\nframes per second, then frames dropped (counts over the window)")
    short = [r if len(r) <= 6 else r[:5] + "." for r in REASONS]
    header = ["camera", "mqtt", "decoded", "sampled", "inferred", *short, "unacc."]
    table([*header, "obj/frame"], rows)
    size = m["batch_size_mean"] or 0.0
    print(f"\n{m['batches']:.0f} batches ({m['batches_per_s']:.2f}/s), mean size {size:.2f}")
    print(f"inference {ms['inference_ms_per_batch']} ms/batch, {ms['inference_ms_per_frame']} ms/frame")
    print(f"model busy {m['inference_busy_pct']:.0f}% of the window")
    print(f"mean frame age at batch start {ms['frame_age_ms_mean']} ms, mean e2e {ms['e2e_ms_mean']} ms\n")
    keys = ("n", "p50_ms", "p90_ms", "p99_ms", "max_ms")
    rows = [
        [name, *(det[name].get(k, "-") for k in keys)]
        for name in ("capture_to_publish", "capture_to_receive")
    ]
    table(["latency, ms", "n", "p50", "p90", "p99", "max"], rows)
    print()
    rows = [
        [n, p["cpu_pct"], p.get("rss_mib_mean", 0.0), p.get("rss_mib_max", 0.0)]
        for n, p in procs["processes"].items()
    ]
    table(["process", "CPU % (100 = 1 core)", "RSS mean MiB", "RSS max MiB"], sorted(rows))
    cpu = {k.removeprefix("cpu_pct_"): f"{v:.0f}" for k, v in procs.items() if k.startswith("cpu_pct_")}
    print(f"CPU %: daemon {cpu['daemon']}, with harness {cpu['ours']}, others {cpu['others']}")
    print(f"CPU %: whole machine {cpu['machine']} of {100 * r['machine']['cpu_count']}, steal {cpu['steal']}")
    stop = r["stop"]
    print(f"SIGTERM: exit {stop['exit_code']} after {stop['seconds']:.2f} s")
    print(f"shared memory left behind: {stop['shm_left_behind'] or 'none'}")
    print(f"daemon log: {r['log_problems']['count']} warning/error lines")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60, help="measurement window (s)")
    parser.add_argument("--warmup", type=float, default=15, help="seconds after ready before measuring")
    parser.add_argument("--cameras", default="street1,street2,crowd1,crowd2", help="street<N>/crowd<N>")
    parser.add_argument("--detect-fps", type=float, default=15)
    parser.add_argument("--dead", type=int, default=0, help="also N cameras whose URL answers nothing")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument(
        "--alerts", action="store_true", help="zones, a line and 3 rules as samples/config.yaml"
    )
    parser.add_argument("--model-only", action="store_true", help="only the model: img/s at batch 1/4/8")
    parser.add_argument("--model-seconds", type=float, default=10, help="--model-only: per batch size")
    parser.add_argument("--backend", default="auto", help="--model-only: model.backend")
    parser.add_argument("--threads", type=int, help="--model-only: model.threads")
    parser.add_argument("--out", type=Path, help="JSON file; default benchmarks/results/<mode>-<device>.json")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every context manager stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = run_model_only(args) if args.model_only else run_pipeline(args)
    except KeyboardInterrupt:  # the context managers have already stopped everything
        sys.exit("interrupted")
    if not args.model_only:
        print_summary(result)
    backend = f"-{args.backend}" if args.model_only and args.backend != "auto" else ""
    out = args.out or REPO / "benchmarks" / "results" / f"{result['mode']}-{args.device}{backend}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")  # written whole, then renamed: never a half-written result
    tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    tmp.replace(out)
    print(f"\nresults written to {out}")


if __name__ == "__main__":
    main()
