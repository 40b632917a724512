"""Running `vistream run` as a real subprocess, as systemd would: for `vistream bench`, the benchmarks and
the integration tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

VISTREAM = [sys.executable, "-m", "vistream"]


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of metric `name` on a /metrics page whose labels include `labels`."""
    total = 0.0
    for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? ([\d.e+-]+)$", text, re.M):
        if all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def base_config(model: Path, mqtt_port: int, metrics_port: int, client_id: str, cameras: list[dict]) -> dict:
    return {
        "model": {"path": str(model), "device": "cpu", "imgsz": 640},
        "batching": {"max_batch": 4, "max_wait_ms": 10, "max_frame_age_ms": 1000},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "client_id": client_id, "topic_prefix": client_id},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "cameras": cameras,
    }


class DaemonProcess:
    """`vistream run -c CONFIG` in a subprocess; always stopped (SIGKILL at worst) on exit."""

    def __init__(
        self,
        config: dict,
        workdir: Path,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        metrics_port: int | None = None,
    ) -> None:
        """`args`: more arguments for `vistream run`; `metrics_port`: where its HTTP server listens when
        that is not the config's `metrics.port` (a shard's is `metrics.port + K`)."""
        self.config = config
        self.args = args or []
        self.metrics_port = metrics_port or config["metrics"]["port"]
        self.path = workdir / "config.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "daemon.log"
        self._env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    def start(self) -> Self:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*VISTREAM, "run", "-c", str(self.path), *self.args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._env,
        )
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self, timeout: float = 60.0) -> str:
        """The /metrics page, waiting for the endpoint to come up (the daemon may still be starting)."""
        port = self.metrics_port
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    return resp.read().decode()
            except OSError:
                if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                    raise
                time.sleep(0.2)

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of the /metrics page (0 when absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            sample, _, rest = key.partition("{")
            got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
            if sample == name and got == want:
                return float(value)
        return 0.0

    def wait_metric(self, name: str, at_least: float, timeout: float = 10.0, **labels: str) -> float:
        """Poll one sample until it reaches `at_least`: scheduler figures reach /metrics once a second."""
        deadline = time.monotonic() + timeout
        while (value := self.metric(name, **labels)) < at_least and time.monotonic() < deadline:
            time.sleep(0.2)
        return value

    def terminate(self, timeout: float = 15.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took to exit)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.exit_code = self.proc.wait()
        return self.exit_code, time.monotonic() - t0

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Any:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        if exc is not None:  # the daemon's own account is what explains a failure
            sys.stderr.write(f"\n--- daemon log ---\n{self.log[-8000:]}\n")
