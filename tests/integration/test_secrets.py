"""Secrets with the real daemon, broker and RTSP clients: camera passwords and tokens leave the
daemon only towards the camera, never in the log, /metrics, the API or MQTT; no child inherits the
MQTT password or the credentials directory."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, base_config, child
from support.mosquitto import Subscriber
from support.procs import free_port

pytestmark = pytest.mark.integration

# The URL: a quote and an encoded "@" in the password, a token in the query.
DEAD_PASSWORD, TOKEN = "pa'ss%40x", "abc"
FILE_PASSWORD = "fi'le@pw%/x"  # from password_file: spliced percent-encoded, decoded by ffmpeg
MQTT_PASSWORD = "mqtt-env-pw"
SECRETS = (
    DEAD_PASSWORD, "pa'ss", "ss%40x", "pa'ss@x", f"token={TOKEN}",  # the dead camera's, decoded or not
    FILE_PASSWORD, "fi'le", MQTT_PASSWORD,
)  # fmt: skip


class BasicAuthRtspServer:
    """Answers OPTIONS, asks for Basic auth on DESCRIBE, records the credentials it is sent and
    refuses them: a camera that never streams, and proof of what the reader sent."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.credentials: list[str] = []
        self._stop = threading.Event()

    def start(self) -> BasicAuthRtspServer:
        threading.Thread(target=self._accept, name="auth-rtsp", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        with conn:
            conn.settimeout(10)
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(4096)
                except OSError:
                    return
                if not chunk:
                    return
                data += chunk
                while b"\r\n\r\n" in data:
                    request, _, data = data.partition(b"\r\n\r\n")
                    lines = request.decode(errors="replace").split("\r\n")
                    headers = {
                        k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])
                    }
                    cseq = headers.get("cseq", "1")
                    if lines[0].startswith("OPTIONS"):
                        reply = "200 OK\r\nPublic: OPTIONS, DESCRIBE, SETUP, TEARDOWN, PLAY"
                    else:
                        auth = headers.get("authorization", "")
                        if auth.startswith("Basic "):
                            self.credentials.append(base64.b64decode(auth[6:]).decode())
                        reply = '401 Unauthorized\r\nWWW-Authenticate: Basic realm="cam"'
                    conn.sendall(f"RTSP/1.0 {reply}\r\nCSeq: {cseq}\r\n\r\n".encode())


def get(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError as exc:  # /healthz says 503 and why: that text counts too
        return exc.read().decode()


def found(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def test_no_password_or_token_leaves_the_daemon_but_towards_the_camera(
    tmp_path: Path, make_mosquitto, model_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """1. Camera `dead`: rtsp://u:pa'ss%40x@127.0.0.1:PORT/s?token=abc on a port nobody listens on.
    2. Camera `locked`: username `viewer` and a password_file holding fi'le@pw%/x, on a server that
       asks for Basic auth and refuses whatever it gets.
    3. The daemon's environment holds VISTREAM_MQTT_PASSWORD and CREDENTIALS_DIRECTORY; Home
       Assistant discovery is on (more MQTT payloads that describe the cameras).
    4. Once both cameras have failed a few times: the server received viewer:fi'le@pw%/x (the
       reader got the password, percent-encoded in the URL and decoded by ffmpeg); nothing of either
       password or the token is in the log, /metrics, /api/cameras, /api/status, /healthz or any
       MQTT message (subscribed to `#`); the readers' and the scheduler's environments, as exec'd,
       hold neither variable."""
    broker = make_mosquitto()
    auth_server = BasicAuthRtspServer().start()
    (tmp_path / "locked.pw").write_text(FILE_PASSWORD + "\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    dead_port = free_port()
    cams = [
        {"name": "dead", "url": f"rtsp://u:{DEAD_PASSWORD}@127.0.0.1:{dead_port}/s?token={TOKEN}",
         "open_timeout_s": 2, "reconnect_max_s": 2},
        {"name": "locked", "url": f"rtsp://127.0.0.1:{auth_server.port}/s", "username": "viewer",
         "password_file": str(tmp_path / "locked.pw"), "open_timeout_s": 2, "reconnect_max_s": 2},
    ]  # fmt: skip
    port = free_port()
    cfg = base_config(model_path, broker.port, port, "itestsecrets", cams)
    cfg["mqtt"]["home_assistant"] = True
    env = {"VISTREAM_MQTT_PASSWORD": MQTT_PASSWORD, "CREDENTIALS_DIRECTORY": str(creds)}
    try:
        with (
            Subscriber(broker.host, broker.port, "#") as sub,
            DaemonProcess(cfg, tmp_path, env=env) as daemon,
        ):
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and (
                daemon.metric("vistream_camera_reconnects_total", camera="dead") < 2
                or daemon.metric("vistream_camera_reconnects_total", camera="locked") < 2
                or not auth_server.credentials
            ):
                time.sleep(0.5)
            assert auth_server.credentials, daemon.log
            assert set(auth_server.credentials) == {f"viewer:{FILE_PASSWORD}"}
            for title in ("reader dead", "reader locked", "scheduler"):
                environ = child(daemon, title).environ()
                assert "VISTREAM_MQTT_PASSWORD" not in environ and "CREDENTIALS_DIRECTORY" not in environ, (
                    title
                )
            cameras = json.loads(get(port, "/api/cameras"))
            assert {c["name"]: c["url"] for c in cameras} == {
                "dead": f"rtsp://***@127.0.0.1:{dead_port}/s?token=***",
                "locked": f"rtsp://127.0.0.1:{auth_server.port}/s",
            }
            served = {
                path: get(port, path) for path in ("/metrics", "/api/cameras", "/api/status", "/healthz")
            }
            assert daemon.terminate()[0] == 0
        log = daemon.log
        assert "camera dead:" in log and "camera locked:" in log  # the failures were logged...
        assert found(log) == [], log  # ...without the secrets
        for path, text in served.items():
            assert found(text) == [], (path, text)
        assert sub.messages, "no MQTT message arrived"
        for msg in sub.messages:
            assert found(msg.topic + msg.payload.decode(errors="replace")) == [], msg.topic
    finally:
        auth_server.stop()
