"""A real Prometheus server (Debian's `prometheus`) on a free port, and `promtool`.

`Prometheus(config)` writes the config to a temp dir, starts the server with its storage there and
`with` stops it and removes both. The config is a prometheus.yml as a dict: `config_for()` makes one
that scrapes a daemon every second, the smallest or samples/prometheus/prometheus.yml adapted.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import yaml

from vistream.bench.procs import ServerProcess

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"


def missing_dependency() -> str | None:
    """Why no Prometheus server can be started, or rules checked, on this machine; None when they can."""
    for binary in (PROMETHEUS, PROMTOOL):
        if not os.access(binary, os.X_OK):
            return f"{binary} not found (Debian package prometheus)"
    return None


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`promtool ARGS`; the caller checks returncode (its output says what is wrong)."""
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def config_for(target: str, config_file: Path | None = None, interval_s: float = 1.0) -> dict[str, Any]:
    """A prometheus.yml (as a dict) that scrapes `target` (host:port, path /metrics) every `interval_s`.

    From `config_file` (samples/prometheus/prometheus.yml, say) when given: its one scrape job gets
    `target`, its rule files are resolved against its folder; otherwise a job `vistream` and no rules.
    """
    every = f"{int(interval_s * 1000)}ms"
    if config_file is None:
        config: dict[str, Any] = {"scrape_configs": [{"job_name": "vistream"}]}
    else:
        config = yaml.safe_load(config_file.read_text())
        config["rule_files"] = [str(config_file.parent / p) for p in config.get("rule_files") or []]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    config["global"] = {**config.get("global", {}), "scrape_interval": every, "evaluation_interval": every}
    return config


class Prometheus(ServerProcess):
    """`with Prometheus(config) as prom:` a server on prom.url until the block ends.

    `query(expr)` runs an instant query through the HTTP API and returns its result vector;
    `wait_for(expr, predicate)` polls until the result satisfies the predicate.
    """

    program = "prometheus"
    stop_timeout = 10.0
    log_tail = 4000

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.url = f"http://{self.host}:{self.port}"
        self.config_path = self._dir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def command(self) -> list[str]:
        return [
            PROMETHEUS,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self._dir / 'data'}",
            f"--web.listen-address={self.host}:{self.port}",
        ]

    def start(self, timeout: float = 30.0) -> Self:
        return super().start(timeout)

    def _wait_ready(self, timeout: float) -> None:
        """The port opens before the TSDB is loaded; /-/ready answers 200 once queries work."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}/-/ready not 200 after {timeout} s")
            time.sleep(0.1)

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/PATH; returns `data`, or raises with Prometheus' error (a bad query, say)."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                doc = json.load(resp)
        except urllib.error.HTTPError as exc:  # 400/422 carry a JSON body with the reason
            doc = json.load(exc)
        if doc.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query now: [{"metric": {labels}, "value": [time, "text"]}, ...] for a vector."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr!r} gave a {data['resultType']}, not a vector"
        return data["result"]

    def values(self, expr: str, label: str) -> dict[str, float]:
        """The query's samples as {value of `label`: value}."""
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in self.query(expr)}

    def wait_for(
        self, expr: str, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """Poll `expr` until `predicate(result)` holds; the last result and the targets on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate(result := self.query(expr)):
            if time.monotonic() > deadline:
                targets = self.api("targets")["activeTargets"]
                health = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
                raise TimeoutError(f"{expr!r} after {timeout} s: {result}; targets: {health}")
            time.sleep(0.5)
        return result
