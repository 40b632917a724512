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
import datetime
import json
import os
import platform
import re
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import ExitStack, suppress
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO / "tests"))  # the real broker/RTSP harness lives with the tests

from support import mosquitto as mosquitto_support  # noqa: E402
from support import rtsp_server as rtsp_support  # noqa: E402
from support.daemon import DaemonProcess, base_config  # noqa: E402
from support.mosquitto import Message, Mosquitto, Subscriber  # noqa: E402
from support.procs import free_port  # noqa: E402
from support.rtsp_server import RtspServer  # noqa: E402

MODEL = SHARED / "models" / "yolov8n.pt"
CLIPS = {"street": SHARED / "samples" / "street-1080p.mp4", "crowd": SHARED / "samples" / "crowd-480p.mp4"}
PREFIX = "vsbench"
# Zones, the line and the three rules of the sample config, for --alerts (and benchmarks/alerts.py).
SAMPLE_CONFIG = REPO / "samples" / "config.yaml"
MIB = 1024 * 1024
REASONS = ("stale", "overwritten", "failed", "unattached")
LOG_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")
# Distribution names: Ultralytics is installed as its headless build.
DISTS = {"vistream": "vistream", "torch": "torch", "ultralytics": "ultralytics-opencv-headless", "av": "av"}


def mounts_for(cameras: list[str]) -> dict[str, Path]:
    """Camera name -> clip: `street*` serves the 1080p street clip, `crowd*` the 480p crowd clip."""
    mounts = {}
    for cam in cameras:
        kind = cam.rstrip("0123456789")
        if kind not in CLIPS:
            raise SystemExit(f"--cameras: {cam!r} must be street<N> or crowd<N> (it picks the clip)")
        mounts[cam] = CLIPS[kind]
    return mounts


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


def version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    model = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": model.group(1) if model else None,
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "versions": {name: version(dist) for name, dist in DISTS.items()},
        # Inherited by the daemon: torch's thread pool size changes the results a lot on small machines.
        "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
    }


def label(proc: psutil.Process, daemon_pid: int) -> str:
    """A readable name: the daemon's children carry `vistream: <role>` titles (setproctitle)."""
    cmd = " ".join(part for part in proc.cmdline() if part).strip()
    known = {
        "rtsp_server.py": "rtsp-server (harness)",
        "mosquitto": "mosquitto (harness)",
        "resource_tracker": "resource_tracker",  # multiprocessing's, watches the shared-memory segments
    }
    if proc.pid == daemon_pid:
        return "main"
    if cmd.startswith("vistream: "):
        return cmd.removeprefix("vistream: ")
    return next((name for key, name in known.items() if key in cmd), cmd[:60])


class ProcessWatch:
    """RSS of every process once a second, and CPU time between start() and stop().

    Watches the daemon's tree and the harness (broker, RTSP server, this script) too: on a shared
    machine, what is left of the machine's busy time after ours is load from others.
    """

    def __init__(self, daemon_pid: int) -> None:
        self.daemon_pid = daemon_pid
        self.rss: dict[str, list[float]] = defaultdict(list)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def processes(self) -> dict[int, tuple[str, psutil.Process]]:
        me = psutil.Process()
        found = {me.pid: ("benchmark (harness)", me)}
        for proc in me.children(recursive=True):
            with suppress(psutil.Error):  # it exited while we looked
                found[proc.pid] = (label(proc, self.daemon_pid), proc)
        return found

    def cpu_seconds(self) -> dict[int, tuple[str, float]]:
        out = {}
        for pid, (name, proc) in self.processes().items():
            with suppress(psutil.Error):
                out[pid] = (name, sum(proc.cpu_times()[:2]))  # user + system
        return out

    def _sample(self) -> None:
        while not self._done.wait(1.0):
            for name, proc in self.processes().values():
                with suppress(psutil.Error):
                    self.rss[name].append(proc.memory_info().rss / MIB)

    def start(self) -> None:
        self._cpu0, self._busy0, self._t0 = self.cpu_seconds(), machine_busy_s(), time.monotonic()
        self._steal0 = psutil.cpu_times().steal
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        self._done.set()
        self._thread.join(5)
        cpu1, busy1, wall = self.cpu_seconds(), machine_busy_s(), time.monotonic() - self._t0
        per: dict[str, dict[str, Any]] = defaultdict(lambda: {"pids": [], "cpu_pct": 0.0})
        for pid, (name, secs) in cpu1.items():  # a process born in the window counts from zero
            per[name]["pids"].append(pid)
            per[name]["cpu_pct"] += 100 * (secs - self._cpu0.get(pid, (name, 0.0))[1]) / wall
        for name, values in self.rss.items():
            per[name].update(rss_mib_mean=float(np.mean(values)), rss_mib_max=float(np.max(values)))
        ours, machine = sum(p["cpu_pct"] for p in per.values()), 100 * (busy1 - self._busy0) / wall
        steal = 100 * (psutil.cpu_times().steal - self._steal0) / wall  # taken by the hypervisor
        return {
            "processes": dict(per),
            "cpu_pct_daemon": sum(p["cpu_pct"] for n, p in per.items() if "harness" not in n),
            "cpu_pct_ours": ours,
            "cpu_pct_machine": machine,  # 100 = one core, like the per-process figures
            "cpu_pct_others": max(0.0, machine - ours),
            "cpu_pct_steal": steal,
        }


