"""The daemon's HTTP server against a live daemon: health, the JSON API, the latest pictures, /metrics."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import Message
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openvino
import pytest
from support.daemon import DaemonProcess, base_config
from support.mosquitto import Mosquitto
from support.procs import free_port
from support.rtsp_server import RtspServer

pytestmark = pytest.mark.integration

DROP_REASONS = {"stale", "overwritten", "failed", "unattached", "reshape", "backend"}


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    """(status, headers (any case), body) of GET path; 4xx and 5xx are answers too, not exceptions."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def wait_until(what: str, check: Callable[[], Any], timeout: float, daemon: DaemonProcess) -> Any:
    """Poll `check` until it returns something true; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except OSError:  # the server is not up yet
            got = None
        if got:
            return got
        assert daemon.proc is not None and daemon.proc.poll() is None, f"the daemon exited waiting for {what}"
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)


def healthy(port: int) -> bool:
    status, _, body = get(port, "/healthz")
    return status == 200 and body == b"ok\n"


def unhealthy(port: int) -> str | None:
    """The reason /healthz gives for a 503; None while it answers 200."""
    status, _, body = get(port, "/healthz")
    return body.decode() if status == 503 else None


def test_api_and_latest_pictures_of_two_rtsp_cameras(
    tmp_path: Path, rtsp_server: RtspServer, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. Two RTSP cameras (1080p street with a password in its URL, 480p crowd with a zone and a line).
    2. /healthz answers 200 `ok` once the model is loaded; /metrics answers there (no redirect).
    3. /api/cameras lists both, in config order: online and streaming, decoded and inferred rates,
       a fresh last frame, reconnects, drops by reason, the URL without its password.
    4. Each camera's latest.jpg decodes: 1280x720 for the street, the crowd camera's own size;
       asked again with its ETag it is 304; an unknown camera is 404.
    5. /, its script and style, and /api/events answer."""
    prefix = "ithttp"
    street = rtsp_server.url("street1").replace("rtsp://", "rtsp://viewer:hunter2@")
    cameras = [
        {"name": "street", "url": street, "detect_fps": 4},
        {
            "name": "crowd",
            "url": rtsp_server.url("crowd1"),
            "detect_fps": 4,
            "zones": {"door": [[0.1, 0.1], [0.5, 0.1], [0.5, 0.6], [0.1, 0.6]]},
            "lines": {"gate": [[0.6, 0.2], [0.6, 0.9]]},
        },
    ]
    port = free_port()
    cfg = base_config(model_path, mosquitto.port, port, prefix, cameras)
    with DaemonProcess(cfg, tmp_path) as daemon:
        wait_until("/healthz 200", lambda: healthy(port), 120, daemon)
        status, headers, body = get(port, "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert b"vistream_frames_inferred_total" in body

        def streaming() -> list[dict] | None:
            cams = json.loads(get(port, "/api/cameras")[2])
            ok = all(c["online"] and c["frame"] and c["fps_in"] and c["fps_inferred"] for c in cams)
            return cams if ok else None

        cams = wait_until("both cameras online with rates and a frame", streaming, 60, daemon)
        assert [c["name"] for c in cams] == ["street", "crowd"]
        for cam in cams:
            assert cam["state"] == "streaming"
            assert 0 <= cam["last_frame_age_s"] < 5
            assert cam["reconnects"] == 0
            assert set(cam["dropped"]) == DROP_REASONS
            assert all(isinstance(n, int) for n in cam["dropped"].values())
            assert 0 < cam["fps_inferred"] <= cam["fps_in"]
        assert cams[0]["url"] == rtsp_server.url("street1").replace("rtsp://", "rtsp://***@")
        assert (cams[0]["width"], cams[0]["height"]) == (1920, 1080)
        assert b"hunter2" not in get(port, "/api/cameras")[2]

        for cam, size in (("street", (1280, 720)), ("crowd", (cams[1]["width"], cams[1]["height"]))):
            status, headers, jpeg = get(port, f"/api/cameras/{cam}/latest.jpg")
            assert status == 200 and headers["Content-Type"] == "image/jpeg"
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None and (image.shape[1], image.shape[0]) == size
            assert int(headers["X-Frame-Seq"]) > 0
            again = get(port, f"/api/cameras/{cam}/latest.jpg", {"If-None-Match": headers["ETag"]})
            assert again[0] in (200, 304)  # 200 when a newer frame came in meanwhile
        assert get(port, "/api/cameras/nosuch/latest.jpg")[0] == 404

        status, headers, page = get(port, "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b"static/app.js" in page
        assert get(port, "/static/app.js")[0] == 200 and get(port, "/static/style.css")[0] == 200
        assert json.loads(get(port, "/api/events")[2]) == []
        doc = json.loads(get(port, "/api/status")[2])
        assert doc["healthy"] and doc["cameras"] == 2 and doc["cameras_online"] == 2
        # `backend: auto` on a CPU is OpenVINO, and `precision: auto` bf16 where its CPU plugin
        # defaults to it (AMX), fp32 elsewhere: stated in the status, the metric and the startup log.
        default = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
        precision = "bf16" if default == "bf16" else "fp32"
        assert (doc["backend"], doc["precision"]) == ("openvino", precision)
        assert (
            daemon.metric("vistream_model_info", backend="openvino", device="cpu", precision=precision) == 1
        )
        assert f"precision {precision}" in daemon.log and f"(openvino, {precision})" in daemon.log

        code, took = daemon.terminate()
        assert code == 0 and took < 10
    assert "hunter2" not in daemon.log


@pytest.mark.serial
def test_healthz_turns_503_when_the_scheduler_hangs(
    tmp_path: Path, samples_dir: Path, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. A daemon under a 16 s systemd watchdog (WATCHDOG_USEC: progress window 2 s, stall limit
       4 s) with the detector's test hook on (VISTREAM_TEST_FAULT_FILE); /healthz answers 200.
    2. The hook makes the next batch hang: /healthz turns 503 with a one-line reason well within
       the watchdog period; the daemon kills the stuck scheduler (stall limit) and starts another,
       which hangs in turn while the file says so.
    3. The file is removed: the new scheduler loads the model and /healthz is 200 again.
    4. The hook makes batches raise: inference errors are counted and the frames dropped as
       `failed`."""
    fault = tmp_path / "fault"
    port = free_port()
    camera = {"name": "a", "url": str(samples_dir / "crowd-480p.mp4"), "detect_fps": 4}
    cfg = base_config(model_path, mosquitto.port, port, "ithealth", [camera])
    env = {"WATCHDOG_USEC": "16000000", "VISTREAM_TEST_FAULT_FILE": str(fault)}
    with DaemonProcess(cfg, tmp_path, env=env) as daemon:
        wait_until("/healthz 200", lambda: healthy(port), 120, daemon)
        assert daemon.wait_metric("vistream_frames_inferred_total", 1, timeout=30, camera="a") >= 1

        fault.write_text("hang")
        t0 = time.monotonic()
        reason = wait_until("/healthz 503", lambda: unhealthy(port), 16, daemon)
        took = time.monotonic() - t0
        assert reason.count("\n") == 1 and "scheduler" in reason, reason
        assert took < 16, f"/healthz took {took:.1f}s to see the hang"
        print(f"/healthz turned 503 {took:.1f}s after the hang began: {reason.strip()}")
        restarts = daemon.wait_metric("vistream_process_restarts_total", 1, timeout=30, process="scheduler")
        assert restarts >= 1 and "scheduler made no progress" in daemon.log

        fault.unlink()
        wait_until("/healthz 200 again", lambda: healthy(port), 120, daemon)

        fault.write_text("raise")
        assert daemon.wait_metric("vistream_inference_errors_total", 1, timeout=30) >= 1
        assert daemon.metric("vistream_frames_dropped_total", camera="a", reason="failed") >= 1
        fault.unlink()

        code, _ = daemon.terminate()
        assert code == 0
    assert "test hook: batches hang or raise" in daemon.log
