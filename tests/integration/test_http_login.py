"""The daemon behind a web config, for real: Chromium logs in to the status page, SIGHUP reads the
web config again, a bad one at start is exit 2 naming the key."""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from support.daemon import VISTREAM, DaemonProcess, base_config
from support.mosquitto import Mosquitto
from support.procs import free_port

from integration.test_browser import chrome  # noqa: F401  (headless Chromium through Selenium)

pytestmark = pytest.mark.integration


def users(path: Path, password: str) -> Path:
    path.write_text(
        f"basic_auth_users:\n  viewer: {bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}\n"
    )
    return path


def status(port: int, path: str, password: str | None = None) -> int | None:
    headers = {}
    if password is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"viewer:{password}".encode()).decode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_for(what: str, check: Any, timeout: float, daemon: DaemonProcess | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        if daemon is not None:
            assert daemon.proc is not None and daemon.proc.poll() is None, (
                f"the daemon exited waiting for {what}"
            )
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.3)
    return got


def test_chromium_logs_in_and_sighup_changes_the_password(
    tmp_path: Path,
    samples_dir: Path,
    mosquitto: Mosquitto,
    model_path: Path,
    chrome: Any,  # noqa: F811
) -> None:
    """1. A daemon with one camera, a web config with one user, `pictures: false`.
    2. Without credentials every path is 401, /healthz included; with them 200; latest.jpg 404;
       a foreign Host (DNS rebinding) 421.
    3. Chromium sends the credentials (an Authorization header set through CDP): the status page
       loads, its API calls pass (the tile says online, the health pill healthy), and it has no
       <img> at all.
    4. The web config gets a new password and the daemon SIGHUP: the old password is 401, the new
       one 200. A broken file and SIGHUP again: logged, the new password still works."""
    port = free_port()
    web = users(tmp_path / "web.yml", "first")
    cams = [{"name": "a", "url": str(samples_dir / "crowd-480p.mp4"), "detect_fps": 2}]
    cfg = base_config(model_path, mosquitto.port, port, "itlogin", cams)
    cfg["metrics"].update(web_config_file=str(web), pictures=False)
    with DaemonProcess(cfg, tmp_path) as daemon:
        wait_for("/healthz 200", lambda: status(port, "/healthz", "first") == 200, 120, daemon)
        for path in ("/healthz", "/metrics", "/", "/api/cameras"):
            assert status(port, path) == 401, path
            assert status(port, path, "wrong") == 401, path
        assert status(port, "/api/cameras/a/latest.jpg", "first") == 404
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:  # DNS rebinding
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: evil.example:{port}\r\n\r\n".encode())
            assert sock.recv(100).startswith(b"HTTP/1.1 421 ")

        auth = base64.b64encode(b"viewer:first").decode()
        chrome.execute_cdp_cmd("Network.enable", {})
        chrome.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {auth}"}})
        chrome.get(f"http://127.0.0.1:{port}/")
        assert chrome.title == "vistream"
        wait_for(
            "the tile online",
            lambda: "online" in chrome.find_element("css selector", ".tile .state").text,
            60,
        )
        wait_for("the health pill", lambda: chrome.find_element("id", "health").text == "healthy", 20)
        assert chrome.find_elements("css selector", "img") == []
        assert "pictures are off" in chrome.find_element("css selector", ".tile").text

        users(web, "second")
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for("the new password", lambda: status(port, "/healthz", "second") == 200, 20, daemon)
        assert status(port, "/healthz", "first") == 401
        web.write_text("basic_auth_users:\n  viewer: not-a-hash\n")
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(
            "the refusal logged", lambda: "the previous web config stays in force" in daemon.log, 20, daemon
        )
        assert "basic_auth_users.viewer: not a bcrypt hash" in daemon.log
        assert status(port, "/healthz", "second") == 200


def test_a_bad_web_config_at_start_is_exit_2_naming_the_key(tmp_path: Path, model_path: Path) -> None:
    """An unknown key in the web config (exporter-toolkit refuses those too): exit 2, one line
    naming the file and the key, before anything starts."""
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users: {}\ntls_server_config:\n  cert_file: a.crt\n  keyfile: a.key\n")
    cfg = base_config(model_path, 1, free_port(), "itbadweb", [{"name": "a", "url": "rtsp://127.0.0.1:1/a"}])
    cfg["metrics"]["web_config_file"] = str(web)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run([*VISTREAM, "run", "-c", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert "metrics.web_config_file" in out and "tls_server_config.keyfile: unknown key" in out
    assert "Traceback" not in out
