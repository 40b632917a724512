"""What benchmarks/soak.py measures and decides, apart from running the parts: a sample of the
daemon's processes (RSS, descriptors), its shared memory, the detections' latency, the checks
on a finished run, and the PNG.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import psutil

from vistream.bench.measure import label
from vistream.bench.mosquitto import Subscriber

MIB = 1024 * 1024
SHM_DIR = Path("/dev/shm")
RSS_GROWTH = 0.05  # the bound: RSS may grow at most 5 % after the warm-up
RSS_NOISE_MIB = 1.0  # growth below this is allocator noise, even where it is 5 % of a small process
WARMUP_S = 300.0  # the warm-up: "after the first 5 minutes"
SHORT_RUN_S = 600.0  # runs shorter than this take WARMUP_SHARE of their length as warm-up instead
WARMUP_SHARE = 0.4
FLOOR_OF = 3  # samples whose lowest value is the baseline, and the end (see growth())
SETTLE_S = 10.0  # a fault is scheduled only when it is over this long before the run ends


def warmup_s(duration_s: float) -> float:
    """5 minutes, or 40 % of a run shorter than 10 minutes (5 of 9 minutes would leave little)."""
    return WARMUP_S if duration_s >= SHORT_RUN_S else WARMUP_SHARE * duration_s


def duration_s(text: str) -> float:
    """`5` or `5m`: minutes; `50s`: seconds."""
    if text.endswith("s"):
        return float(text[:-1])
    return 60 * float(text.removesuffix("m"))


def schedule(duration: float, every: float, outage: float, cameras: list[str]) -> list[dict[str, Any]]:
    """Cycle k (from 1): the broker away from k*every, a camera (each in turn) from k*every + every/2,
    each for `outage` s; only faults that are over SETTLE_S before the end."""
    faults: list[dict[str, Any]] = []
    k = 1
    while k * every + outage + SETTLE_S <= duration:
        t = k * every
        faults.append({"kind": "broker", "target": "mosquitto", "start_s": t, "end_s": t + outage})
        t += every / 2
        if t + outage + SETTLE_S <= duration:
            target = cameras[(k - 1) % len(cameras)]
            faults.append({"kind": "camera", "target": target, "start_s": t, "end_s": t + outage})
        k += 1
    return faults


def processes(daemon_pid: int) -> dict[str, dict[str, Any]]:
    """The daemon and every descendant, by role (`main`, `reader street1`, ...): pid, RSS, fds, and
    the TCP sockets among the fds."""
    out: dict[str, dict[str, Any]] = {}
    with suppress(psutil.NoSuchProcess):
        root = psutil.Process(daemon_pid)
        for proc in [root, *root.children(recursive=True)]:
            with suppress(psutil.Error):  # it exited while we looked
                with proc.oneshot():
                    name = label(proc, daemon_pid)
                    figures = {
                        "pid": proc.pid,
                        "rss_mib": round(proc.memory_info().rss / MIB, 2),
                        "fds": proc.num_fds(),
                        "tcp": len(proc.net_connections(kind="tcp")),
                    }
                key, n = name, 2
                while key in out:  # two live processes of one role (a restart overlapping)
                    key, n = f"{name}#{n}", n + 1
                out[key] = figures
    return out


def http_clients(daemon_pid: int, port: int) -> int:
    """Established connections to the daemon's HTTP port: the status page's browser keeps up to 6
    (Chromium's per-host limit) and their number changes from one request to the next."""
    with suppress(psutil.Error):
        conns = psutil.Process(daemon_pid).net_connections(kind="tcp")
        return sum(1 for c in conns if c.laddr and c.laddr.port == port and c.status == "ESTABLISHED")
    return 0


def shm_use(instance: str, shm_dir: Path = SHM_DIR) -> dict[str, int]:
    """The daemon's shared-memory segments (`vistream.<instance>.*`): how many, their sizes, and the
    bytes the kernel has actually allocated for them (tmpfs pages touched)."""
    segments = sizes = allocated = 0
    for path in shm_dir.glob(f"vistream.{instance}.*"):
        with suppress(OSError):  # unlinked while we looked
            st = path.stat()
            segments, sizes, allocated = segments + 1, sizes + st.st_size, allocated + st.st_blocks * 512
    return {"segments": segments, "bytes": sizes, "allocated_bytes": allocated}


class DetectionLog(Subscriber):
    """A subscriber to `{prefix}/#` that keeps the status messages (for `wait_ready`) and, of the
    detections, only their latencies: a half-hour run would otherwise hold every payload."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        super().__init__(host, port, f"{prefix}/#", qos=0)
        self._lock = threading.Lock()
        self._latency: list[tuple[float, float]] = []  # (capture to publish, capture to receive), s
        self._per_camera: dict[str, int] = {}

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/detections"):
            received = time.time()
            doc = json.loads(msg.payload)
            with self._lock:
                self._latency.append(
                    (doc["published_at"] - doc["captured_at"], received - doc["captured_at"])
                )
                self._per_camera[doc["camera"]] = self._per_camera.get(doc["camera"], 0) + 1
        elif msg.topic.endswith("/status"):
            super()._on_message(client, userdata, msg)

    def status(self, topic: str) -> bytes | None:
        """The last payload of a status topic, None before any."""
        last = [m.payload for m in self.messages if m.topic == topic]
        return last[-1] if last else None

    def take(self) -> dict[str, Any]:
        """Latency percentiles (ms) and detections per camera since the last take."""
        with self._lock:
            latency, self._latency = self._latency, []
            per_camera, self._per_camera = self._per_camera, {}
        out: dict[str, Any] = {"detections": len(latency), "detections_per_camera": per_camera}
        for i, name in enumerate(("capture_to_publish", "capture_to_receive")):
            ms = np.array([pair[i] for pair in latency]) * 1000
            out[name] = (
                {
                    "p50_ms": round(float(np.percentile(ms, 50)), 1),
                    "p95_ms": round(float(np.percentile(ms, 95)), 1),
                    "max_ms": round(float(ms.max()), 1),
                }
                if len(ms)
                else None
            )
        return out


def event_ledger(messages: list[Any]) -> dict[str, Any]:
    """From the messages of `{prefix}/events` (delivery is at least once: repeats are dropped by id):
    the ids of the events started and ended, and those whose end or start never came."""
    starts, ends, restart_ends = set(), set(), set()
    for m in messages:
        doc = m.json()
        if doc["type"] == "start":
            starts.add(doc["id"])
        elif doc["type"] == "end":
            ends.add(doc["id"])
            if doc.get("reason") == "restart":
                restart_ends.add(doc["id"])
    return {
        "messages": len(messages),
        "started": len(starts),
        "ended": len(ends),
        "ended_by_restart": len(restart_ends),
        "start_without_end": sorted(starts - ends),
        "end_without_start": sorted(ends - starts),
    }


def growth(samples: list[dict[str, Any]], warmup: float) -> dict[str, Any]:
    """From the quiet samples (no fault running, the broker and every camera connected) at or after
    the warm-up: the baseline is the floor (lowest value) of the first FLOOR_OF of them, the end the
    floor of the last FLOOR_OF (the final sample among them), fewer when there are not twice as many.
    A leak lifts every sample, a passing allocation (a snapshot, a scrape) only one: floors tell them
    apart. RSS (the sum and each process) may grow RSS_GROWTH (and at least RSS_NOISE_MIB);
    descriptors (without the browser's connections) and shared memory not at all."""
    quiet = [s for s in samples if s["quiet"] and s["t_s"] >= warmup]
    if len(quiet) < 2:
        return {
            "error": f"{len(quiet)} quiet sample(s) after the warm-up ({warmup:.0f} s): nothing to compare"
        }
    k = min(FLOOR_OF, len(quiet) // 2)
    first, last = quiet[:k], quiet[-k:]

    def floor(window: list[dict[str, Any]], value: Callable[[dict[str, Any]], float]) -> float:
        return min(value(s) for s in window)

    def grew(before: float, after: float) -> bool:
        return after - before > max(RSS_GROWTH * before, RSS_NOISE_MIB)

    per_process = {}
    for name in last[-1]["processes"]:
        if all(name in s["processes"] for s in first + last):

            def rss(s: dict[str, Any], name: str = name) -> float:
                return s["processes"][name]["rss_mib"]

            before, after = floor(first, rss), floor(last, rss)
            per_process[name] = {"rss_mib": [before, after], "rss_grew": grew(before, after)}
    rss_sum = [floor(w, lambda s: s["rss_mib_sum"]) for w in (first, last)]
    fds = [floor(w, lambda s: s["fds_own"]) for w in (first, last)]
    shm = [floor(w, lambda s: s["shm"]["bytes"]) for w in (first, last)]
    return {
        "baseline_t_s": [s["t_s"] for s in first],
        "final_t_s": [s["t_s"] for s in last],
        "rss_mib_sum": rss_sum,
        "rss_sum_grew": grew(*rss_sum),
        "rss_grew_in": sorted(name for name, p in per_process.items() if p["rss_grew"]),
        "fds": fds,
        "fds_grew": fds[1] > fds[0],
        "shm_bytes": shm,
        "shm_segments": [first[0]["shm"]["segments"], last[-1]["shm"]["segments"]],
        "shm_grew": shm[1] > shm[0],
        "processes_baseline": sorted(first[0]["processes"]),
        "processes_final": sorted(last[-1]["processes"]),
        "per_process": per_process,
    }


def verdict(growth_: dict[str, Any], events: dict[str, Any], daemon_alive: bool) -> list[str]:
    """Why the run failed (empty when it passed), from `growth` and `events` (the ledger with
    `lost`, `vistream_events_total` and `metrics_error`; empty when the daemon died before the end)."""
    why = []
    if not daemon_alive:
        why.append("the daemon exited during the run")
    if "error" in growth_:
        why.append(growth_["error"])
    else:
        if growth_["rss_sum_grew"]:
            before, after = growth_["rss_mib_sum"]
            why.append(
                f"RSS of the daemon's processes together grew by more than 5 %: {before} -> {after} MiB"
            )
        why += [
            f"RSS of {name} grew by more than 5 %: {growth_['per_process'][name]['rss_mib']}"
            for name in growth_["rss_grew_in"]
        ]
        if growth_["fds_grew"]:
            why.append("open file descriptors grew: {} -> {}".format(*growth_["fds"]))
        if growth_["shm_grew"]:
            why.append("shared memory grew: {} -> {} bytes".format(*growth_["shm_bytes"]))
    if events.get("metrics_error"):
        why.append(f"events started cannot be counted: {events['metrics_error']}")
    lost, no_end, no_start = (
        events.get("lost", 0),
        events.get("start_without_end", []),
        events.get("end_without_start", []),
    )
    if lost or no_end or no_start:
        why.append(
            f"events lost: {lost} started but their start never delivered, {len(no_end)} without their end, "
            f"{len(no_start)} without their start"
        )
    return why


def plot(report: dict[str, Any], path: Path) -> None:
    """RSS, descriptors, shared memory and latency against time, the faults shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    t = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(10, 12), sharex=True)
    ax = axes[0]
    ax.plot(t, [s["rss_mib_sum"] for s in samples], "k-", lw=2, label="sum")
    for name in sorted({n for s in samples for n in s["processes"]}):
        ax.plot(t, [s["processes"].get(name, {}).get("rss_mib", np.nan) for s in samples], lw=1, label=name)
    ax.set_ylabel("RSS (MiB)")
    ax.legend(fontsize=7, ncol=3)
    axes[1].plot(t, [s["fds"] for s in samples], label="all")
    axes[1].plot(t, [s["fds_own"] for s in samples], label="without the browser's HTTP connections")
    axes[1].set_ylabel("open fds")
    axes[1].legend(fontsize=7)
    axes[2].plot(t, [s["shm"]["allocated_bytes"] / MIB for s in samples])
    axes[2].set_ylabel("/dev/shm (MiB)")
    for key in ("p50_ms", "p95_ms"):
        axes[3].plot(t, [(s["capture_to_publish"] or {}).get(key, np.nan) for s in samples], label=key)
    axes[3].set_ylabel("capture to publish (ms)")
    axes[3].set_xlabel("minutes since the daemon was ready")
    axes[3].legend(fontsize=7)
    for ax in axes:
        for fault in report["faults"]:
            color = "tab:red" if fault["kind"] == "broker" else "tab:orange"
            ax.axvspan(fault["start_s"] / 60, fault["end_s"] / 60, color=color, alpha=0.15)
        ax.axvline(report["warmup_s"] / 60, color="grey", ls="--", lw=1)
    fig.suptitle("vistream soak: red = broker outage, orange = camera outage, dashed = end of warm-up")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
