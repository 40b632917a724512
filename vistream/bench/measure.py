"""Measuring a running daemon: /metrics deltas, MQTT latency, per-process CPU and RSS, the machine.

Shared by `vistream bench` (vistream.bench.compare) and benchmarks/pipeline.py.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import threading
import time
from collections import defaultdict
from contextlib import suppress
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from vistream.bench.daemon import DaemonProcess
from vistream.bench.mosquitto import Message, Subscriber
from vistream.ops.stats import DROP_REASONS

MIB = 1024 * 1024
REASONS = DROP_REASONS  # every reason /metrics counts drops by
# Distribution names: Ultralytics is installed as its headless build.
DISTS = {"vistream": "vistream", "torch": "torch", "ultralytics": "ultralytics-opencv-headless", "av": "av"}


def version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


PRECISION_FLAGS = {"avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_int8", "avx512_vnni"}


def machine_info() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": model.group(1) if model else None,
        # What decides OpenVINO's precisions (model.precision): bf16 and fp16 units, AMX.
        "cpu_precision_flags": sorted(set(flags.group(1).split()) & PRECISION_FLAGS) if flags else [],
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
    if cmd.startswith("vistream-bench: "):  # the benchmark's own workers (vistream.bench)
        return cmd.removeprefix("vistream-bench: ")
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
    """Every sample of the daemon's /metrics: (name, sorted labels) -> value."""
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
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    return {
        "n": len(ms),
        "p50_ms": p50,
        "p90_ms": p90,
        "p95_ms": p95,
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


def wait_ready(
    sub: Subscriber, daemon: DaemonProcess, prefix: str, cameras: list[str], timeout: float = 180
) -> None:
    """Until `{prefix}/status` and every camera's status are `online`; fail early if the daemon exits."""
    topics = {f"{prefix}/status", *(f"{prefix}/{cam}/status" for cam in cameras)}
    deadline = time.monotonic() + timeout
    while True:
        last = {m.topic: m.payload for m in sub.messages if m.topic in topics}
        if all(last.get(t) == b"online" for t in topics):
            return
        check_alive(daemon)
        if time.monotonic() > deadline:
            raise TimeoutError(f"daemon not ready after {timeout} s; status so far: {last}")
        time.sleep(0.2)


def measure_window(daemon: DaemonProcess, seconds: float) -> tuple[dict, dict, tuple[float, float], dict]:
    """/metrics at the start and end of a window of `seconds`, the window (monotonic), and the CPU and
    RSS of every process over it; fails when the daemon exited meanwhile."""
    assert daemon.proc is not None
    watch = ProcessWatch(daemon.proc.pid)
    before, t0 = scrape(daemon), time.monotonic()
    watch.start()
    time.sleep(seconds)
    after, t1 = scrape(daemon), time.monotonic()
    processes = watch.stop()
    check_alive(daemon)
    return before, after, (t0, t1), processes


def check_alive(daemon: DaemonProcess) -> None:
    assert daemon.proc is not None
    if daemon.proc.poll() is not None:
        raise RuntimeError(f"daemon exited with {daemon.proc.returncode}:\n{daemon.log[-4000:]}")


def stop_if_running(daemon: DaemonProcess) -> None:
    # On Ctrl-C or an error: SIGTERM first, so the daemon unlinks its shared memory; SIGKILL only
    # when it does not stop (DaemonProcess's own exit goes straight to SIGKILL).
    if daemon.proc is not None and daemon.proc.poll() is None:
        daemon.terminate()


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


def histogram_quantile(before: dict, after: dict, name: str, q: float) -> float | None:
    """The q-quantile (0..1) of histogram `name` over the window, in seconds, from its bucket deltas,
    interpolated linearly within the bucket as Prometheus' histogram_quantile() does; None when the
    histogram is absent or saw nothing. Samples past the last finite bound give that bound."""
    buckets: dict[float, float] = defaultdict(float)
    for (sample, labels), value in after.items():
        if sample == f"{name}_bucket":
            le = float(dict(labels)["le"])
            buckets[le] += value - before.get((sample, labels), 0.0)  # summed over other labels
    total = buckets.get(float("inf"), 0.0)
    if total <= 0:
        return None
    rank, prev_bound, prev_count = q * total, 0.0, 0.0
    for bound in sorted(buckets):
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            share = (rank - prev_count) / (count - prev_count) if count > prev_count else 1.0
            return prev_bound + (bound - prev_bound) * share
        prev_bound, prev_count = bound, count
    return prev_bound


def time_infer(detector: Any, n: int, seconds: float) -> dict[str, Any]:
    """Time `detector.infer(n)` on what its input buffer holds for `seconds` (at least 3 calls),
    after one untimed call (the first call at a shape pays for allocations)."""
    detector.infer(n)
    times: list[float] = []
    deadline = time.monotonic() + seconds
    while len(times) < 3 or time.monotonic() < deadline:
        t = time.perf_counter()
        detector.infer(n)
        times.append(time.perf_counter() - t)
    return {
        "calls": len(times),
        "ms_per_batch_median": 1000 * float(np.median(times)),
        "ms_per_batch_p99": 1000 * float(np.percentile(times, 99)),
        "ms_per_image": 1000 * sum(times) / (n * len(times)),
        "img_per_s": n * len(times) / sum(times),
    }