def machine_busy_s() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - t.iowait


def scrape(daemon: DaemonProcess) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(daemon.metrics()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric_figures(before: dict, after: dict, cameras: list[str], seconds: float) -> dict[str, Any]:
    """Counter and histogram deltas over the window, per camera and in total."""

    def d(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    def mean_ms(histogram: str) -> float | None:
        n = d(f"{histogram}_count")
        return 1000 * d(f"{histogram}_sum") / n if n else None

    per_camera = {}
    for cam in cameras:
        c = {k: d(f"vistream_frames_{k}_total", camera=cam) for k in ("decoded", "sampled", "inferred")}
        c |= {f"dropped_{r}": d("vistream_frames_dropped_total", camera=cam, reason=r) for r in REASONS}
        # Not zero, may be negative: `sampled` is live (ring header) while the scheduler's counts reach
        # /metrics in snapshots sent between batches, and `overwritten` is only counted at the next take.
        c["unaccounted"] = c["sampled"] - c["inferred"] - sum(c[f"dropped_{r}"] for r in REASONS)
        c["reconnects"] = d("vistream_camera_reconnects_total", camera=cam)
        per_camera[cam] = c
    total = {k: sum(c[k] for c in per_camera.values()) for k in per_camera[cameras[0]]}
    batches, frames = d("vistream_batch_size_count"), d("vistream_batch_size_sum")
    infer_s = d("vistream_inference_seconds_sum")
    deltas = {(n, lb): v - before.get((n, lb), 0.0) for (n, lb), v in after.items()}
    return {
        "per_camera": per_camera,
        "total": total,
        "per_second": {k: v / seconds for k, v in total.items()},
        "batches": batches,
        "batches_per_s": batches / seconds,
        "batch_size_mean": frames / batches if batches else None,
        "inference_ms_per_batch": mean_ms("vistream_inference_seconds"),
        "inference_ms_per_frame": 1000 * infer_s / frames if frames else None,
        "inference_busy_pct": 100 * infer_s / seconds,  # share of the window the model was running
        "frame_age_ms_mean": mean_ms("vistream_frame_age_seconds"),
        "e2e_ms_mean": mean_ms("vistream_e2e_latency_seconds"),
        "all_deltas": {f"{n}{dict(lb)}": v for (n, lb), v in deltas.items() if v},  # histogram buckets too
    }


def percentiles(seconds: list[float]) -> dict[str, Any]:
    if not seconds:
        return {"n": 0}
    ms = np.asarray(seconds) * 1000
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "n": len(ms),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "max_ms": ms.max(),
        "mean_ms": ms.mean(),
    }


def detection_figures(messages: list[Message], cameras: list[str], window: tuple[float, float]) -> dict:
    """Detections received in the window, per camera and in total."""
    t0, t1 = window
    per: dict[str, list[Message]] = {cam: [] for cam in cameras}
    for m in messages:
        parts = m.topic.split("/")
        if t0 <= m.timestamp < t1 and len(parts) == 3 and parts[2] == "detections":
            per.setdefault(parts[1], []).append(m)
    every = [m for msgs in per.values() for m in msgs]
    per_camera = {cam: received(msgs, t1 - t0) for cam, msgs in per.items()}
    return {"per_camera": per_camera, **received(every, t1 - t0)}


def received(msgs: list[Message], seconds: float) -> dict[str, Any]:
    """Rate, objects per frame, and latency from capture to publish and to receive."""
    # Messages carry monotonic receive times, payloads Unix times. Over a run of minutes the two clocks
    # drift apart by far less than a millisecond, so one offset converts them.
    to_wall = time.time() - time.monotonic()
    docs = [m.json() for m in msgs]
    receive = [m.timestamp + to_wall - doc["captured_at"] for m, doc in zip(msgs, docs, strict=True)]
    return {
        "messages": len(docs),
        "fps": len(docs) / seconds,
        "objects_per_frame": float(np.mean([len(doc["objects"]) for doc in docs])) if docs else None,
        "capture_to_publish": percentiles([doc["published_at"] - doc["captured_at"] for doc in docs]),
        "capture_to_receive": percentiles(receive),
    }


def wait_ready(sub: Subscriber, daemon: DaemonProcess, cameras: list[str], timeout: float = 180) -> None:
    """Until `{prefix}/status` and every camera's status are `online`; fail early if the daemon exits."""
    topics = {f"{PREFIX}/status", *(f"{PREFIX}/{cam}/status" for cam in cameras)}
    deadline = time.monotonic() + timeout
    while True:
        last = {m.topic: m.payload for m in sub.messages if m.topic in topics}
        if all(last.get(t) == b"online" for t in topics):
            return
        check_alive(daemon)
        if time.monotonic() > deadline:
            raise TimeoutError(f"daemon not ready after {timeout} s; status so far: {last}")
        time.sleep(0.2)


def check_alive(daemon: DaemonProcess) -> None:
    assert daemon.proc is not None
    if daemon.proc.poll() is not None:
        raise RuntimeError(f"daemon exited with {daemon.proc.returncode}:\n{daemon.log[-4000:]}")


def stop_if_running(daemon: DaemonProcess) -> None:
    # On Ctrl-C or an error: SIGTERM first, so the daemon unlinks its shared memory; SIGKILL only
    # when it does not stop (DaemonProcess's own exit goes straight to SIGKILL).
    if daemon.proc is not None and daemon.proc.poll() is None:
        daemon.terminate()


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
        wait_ready(sub, daemon, cameras)
        result["ready_after_s"] = time.monotonic() - t_start
        print(f"ready after {result['ready_after_s']:.1f} s; warming up {args.warmup} s ...")
        time.sleep(args.warmup)
        check_alive(daemon)

        print(f"measuring {args.seconds} s ...")
        watch = ProcessWatch(daemon.proc.pid)
        before, t0 = scrape(daemon), time.monotonic()
        watch.start()
        time.sleep(args.seconds)
        after, t1 = scrape(daemon), time.monotonic()
        result["processes"] = watch.stop()
        check_alive(daemon)
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
        detector.infer(n)  # untimed: the first call at a shape pays for allocations
        times: list[float] = []
        deadline = time.monotonic() + args.model_seconds
        while len(times) < 3 or time.monotonic() < deadline:
            t = time.perf_counter()
            detector.infer(n)
            times.append(time.perf_counter() - t)
        b = {"calls": len(times), "ms_per_batch_median": 1000 * float(np.median(times))}
        b |= {"ms_per_image": 1000 * sum(times) / (n * len(times)), "img_per_s": n * len(times) / sum(times)}
        result["batches"][n] = b
        print(f"batch {n}: {b['img_per_s']:.2f} img/s, {b['ms_per_batch_median']:.0f} ms/batch (median)")
    detector.close()
    result["load_end"] = os.getloadavg()
    return result


def cell(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def table(header: list[str], rows: list[list[Any]]) -> None:
    """First column left-aligned, the rest right-aligned."""
    cells = [header, *([cell(v) for v in row] for row in rows)]
    widths = [max(map(len, col)) for col in zip(*cells, strict=True)]
    for row in cells:
        print(
            row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)), sep="  "
        )


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
    header = ["camera", "mqtt", "decoded", "sampled", "inferred", "stale", "overwr", "failed", "unatt."]
    header.append("unacc.")
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
