"""Running `vistream run` as a real subprocess, as systemd would, for integration tests.

`DaemonProcess` and `base_config` live in the package (`vistream bench` runs the daemon the same way).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from vistream.bench.daemon import VISTREAM, DaemonProcess, base_config

__all__ = ["VISTREAM", "DaemonProcess", "NotifySocket", "base_config"]


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET; collects what the daemon says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.received: list[tuple[float, str]] = []

    def poll(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                break
            self.received.append((time.monotonic(), data.decode()))
        return [m for _, m in self.received]

    def close(self) -> None:
        self.sock.close()
