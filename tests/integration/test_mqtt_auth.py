"""Broker credentials: a password from a file gets in; a wrong one is reported honestly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, base_config
from support.procs import free_port

pytestmark = pytest.mark.integration


def test_password_file_and_refusal(
    tmp_path: Path, make_mosquitto, samples_dir: Path, model_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """1. A broker that requires a password; the daemon reads it from `password_file`.
    2. Detections arrive through an authenticated subscriber.
    3. A second daemon with the wrong password keeps running, reports
       vistream_mqtt_connected 0 and says the broker refused it, instead of pretending."""
    broker = make_mosquitto(users={"cam": "s3cret", "watch": "w"})
    cam = [{"name": "a", "url": str(samples_dir / "crowd-480p.mp4"), "detect_fps": 2}]
    good = base_config(model_path, broker.port, free_port(), "itestauth", cam)
    (tmp_path / "pw").write_text("s3cret\n")
    good["mqtt"].update(username="cam", password_file=str(tmp_path / "pw"))
    from support.mosquitto import Subscriber

    (tmp_path / "good").mkdir()
    with (
        Subscriber(broker.host, broker.port, "itestauth/#", username="watch", password="w") as sub,
        DaemonProcess(good, tmp_path / "good") as daemon,
    ):
        sub.wait_for(lambda m: m.topic == "itestauth/a/detections", timeout=90)
        assert daemon.metric("vistream_mqtt_connected") == 1
        assert daemon.terminate()[0] == 0

    bad = base_config(model_path, broker.port, free_port(), "itestauthbad", cam)
    (tmp_path / "bad").mkdir()
    (tmp_path / "badpw").write_text("wrong")
    bad["mqtt"].update(username="cam", password_file=str(tmp_path / "badpw"))
    with DaemonProcess(bad, tmp_path / "bad") as daemon:
        deadline = time.monotonic() + 60
        while "refused the connection" not in daemon.log and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "refused the connection" in daemon.log
        assert daemon.metric("vistream_mqtt_connected") == 0
        assert "wrong" not in daemon.log  # the password itself is never logged
        assert daemon.terminate()[0] == 0
