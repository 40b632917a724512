"""A camera whose RTSP server goes away and comes back, with the real daemon, server and broker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, base_config
from support.mosquitto import Message, Mosquitto, Subscriber
from support.procs import free_port

pytestmark = pytest.mark.integration

DOWN_S = 30.0
# What the reconnect backoff alone allows in DOWN_S (delays of at least 0.25, 0.5, 1, 2, 4, 8, 15 s:
# 7 waits, 8 attempts), plus the one attempt the camera's return may bring forward.
MAX_FULL_ATTEMPTS = 9


@pytest.mark.serial
def test_camera_whose_server_was_down_for_30s_is_back_within_seconds(
    tmp_path: Path, make_rtsp_server, samples_dir: Path, mosquitto: Mosquitto, model_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """1. One camera on a private RTSP server, default reconnect settings (backoff capped at 30 s);
       it publishes.
    2. The server stops (the process is gone, the port closed): the camera goes `offline` within
       10 s.
    3. For 30 s the reader backs off: its full open attempts (`vistream_camera_reconnects_total`)
       stay within what the backoff allows, however often it checks the port.
    4. The server starts again on the same port: the camera is `online` within 10 s of the return
       (the backoff had grown to 15-30 s by then) and publishes detections."""
    server = make_rtsp_server({"a": samples_dir / "crowd-480p.mp4"})
    prefix = "itestreturn"
    cfg = base_config(
        model_path,
        mosquitto.port,
        free_port(),
        prefix,
        [{"name": "a", "url": server.url("a"), "detect_fps": 2}],
    )
    status = f"{prefix}/a/status"

    def says(payload: bytes, since: float):  # type: ignore[no-untyped-def]
        return lambda m: m.topic == status and m.payload == payload and m.timestamp >= since

    with (
        Subscriber(mosquitto.host, mosquitto.port, f"{prefix}/#") as sub,
        DaemonProcess(cfg, tmp_path) as daemon,
    ):
        sub.wait_for(says(b"online", 0.0), timeout=90)
        sub.wait_for(lambda m: m.topic == f"{prefix}/a/detections", timeout=30)
        before = daemon.metric("vistream_camera_reconnects_total", camera="a")

        stopped = time.monotonic()
        server.stop()
        offline: Message = sub.wait_for(says(b"offline", stopped), timeout=10)
        time.sleep(max(0.0, stopped + DOWN_S - time.monotonic()))
        attempts = daemon.metric("vistream_camera_reconnects_total", camera="a") - before

        server.start()  # same port: the camera's server is back
        back = time.monotonic()
        online: Message = sub.wait_for(says(b"online", back), timeout=10)
        sub.wait_for(lambda m: m.topic == f"{prefix}/a/detections" and m.timestamp >= back, timeout=10)
        print(
            f"\nserver down {DOWN_S:.0f} s: offline {offline.timestamp - stopped:.1f} s after the stop, "
            f"online {online.timestamp - back:.1f} s after the return, {attempts:.0f} full open attempts "
            "while down"
        )
        assert offline.timestamp - stopped <= 10 and online.timestamp - back <= 10
        assert 1 <= attempts <= MAX_FULL_ATTEMPTS, daemon.log[-3000:]
        assert daemon.terminate()[0] == 0
