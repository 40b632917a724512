"""MQTT over TLS with a password, against a real Mosquitto whose certificates the test makes itself.

The broker has a TLS listener only (a server certificate for 127.0.0.1 and localhost, signed by a CA
made here) and a password file. The daemon must connect when it trusts that CA; when it trusts an
unrelated CA, or the certificate names another host, it must say so in one line per attempt, keep
retrying and keep its cameras running. The password never shows in its log.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import missing
from support import certs
from support.daemon import DaemonProcess, base_config
from support.mosquitto import Mosquitto, Subscriber, TlsFiles
from support.procs import free_port
from support.rtsp_server import RtspServer

from vistream.config.models import MqttConfig, TlsConfig
from vistream.outputs.mqtt import MqttPublisher

pytestmark = pytest.mark.integration

USER, PASSWORD = "cam", "tls-pw-Q7v2m9xK"  # distinctive, so a search of the log cannot miss it
WATCHER, WATCHER_PASSWORD = "watch", "w"
CAMERA = "crowd1"


@dataclass(frozen=True)
class Pki:
    ca: certs.CertificateAuthority  # signed the broker's certificate
    other_ca: certs.CertificateAuthority  # unrelated: a client trusting it must refuse the broker
    server: tuple[Path, Path]  # certificate and key for 127.0.0.1 and localhost
    elsewhere: tuple[Path, Path]  # signed by `ca`, but for another host name only


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    reason = certs.missing_dependency()
    if reason:
        missing(reason)
    folder = tmp_path_factory.mktemp("pki")
    ca = certs.CertificateAuthority.create(folder, "test-ca")
    return Pki(
        ca=ca,
        other_ca=certs.CertificateAuthority.create(folder, "other-ca"),
        server=ca.issue("broker"),
        elsewhere=ca.issue("elsewhere", names=["DNS:elsewhere.example"]),
    )


@pytest.fixture(scope="module")
def tls_broker(_mosquitto_available: None, pki: Pki) -> Iterator[Mosquitto]:
    """TLS only, passwords required: the daemon's user and a watcher for the test's subscriber."""
    tls = TlsFiles(cafile=pki.ca.cert, certfile=pki.server[0], keyfile=pki.server[1])
    with Mosquitto(users={USER: PASSWORD, WATCHER: WATCHER_PASSWORD}, tls=tls) as broker:
        yield broker


def tls_daemon_config(
    tmp_path: Path, model: Path, broker: Mosquitto, ca_file: Path, prefix: str, url: str
) -> dict:
    """One camera; user, password file and the CA to trust for the broker's certificate."""
    cfg = base_config(
        model, broker.port, free_port(), prefix, [{"name": CAMERA, "url": url, "detect_fps": 2}]
    )
    (tmp_path / "mqtt-password").write_text(PASSWORD + "\n")
    cfg["mqtt"].update(
        username=USER, password_file=str(tmp_path / "mqtt-password"), tls={"ca_file": str(ca_file)}
    )
    return cfg


def failed_attempts(log: str) -> list[str]:
    return [line for line in log.splitlines() if "MQTT broker" in line and "attempt" in line]


def test_right_ca_and_password_connect(
    tmp_path: Path, rtsp_server: RtspServer, tls_broker: Mosquitto, pki: Pki, model_path: Path
) -> None:
    """1. The daemon (one RTSP camera, the real model) trusts the CA that signed the broker's
       certificate and logs in with a username and a password file.
    2. `{prefix}/status` goes `online` and detections arrive at a subscriber that also uses TLS;
       vistream_mqtt_connected is 1 and no attempt failed.
    3. SIGTERM: exit 0; the password is in no line of the daemon's log."""
    prefix = "itesttls"
    cfg = tls_daemon_config(tmp_path, model_path, tls_broker, pki.ca.cert, prefix, rtsp_server.url(CAMERA))
    with (
        Subscriber(
            tls_broker.host,
            tls_broker.port,
            f"{prefix}/#",
            username=WATCHER,
            password=WATCHER_PASSWORD,
            ca_file=pki.ca.cert,
        ) as sub,
        DaemonProcess(cfg, tmp_path) as daemon,
    ):
        sub.wait_for(lambda m: m.topic == f"{prefix}/status" and m.payload == b"online", timeout=90)
        sub.wait_for(lambda m: m.topic == f"{prefix}/{CAMERA}/detections", timeout=60)
        assert daemon.metric("vistream_mqtt_connected") == 1
        assert daemon.terminate()[0] == 0
    log = daemon.log
    assert f"MQTT connected to 127.0.0.1:{tls_broker.port}" in log
    assert not failed_attempts(log)
    assert PASSWORD not in log


