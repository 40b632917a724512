"""Soak: the real daemon for a long while, with faults, checked for leaks and lost events.

Starts what the integration tests use (Mosquitto with persistence on, the GStreamer RTSP server
looping the sample clips), runs `vistream run` as a subprocess with 4 cameras (street1, crowd1,
street2, crowd2), the sample config's zones, line and rules, on OpenVINO, and opens its status page
in headless Chromium for the whole run. Then, timed from when every camera is online:

- every `--fault-every` (default 5 min) the broker is stopped for `--outage` s (default 20) and
  started again on the same port, and half a period later one camera (each in turn) stops being
  served for `--outage` s;
- every `--sample-every` s (default 60), and once at the end of the warm-up: RSS and open fds of the
  daemon and each of its children, the bytes of its /dev/shm segments, capture-to-publish latency
  of the detections since the last sample, a few /metrics figures, and whether the page's pictures
  load;
- at the end, once the last fault is over and everything is connected, a final sample; then every
  camera stops, so every open event ends, and the outbox drains.

It fails (exit 1) when, from the first quiet sample after the warm-up (5 min; 40 % of a run under
10 min) to the final one, RSS grew more than 5 % (the sum, or any one process, by at least 1 MiB),
the open fds grew (without the browser's HTTP connections, which come and go), the shared-memory
segments grew, or an event was lost: `vistream_events_total` (counted when the daemon queues a start)
is more than the distinct starts a persistent-session subscriber received, or a start never got its
end, or an end came without its start. Exit 2: something it needs is missing.

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--fault-every 5|50s] [--outage 20]
        [--sample-every 60] [--cameras 4] [--detect-fps 5] [--set KEY=VALUE ...]
        [--out benchmarks/results/soak.json] [--keep DIR]

The JSON goes to `--out`, the plot (RSS, fds, /dev/shm, latency against time) beside it as .png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the real broker/RTSP harness lives with the tests

from pipeline import CLIPS, MODEL, with_alerts  # noqa: E402
from soak_probe import (  # noqa: E402
    SETTLE_S,
    DetectionLog,
    duration_s,
    event_ledger,
    growth,
    http_clients,
    plot,
    processes,
    schedule,
    shm_use,
    verdict,
    warmup_s,
)
from support import mosquitto as mosquitto_support  # noqa: E402
from support import rtsp_server as rtsp_support  # noqa: E402
from support.daemon import DaemonProcess, base_config, metric_sum  # noqa: E402
from support.mosquitto import Mosquitto, Subscriber  # noqa: E402
from support.procs import free_port  # noqa: E402
from support.rtsp_server import RtspServer  # noqa: E402

from vistream.bench.compare import camera_mounts  # noqa: E402
from vistream.bench.measure import machine_info, stop_if_running, wait_ready  # noqa: E402

PREFIX = "vssoak"
SCRAPE_FAILED = "# /metrics failed"  # a failed scrape, as a comment line: no metric in it
IMAGES_JS = "return [...document.querySelectorAll('.tile img')].map(i => i.complete ? i.naturalWidth : 0)"


def setting(text: str) -> tuple[str, Any]:
    """`--set outbox.max_rows=20`: (dotted key, the value as YAML reads it)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, yaml.safe_load(value)


