"""Reloads against the parts other threads are using: rings being read, /dev/shm running short, a
stop asked for in the middle. A real daemon, real RTSP cameras, real signals (issue 19)."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.daemon import DaemonProcess, base_config
from support.mosquitto import Mosquitto
from support.procs import free_port
from support.rtsp_server import RtspServer
from support.waiting import wait_until

pytestmark = pytest.mark.integration

# The injection folder first, then whatever PYTHONPATH the test runs with.
INJECT = os.pathsep.join(
    p
    for p in (
        str(Path(__file__).resolve().parent.parent / "support" / "inject"),
        os.environ.get("PYTHONPATH"),
    )
    if p
)


def get(port: int, path: str, timeout: float = 30) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def cameras(port: int) -> dict[str, dict[str, Any]]:
    """/api/cameras by name; empty while the server is not up yet."""
    try:
        status, body = get(port, "/api/cameras")
    except OSError:
        return {}
    return {c["name"]: c for c in json.loads(body)} if status == 200 else {}


def segments(prefix: str, camera: str) -> list[Path]:
    return list(Path("/dev/shm").glob(f"vistream.{prefix}.*.{camera}"))


def alive(daemon: DaemonProcess) -> bool:
    return daemon.proc is not None and daemon.proc.poll() is None


def reload(daemon: DaemonProcess, cfg: dict[str, Any]) -> None:
    assert daemon.proc is not None
    daemon.path.write_text(yaml.safe_dump(cfg))
    daemon.proc.send_signal(signal.SIGHUP)


def test_a_camera_removed_while_its_ring_is_being_read(
    tmp_path: Path, rtsp_server: RtspServer, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. Cameras keep and drop; in this daemon a snapshot-plane copy takes 3 s and every /metrics
       sample of drop 0.3 s (injected: the real windows are one copy wide).
    2. Once drop has an inferred frame, latest.jpg of drop and a /metrics scrape are started: both
       are inside drop's ring when a reload removes drop.
    3. Neither answers 5xx (before the lifetime rule: SIGSEGV, reading the unmapped segment), the
       daemon lives on, drop's segment leaves /dev/shm, keep is still served.
    4. SIGTERM: exit 0, no traceback."""
    prefix = "ilifetime"
    cams = [
        {"name": "keep", "url": rtsp_server.url("crowd1"), "detect_fps": 3},
        {"name": "drop", "url": rtsp_server.url("crowd2"), "detect_fps": 3},
    ]
    port = free_port()
    cfg = base_config(model_path, mosquitto.port, port, prefix, cams)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {
        "PYTHONPATH": INJECT,
        "VISTREAM_INJECT_SLOW_PLANE_S": "3",
        "VISTREAM_INJECT_SLOW_METRIC": "drop=0.3",
        "VISTREAM_INJECT_MARK_DIR": str(marks),
    }
    with DaemonProcess(cfg, tmp_path, env=env) as daemon:
        wait_until(lambda: cameras(port).get("drop", {}).get("frame"), 120, "drop's first inferred frame")
        wait_until(lambda: segments(prefix, "drop"), 5, "drop's ring")
        answers: dict[str, int] = {}

        def ask(path: str) -> None:
            try:
                answers[path] = get(port, path)[0]
            except OSError:  # the daemon died under the request
                answers[path] = -1

        picture, scrape = "/api/cameras/drop/latest.jpg", "/metrics"
        threads = [threading.Thread(target=ask, args=(p,)) for p in (picture, scrape)]
        for t in threads:
            t.start()
        # Both inside drop's ring (a fixed sleep was not always enough on a busy box: the picture
        # then came after the removal, a 404 that tests nothing).
        wait_until(lambda: {"plane", "metric-drop"} <= {p.name for p in marks.iterdir()}, 20, "both in")
        reload(daemon, {**cfg, "cameras": cams[:1]})
        for t in threads:
            t.join(40)
        assert alive(daemon), f"the daemon died (code {daemon.proc and daemon.proc.poll()})"
        assert answers[picture] in (200, 503) and answers[scrape] == 200, answers
        wait_until(lambda: "reload: stopped drop" in daemon.log, 10, "the reload")
        wait_until(lambda: not segments(prefix, "drop"), 10, "drop's segment unlinked")
        assert set(cameras(port)) == {"keep"}
        assert get(port, "/metrics")[0] == 200
        assert daemon.terminate()[0] == 0
        assert "Traceback" not in daemon.log