def test_wrong_ca_is_reported_and_retried(
    tmp_path: Path, rtsp_server: RtspServer, tls_broker: Mosquitto, pki: Pki, model_path: Path
) -> None:
    """1. The same broker; the daemon trusts an unrelated CA instead of the broker's.
    2. Every connection attempt fails the certificate check and is one warning line naming the
       broker and the cause; there are several (paho retries with backoff), and the broker saw the
       handshakes fail.
    3. Meanwhile the daemon runs on: the camera is up, frames are inferred, their detections are
       dropped and counted; vistream_mqtt_connected stays 0; no traceback.
    4. SIGTERM: exit 0; the password is in no line of the daemon's log."""
    url = rtsp_server.url(CAMERA)
    cfg = tls_daemon_config(tmp_path, model_path, tls_broker, pki.other_ca.cert, "itesttlsbad", url)
    with DaemonProcess(cfg, tmp_path) as daemon:
        assert daemon.wait_metric("vistream_frames_inferred_total", 3, timeout=90, camera=CAMERA) >= 3
        deadline = time.monotonic() + 30
        while len(failed_attempts(daemon.log)) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert daemon.proc is not None and daemon.proc.poll() is None
        assert daemon.metric("vistream_camera_up", camera=CAMERA) == 1
        assert daemon.metric("vistream_mqtt_connected") == 0
        dropped = daemon.wait_metric(
            "vistream_mqtt_dropped_total", 1, kind="detections", reason="disconnected"
        )
        assert dropped >= 1
        assert daemon.terminate()[0] == 0
    log = daemon.log
    attempts = failed_attempts(log)
    assert len(attempts) >= 3, log[-3000:]
    for n, line in enumerate(attempts, 1):
        assert re.search(
            rf"WARNING .*MQTT broker 127\.0\.0\.1:{tls_broker.port}: connection attempt {n} failed: "
            r"TLS certificate verify failed: .*mqtt\.tls\.ca_file.*; retrying$",
            line,
        ), line
    assert "Traceback" not in log
    assert "MQTT connected" not in log
    assert PASSWORD not in log
    assert tls_broker.log().count("unknown ca") >= 3  # the broker's side of the same handshakes


def test_certificate_for_another_host_is_reported_and_retried(
    _mosquitto_available: None, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """1. A broker whose certificate is signed by the trusted CA but names only elsewhere.example.
    2. The publisher (the daemon's, in this process) connecting to 127.0.0.1 logs each attempt as a
       host-name mismatch naming the broker, retries, and never reports itself connected.
    3. The same settings with `tls.insecure: true` (no host-name check) connect: it was the name."""
    tls = TlsFiles(cafile=pki.ca.cert, certfile=pki.elsewhere[0], keyfile=pki.elsewhere[1])
    with Mosquitto(tls=tls) as broker:
        cfg = MqttConfig(
            host=broker.host, port=broker.port, client_id="itesttlsname", tls=TlsConfig(ca_file=pki.ca.cert)
        )
        publisher = MqttPublisher(cfg)
        with caplog.at_level(logging.WARNING, logger="vistream.outputs.mqtt"):
            publisher.start()
            try:
                deadline = time.monotonic() + 15
                while publisher.failed_attempts < 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert publisher.failed_attempts >= 2
                assert not publisher.connected
            finally:
                publisher.stop()
        lines = [r.getMessage() for r in caplog.records if "connection attempt" in r.getMessage()]
        assert len(lines) >= 2
        for line in lines:
            assert f"MQTT broker 127.0.0.1:{broker.port}" in line
            assert "IP address mismatch, certificate is not valid for '127.0.0.1'" in line

        insecure = MqttPublisher(
            cfg.model_copy(update={"tls": cfg.tls.model_copy(update={"insecure": True})})
        )
        insecure.start()
        try:
            deadline = time.monotonic() + 10
            while not insecure.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            assert insecure.connected
        finally:
            insecure.stop()