def browser(url: str, profile: Path) -> Any:
    """Headless Chromium showing `url`, as tests/integration/test_browser.py drives it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(
        service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts
    )
    driver.get(url)
    return driver


def missing(cameras: dict[str, Path]) -> list[str]:
    problems = [f"not found: {p}" for p in {MODEL, *cameras.values()} if not p.is_file()]
    problems += filter(None, [mosquitto_support.missing_dependency(), rtsp_support.missing_dependency()])
    problems += [f"{exe} not found" for exe in ("chromium", "chromedriver") if not shutil.which(exe)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        problems.append("selenium is not installed (pip install -e '.[test]')")
    return problems


class Soak:
    """The running parts of one soak, and what it has seen so far."""

    def __init__(self, args: argparse.Namespace, stack: ExitStack, tmp: Path) -> None:
        self.args, self.cameras = args, list(camera_mounts(args.cameras, CLIPS))
        self.broker = stack.enter_context(Mosquitto(persistent=True))
        self.rtsp = stack.enter_context(RtspServer(camera_mounts(args.cameras, CLIPS)))
        cams = [
            {"name": c, "url": self.rtsp.url(c), "detect_fps": args.detect_fps, "reconnect_max_s": 5}
            for c in self.cameras
        ]
        self.port = free_port()
        config = base_config(MODEL, self.broker.port, self.port, PREFIX, cams)
        config["model"]["backend"] = "openvino"
        self.config = with_alerts(config, tmp / "state")
        for key, value in args.set:
            *parents, leaf = key.split(".")
            node = self.config
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        # A persistent session: events published while this client is away (the broker restarting)
        # wait for it in the broker, so what it misses is what the daemon did not deliver.
        self.events = stack.enter_context(
            Subscriber(
                self.broker.host,
                self.broker.port,
                f"{PREFIX}/events",
                client_id="soak-events",
                clean_session=False,
            )
        )
        self.detections = stack.enter_context(DetectionLog(self.broker.host, self.broker.port, PREFIX))
        self.daemon = stack.enter_context(DaemonProcess(self.config, tmp))
        stack.callback(stop_if_running, self.daemon)
        self.stack, self.tmp = stack, tmp
        self.active: set[str] = set()  # faults running now
        self.samples: list[dict[str, Any]] = []
        self.t0 = 0.0

    @property
    def alive(self) -> bool:
        return self.daemon.proc is not None and self.daemon.proc.poll() is None

    def start(self) -> float:
        """Until the daemon and every camera are online, then the status page; seconds it took."""
        t = time.monotonic()
        wait_ready(self.detections, self.daemon, PREFIX, self.cameras)
        self.page = browser(f"http://127.0.0.1:{self.port}/", self.tmp / "chromium")
        self.stack.callback(self.page.quit)
        self.t0 = time.monotonic()
        self.detections.take()  # latency counts from here
        return self.t0 - t

    def connected(self) -> bool:
        topics = [f"{PREFIX}/status", *(f"{PREFIX}/{c}/status" for c in self.cameras)]
        return all(self.detections.status(topic) == b"online" for topic in topics)

    def sample(self, final: bool = False) -> None:
        assert self.daemon.proc is not None
        procs = processes(self.daemon.proc.pid)
        clients = http_clients(self.daemon.proc.pid, self.port)
        fds = sum(p["fds"] for p in procs.values())
        page = self.scrape()
        s = {
            "t_s": round(time.monotonic() - self.t0, 1),
            "final": final,
            "faults": sorted(self.active),
            "quiet": not self.active and self.connected() and self.alive,
            "rss_mib_sum": round(sum(p["rss_mib"] for p in procs.values()), 2),
            "fds": fds,
            "http_clients": clients,
            "fds_own": fds - clients,
            "shm": shm_use(PREFIX),
            "processes": procs,
            **self.detections.take(),
            "events_total": metric_sum(page, "vistream_events_total"),
            "outbox_pending": metric_sum(page, "vistream_outbox_pending"),
            "mqtt_connected": metric_sum(page, "vistream_mqtt_connected"),
            "camera_reconnects": metric_sum(page, "vistream_camera_reconnects_total"),
            "status_page_pictures": self.page_pictures(),
        }
        self.samples.append(s)
        lat = (s["capture_to_publish"] or {}).get("p50_ms")
        print(
            f"{s['t_s']:7.0f} s  RSS {s['rss_mib_sum']:7.1f} MiB  fds {fds:4d} ({clients} http)  "
            f"shm {s['shm']['allocated_bytes'] / 2**20:6.1f} MiB  p50 {lat} ms  "
            f"events {s['events_total']:.0f}  {'quiet' if s['quiet'] else 'faults ' + ','.join(s['faults'])}",
            flush=True,
        )

    def scrape(self) -> str:
        """The /metrics page, asked once (a sample must not wait): an error is recorded as a comment."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
                return resp.read().decode()
        except OSError as exc:
            return f"{SCRAPE_FAILED}: {exc}"

    def page_pictures(self) -> int | str:
        """How many tiles of the status page show a loaded picture (or why the page cannot say)."""
        try:
            return sum(1 for width in self.page.execute_script(IMAGES_JS) if width)
        except Exception as exc:  # any WebDriver failure is a finding, recorded as is
            return f"{type(exc).__name__}: {exc}"[:200]

    def fault(self, fault: dict[str, Any], begin: bool) -> None:
        name = f"{fault['kind']}:{fault['target']}"
        if fault["kind"] == "broker":
            (self.broker.stop if begin else self.broker.start)()
        else:
            (self.rtsp.stop_mount if begin else self.rtsp.start_mount)(fault["target"])
        (self.active.add if begin else self.active.discard)(name)
        key = "start_s" if begin else "end_s"
        fault[key] = round(time.monotonic() - self.t0, 1)
        print(f"{fault[key]:7.0f} s  {'start' if begin else 'end'} of {name} outage", flush=True)

    def run(self, duration: float, faults: list[dict[str, Any]], sample_times: list[float]) -> None:
        """Samples and faults at their times (a sample first when both are due at one moment); an
        outage that began late (a slow sample) still lasts its full length."""
        steps: list[tuple[float, int, dict[str, Any] | None]] = [(t, 0, None) for t in sample_times]
        steps += [(f[key], order, f) for f in faults for order, key in ((1, "start_s"), (2, "end_s"))]
        for at, order, fault in sorted(steps, key=lambda s: s[:2]):
            if fault is not None and order == 2:
                at = max(at, fault["start_s"] + self.args.outage)
            while self.alive and (left := self.t0 + at - time.monotonic()) > 0:
                time.sleep(min(left, 1.0))
            if not self.alive:
                return
            if fault is None:
                self.sample()
            else:
                self.fault(fault, begin=order == 1)
        while self.alive and time.monotonic() < self.t0 + duration:
            time.sleep(1.0)

    def finish(self) -> dict[str, Any]:
        """The final sample once all is connected again; then every camera stops, so every open
        event ends; then the ledger once every start has its end and the outbox is empty."""
        deadline = time.monotonic() + 90
        while self.alive and not self.connected() and time.monotonic() < deadline:
            time.sleep(1.0)
        if not self.alive:
            return {}
        time.sleep(SETTLE_S / 2)  # a camera back online has its ring and reader settled
        self.sample(final=True)
        stopped = time.monotonic()
        for cam in self.cameras:
            self.rtsp.stop_mount(cam)
        # Done when, twice in a row 2 s apart, nothing waits to be written or acknowledged and every
        # start received has its end (an event the outbox evicted never comes: no waiting for it).
        deadline, settled = time.monotonic() + 120, 0
        while self.alive and time.monotonic() < deadline and settled < 2:
            time.sleep(2.0)
            page = self.scrape()
            waiting = sum(
                metric_sum(page, m) for m in ("vistream_outbox_pending", "vistream_alert_messages_unwritten")
            )
            done = (
                waiting == 0
                and not page.startswith(SCRAPE_FAILED)
                and not event_ledger(self.events.messages)["start_without_end"]
            )
            settled = settled + 1 if done else 0
        page = self.scrape()
        ledger = event_ledger(self.events.messages)
        counted = int(metric_sum(page, "vistream_events_total"))
        return ledger | {
            "vistream_events_total": counted,
            "lost": max(0, counted - ledger["started"]),
            "drained_after_s": round(time.monotonic() - stopped, 1) if settled >= 2 else None,
            "metrics_error": page if page.startswith(SCRAPE_FAILED) else None,
            "outbox_pending": metric_sum(page, "vistream_outbox_pending"),
            "outbox_evicted": metric_sum(page, "vistream_outbox_evicted_total"),
            "alert_messages_dropped": metric_sum(page, "vistream_alert_messages_dropped_total"),
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the run (default 30)")
    ap.add_argument(
        "--fault-every",
        type=duration_s,
        default=300.0,
        metavar="MIN|Ns",
        help="a broker and a camera outage this often: minutes, or seconds with s (default 5)",
    )
    ap.add_argument("--outage", type=float, default=20.0, help="seconds each outage lasts (default 20)")
    ap.add_argument("--sample-every", type=float, default=60.0, help="seconds between samples (default 60)")
    ap.add_argument("--cameras", default="4", help="a count (street1, crowd1, street2, ...) or names")
    ap.add_argument("--detect-fps", type=float, default=5.0, help="cameras' detect_fps (default 5)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "soak.json")
    ap.add_argument(
        "--set",
        type=setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config key for the daemon (dotted, YAML value); e.g. outbox.max_rows=20 "
        "makes the outbox evict events in a broker outage, which the loss check must catch",
    )
    ap.add_argument("--keep", type=Path, help="keep the daemon's folder (config, log, state) here")
    args = ap.parse_args()
    problems = missing(camera_mounts(args.cameras, CLIPS))
    if problems:
        print("cannot run the soak:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    duration = 60 * args.minutes
    warmup = warmup_s(duration)
    report: dict[str, Any] = {
        "benchmark": "soak",
        "machine": machine_info(),
        "load_start": os.getloadavg(),
        "settings": {
            "minutes": args.minutes,
            "fault_every_s": args.fault_every,
            "outage_s": args.outage,
            "sample_every_s": args.sample_every,
            "detect_fps": args.detect_fps,
            "backend": "openvino",
            "model": MODEL.name,
            "overrides": dict(args.set),
        },
        "warmup_s": warmup,
    }
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vistream-soak-")))
        soak = Soak(args, stack, tmp)
        report["settings"]["cameras"] = soak.cameras
        report["ready_after_s"] = round(soak.start(), 1)
        print(f"ready after {report['ready_after_s']} s; soaking {args.minutes} min (warm-up {warmup:.0f} s)")
        faults = schedule(duration, args.fault_every, args.outage, soak.cameras)
        times = sorted(
            {*(k * args.sample_every for k in range(int(duration // args.sample_every) + 1)), warmup}
        )
        soak.run(duration, faults, [t for t in times if t <= duration])
        report["events"] = soak.finish()
        report["faults"], report["samples"] = faults, soak.samples
        report["daemon_alive"] = soak.alive
        if soak.alive:
            report["daemon_exit"] = dict(zip(("code", "stop_s"), soak.daemon.terminate(), strict=True))
        else:
            report["daemon_log_tail"] = soak.daemon.log[-4000:]
        if args.keep:
            shutil.copytree(tmp, args.keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("chromium"))
    report["load_end"] = os.getloadavg()
    report["growth"] = growth(report["samples"], warmup)
    report["failures"] = verdict(report["growth"], report["events"], report["daemon_alive"])
    report["passed"] = not report["failures"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    with suppress(ValueError):  # no sample at all: nothing to draw
        plot(report, args.out.with_suffix(".png"))
    print(f"written to {args.out} and {args.out.with_suffix('.png')}")
    print("PASSED" if report["passed"] else "FAILED:\n  " + "\n  ".join(report["failures"]))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
