"""Small helpers for the real processes and ports that the benchmarks and integration tests start."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel picks it; a race is possible but rare)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Wait until host:port accepts connections; fail early when `proc` (the server) exits."""
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if proc is not None and proc.poll() is not None:
            program = str(proc.args[0] if isinstance(proc.args, list | tuple) else proc.args)
            raise RuntimeError(f"{program} exited with {proc.returncode} before {host}:{port} opened")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> int:
    """SIGTERM, then SIGKILL when the process is still there after `timeout`; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout)


class ServerProcess:
    """A server program on `host:port`, run from a temporary directory of its own that holds its
    files and its log; `with` starts it, then stops it and removes the directory. Subclasses name
    the `program` and give its `command()`, and may wait for more than the open port (`_wait_ready`).
    """

    host = "127.0.0.1"
    program = "server"
    stop_timeout = 5.0
    log_tail = 0  # characters of the log a start failure quotes (0: all of it)

    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port(self.host)
        self._dir = Path(tempfile.mkdtemp(prefix=f"{self.program}-"))
        self._log = self._dir / f"{self.program}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def _wait_ready(self, timeout: float) -> None:
        """After the port opened: wait until the server answers (nothing more by default)."""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> Self:
        assert not self.running, f"{self.program} already running"
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(self.command(), stdout=log, stderr=log)
        try:
            wait_for_port(self.host, self.port, timeout, self._proc)
            self._wait_ready(timeout)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            tail = self.log()[-self.log_tail :]
            raise RuntimeError(f"{self.program} did not start: {exc}\n{tail}") from exc
        return self

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, self.stop_timeout)
            self._proc = None

    def log(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