def test_a_camera_added_while_shared_memory_is_short(
    tmp_path: Path, rtsp_server: RtspServer, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. A daemon with camera keep; then /dev/shm has no room left (injected: as `--shm-size` would).
    2. A reload adds camera late: it is not started and says so: state `failed` with the reason in
       /api/cameras, vistream_camera_failed 1, an error in the log.
    3. A reload changes late (detect_fps): no crash (before: a KeyError that stopped the daemon).
    4. Room again: within the retry backoff late starts, publishes frames, and is failed no more.
    5. SIGTERM: exit 0, no traceback."""
    prefix = "ishmshort"
    free = tmp_path / "shm-free"
    keep = {"name": "keep", "url": rtsp_server.url("crowd1"), "detect_fps": 3}
    late = {"name": "late", "url": rtsp_server.url("crowd2"), "detect_fps": 3}
    port = free_port()
    cfg = base_config(model_path, mosquitto.port, port, prefix, [keep])
    env = {"PYTHONPATH": INJECT, "VISTREAM_INJECT_SHM_FREE_FILE": str(free)}
    with DaemonProcess(cfg, tmp_path, env=env) as daemon:
        wait_until(lambda: cameras(port).get("keep", {}).get("frame"), 120, "keep's first inferred frame")
        free.write_text("0")
        reload(daemon, {**cfg, "cameras": [keep, late]})
        wait_until(lambda: cameras(port).get("late", {}).get("state") == "failed", 10, "late marked failed")
        assert "shared memory" in cameras(port)["late"]["error"]
        assert daemon.metric("vistream_camera_failed", camera="late") == 1
        assert "camera late not started" in daemon.log
        assert not segments(prefix, "late")

        reload(daemon, {**cfg, "cameras": [keep, {**late, "detect_fps": 2}]})
        wait_until(lambda: "restarted late (detect_fps)" in daemon.log, 10, "the second reload")
        time.sleep(1)
        assert alive(daemon), "the daemon died at the reload that changed the failed camera"
        assert cameras(port)["late"]["state"] == "failed"

        free.unlink()
        wait_until(lambda: cameras(port).get("late", {}).get("frame"), 60, "late started and inferred")
        assert daemon.metric("vistream_camera_failed", camera="late") == 0
        assert cameras(port)["late"]["detect_fps"] == 2
        assert segments(prefix, "late")
        assert daemon.terminate()[0] == 0
        assert "Traceback" not in daemon.log


@pytest.mark.serial
def test_sigterm_during_a_reload_that_replaces_hung_readers(
    tmp_path: Path, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. Eight cameras at an address that takes connections and never answers: every reader hangs
       in its open.
    2. The model is loaded; a reload changes every camera (read_timeout_s): eight readers to replace.
    3. SIGTERM 0.5 s after SIGHUP: the daemon exits 0 within 10 s (systemd's stop budget; before:
       readers stopped one at a time, 2 s each, 11.5 s in all)."""
    prefix = "ireloadstop"
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"rtsp://127.0.0.1:{silent.getsockname()[1]}/nothing"
        cams = [{"name": f"c{i}", "url": url, "open_timeout_s": 30, "read_timeout_s": 10} for i in range(8)]
        port = free_port()
        cfg = base_config(model_path, mosquitto.port, port, prefix, cams)
        with DaemonProcess(cfg, tmp_path) as daemon:
            wait_until(lambda: "ready:" in daemon.log, 120, "the model loaded")
            time.sleep(1)
            reload(daemon, {**cfg, "cameras": [{**c, "read_timeout_s": 12} for c in cams]})
            time.sleep(0.5)
            code, took = daemon.terminate(timeout=30)
            print(f"SIGTERM 0.5 s after SIGHUP: exit {code} after {took:.2f}s")
            assert code == 0 and took < 10, (code, took)
            assert "Traceback" not in daemon.log


def test_a_reload_storm_under_status_page_load(
    tmp_path: Path, rtsp_server: RtspServer, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. Cameras a (always there) and b, c, which reloads add and remove in turn.
    2. 30 SIGHUPs, 0.3 s apart, alternate the configs while 4 clients poll latest.jpg of every
       camera, /api/cameras and /metrics as fast as they can.
    3. No crash, no 5xx; afterwards every camera's state is that of the last config, and no
       /dev/shm segment is left of a camera that is gone; SIGTERM: exit 0, no traceback."""
    prefix = "istorm"
    mounts = {"a": "crowd1", "b": "crowd2", "c": "street1"}
    cam = {n: {"name": n, "url": rtsp_server.url(m), "detect_fps": 3} for n, m in mounts.items()}
    configs = [[cam["a"], cam["b"]], [cam["a"], cam["c"]]]
    port = free_port()
    cfg = base_config(model_path, mosquitto.port, port, prefix, configs[0])
    with DaemonProcess(cfg, tmp_path) as daemon:
        wait_until(lambda: cameras(port).get("b", {}).get("frame"), 120, "b's first inferred frame")
        stop = threading.Event()
        answers: list[tuple[str, int]] = []

        def poll() -> None:
            paths = ["/api/cameras", "/metrics", *(f"/api/cameras/{n}/latest.jpg" for n in cam)]
            while not stop.is_set():
                for path in paths:
                    try:
                        answers.append((path, get(port, path, timeout=10)[0]))
                    except OSError:
                        answers.append((path, -1))

        clients = [threading.Thread(target=poll) for _ in range(4)]
        for t in clients:
            t.start()
        try:
            for i in range(30):
                reload(daemon, {**cfg, "cameras": configs[(i + 1) % 2]})
                time.sleep(0.3)
                assert alive(daemon), f"the daemon died at reload {i + 1}"
        finally:
            stop.set()
            for t in clients:
                t.join(20)
        final = {c["name"] for c in configs[30 % 2]}
        # latest.jpg of a camera just added answers 503 (Retry-After) until its first frame: by design.
        wrong = {(p, a) for p, a in answers if a < 0 or (a >= 500 and not (a == 503 and p.endswith(".jpg")))}
        assert answers and not wrong, wrong
        wait_until(lambda: set(cameras(port)) == final, 20, f"cameras {sorted(final)} in /api/cameras")
        gone = set(cam) - final
        wait_until(lambda: not any(segments(prefix, n) for n in gone), 10, "no segment of a removed camera")
        wait_until(
            lambda: all(c.get("frame") and c["state"] == "streaming" for c in cameras(port).values()),
            60,
            "every camera of the last config streaming and inferred",
        )
        print(f"reload storm: {len(answers)} answers, {sorted({a for _, a in answers})}")
        assert daemon.terminate()[0] == 0
        assert "Traceback" not in daemon.log
    assert not list(Path("/dev/shm").glob(f"vistream.{prefix}.*"))
