"""What the daemon's HTTP side costs: response times with 16 cameras, and one open status page.

Runs the real daemon with 16 file cameras (the 480p crowd clip, looped, `detect_fps` 1, so the
box is busy decoding but not saturated) against the test harness's Mosquitto, then:

1. times `/metrics`, `/api/cameras` and one camera's `latest.jpg`, sequential requests, p50/p99;
2. measures the main process's CPU over a window without a browser, then with headless Chromium
   showing `/` (every tile's image refreshes every couple of seconds), and reports the difference
   as % of one core.

    .venv/bin/python benchmarks/status_page.py [--seconds 30] [--requests 50] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from pipeline import CLIPS, MODEL  # noqa: E402
from support.daemon import DaemonProcess, base_config  # noqa: E402
from support.mosquitto import Mosquitto  # noqa: E402
from support.procs import free_port  # noqa: E402

CAMERAS = 16


def timed(url: str, n: int) -> dict[str, float]:
    ms = []
    for _ in range(n):
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as resp:
            resp.read()
        ms.append(1000 * (time.perf_counter() - t0))
    ms.sort()
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2),
        "max_ms": round(ms[-1], 2),
    }


def main_cpu(pid: int, seconds: float) -> float:
    """% of one core the daemon's main process used over `seconds`."""
    proc = psutil.Process(pid)
    before = proc.cpu_times()
    time.sleep(seconds)
    after = proc.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return round(100 * used / seconds, 1)


def browser(url: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.get(url)
    return driver


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "status-page-cpu.json")
    args = ap.parse_args()
    with Mosquitto() as broker, tempfile.TemporaryDirectory() as tmp:
        cams = [{"name": f"cam{i:02d}", "url": str(CLIPS["crowd"]), "detect_fps": 1} for i in range(CAMERAS)]
        cfg = base_config(MODEL, broker.port, free_port(), "vshttp", cams)
        cfg["batching"]["max_batch"] = 8
        port = cfg["metrics"]["port"]
        base = f"http://127.0.0.1:{port}"
        with DaemonProcess(cfg, Path(tmp)) as daemon:
            assert daemon.proc is not None
            deadline = time.monotonic() + 180
            while daemon.metric("vistream_frames_inferred_total", camera=f"cam{CAMERAS - 1:02d}") < 3:
                if time.monotonic() > deadline:
                    raise SystemExit("cameras did not start")
                time.sleep(1)
            time.sleep(5)
            result: dict[str, Any] = {"cameras": CAMERAS}
            for path in ("/metrics", "/api/cameras", "/api/cameras/cam00/latest.jpg", "/healthz"):
                result[path] = timed(base + path, args.requests)
            result["main_cpu_pct_no_browser"] = main_cpu(daemon.proc.pid, args.seconds)
            driver = browser(base + "/")
            try:
                time.sleep(5)  # the page loads every tile once
                result["main_cpu_pct_with_status_page"] = main_cpu(daemon.proc.pid, args.seconds)
            finally:
                driver.quit()
            result["status_page_cpu_pct"] = round(
                result["main_cpu_pct_with_status_page"] - result["main_cpu_pct_no_browser"], 1
            )
            daemon.terminate()
    print(json.dumps(result, indent=2))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
