"""Idle connections and file descriptors: the daemon under `prlimit --nofile=256` with 300 idle
sockets on its HTTP port, a reader SIGKILLed meanwhile. Before, the reader's restart hit EMFILE in
`Pipe()` and the daemon exited; now connections are bounded, idle ones are closed, and a child that
cannot be made is counted and tried again."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, base_config, child
from support.mosquitto import Mosquitto
from support.procs import free_port

pytestmark = pytest.mark.integration


def healthz(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status
    except OSError:
        return None


def wait(what: str, check, timeout: float, daemon: DaemonProcess):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert daemon.proc is not None and daemon.proc.poll() is None, f"the daemon exited waiting for {what}"
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.3)
    return got


def idle_sockets(port: int, n: int) -> list[socket.socket]:
    """`n` connections to the port that never send a byte (those the server refused included)."""
    out = []
    for _ in range(n):
        s = socket.socket()
        s.settimeout(2)
        with contextlib.suppress(OSError):  # refused: the test goes on with the others
            s.connect(("127.0.0.1", port))
        out.append(s)
    return out


@pytest.mark.parametrize("max_connections", [64, 1000])
def test_idle_sockets_and_a_killed_reader_under_256_descriptors(
    tmp_path: Path, samples_dir: Path, mosquitto: Mosquitto, model_path: Path, max_connections: int
) -> None:
    """1. The daemon with one file camera; once healthy, `prlimit --nofile=256` on it.
    2. 300 sockets to its HTTP port, left silent; the reader is SIGKILLed.
    3. The reader comes back (a new pid), the daemon lives, /healthz answers 200.
    With max_connections 64 (the default) the descriptors never run out. With 1000 they do: the
    reader's restart fails for want of one, is counted in vistream_spawn_failures_total and tried
    again, and succeeds once the idle sockets are closed (idle_timeout_s)."""
    port = free_port()
    cams = [{"name": "a", "url": str(samples_dir / "crowd-480p.mp4"), "detect_fps": 2}]
    cfg = base_config(model_path, mosquitto.port, port, f"itfd{max_connections}", cams)
    cfg["metrics"].update(max_connections=max_connections, idle_timeout_s=6)
    with DaemonProcess(cfg, tmp_path) as daemon:
        wait("/healthz 200", lambda: healthz(port) == 200, 120, daemon)
        assert daemon.proc is not None
        subprocess.run(["prlimit", f"--pid={daemon.proc.pid}", "--nofile=256:256"], check=True)
        reader = child(daemon, "reader a")
        socks = idle_sockets(port, 300)
        try:
            time.sleep(1.0)
            reader.send_signal(signal.SIGKILL)
            reader.wait(5)
            if max_connections == 64:  # descriptors to spare: /healthz answers with the sockets open
                assert healthz(port) == 200
            back = wait("reader a back", lambda: _pid(daemon, "reader a", reader.pid), 60, daemon)
            assert back != reader.pid
        finally:
            for s in socks:
                s.close()
        wait("/healthz 200", lambda: healthz(port) == 200, 30, daemon)
        failures = daemon.metric("vistream_spawn_failures_total", process="reader/a")
        if max_connections == 1000:
            assert failures >= 1
            assert "cannot start a process (Too many open files)" in daemon.log
        else:
            assert failures == 0
        assert daemon.proc.poll() is None
        code, _ = daemon.terminate()
        assert code == 0


def _pid(daemon: DaemonProcess, title: str, old: int) -> int | None:
    try:
        pid = child(daemon, title).pid
    except AssertionError:
        return None
    return pid if pid != old else None
