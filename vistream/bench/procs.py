"""Small helpers for the real processes and ports that the benchmarks and integration tests start."""

from __future__ import annotations

import socket
import subprocess
import time


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
