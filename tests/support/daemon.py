"""Running `vistream run` as a real subprocess, as systemd would, for integration tests.

`DaemonProcess` and `base_config` live in the package (`vistream bench` runs the daemon the same way).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import psutil

from vistream.bench.daemon import VISTREAM, DaemonProcess, base_config, metric_sum

__all__ = [
    "VISTREAM", "DaemonProcess", "NotifySocket", "base_config", "child", "counter_samples", "metric_sum",
    "unaccounted",
]  # fmt: skip

COUNTER_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def child(daemon: DaemonProcess, title: str) -> psutil.Process:
    """The daemon's child whose process title is `vistream: <title>`."""
    assert daemon.proc is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for proc in psutil.Process(daemon.proc.pid).children():
            try:
                if " ".join(proc.cmdline()).strip() == f"vistream: {title}":
                    return proc
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no child process titled 'vistream: {title}'")


def counter_samples(page: str) -> dict[str, float]:
    """Every counter-like sample of a /metrics page (counters and histogram parts), by full key."""
    out = {}
    for line in page.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, value = line.rpartition(" ")
        if key.partition("{")[0].endswith(COUNTER_SUFFIXES):
            out[key] = float(value)
    return out


def unaccounted(daemon: DaemonProcess, cam: str) -> float:
    """sampled - (inferred + every drop and skip reason), from one scrape: the frames not
    accounted for yet (pending, or not reported yet: the scheduler's figures come once a second)."""
    page = counter_samples(daemon.metrics())
    sampled = page.get(f'vistream_frames_sampled_total{{camera="{cam}"}}', 0.0)
    inferred = page.get(f'vistream_frames_inferred_total{{camera="{cam}"}}', 0.0)
    gone = tuple(f'vistream_frames_{what}_total{{camera="{cam}"' for what in ("dropped", "skipped"))
    return sampled - inferred - sum(v for k, v in page.items() if k.startswith(gone))


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET; collects what the daemon says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.received: list[tuple[float, str]] = []

    def poll(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                break
            self.received.append((time.monotonic(), data.decode()))
        return [m for _, m in self.received]

    def close(self) -> None:
        self.sock.close()
