"""The systemd notify protocol (sd_notify(3)): ready, stopping, status, watchdog.

A no-op when NOTIFY_SOCKET is unset, so the daemon runs the same in a
terminal. Children never see the socket (ops.process drops it from their
environment): only the main process speaks for the service.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr: str | None = None
        self._sock: socket.socket | None = None
        if addr.startswith(("/", "@")):
            self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        owns = not pid or pid == str(os.getpid())
        # The watchdog's timeout in seconds (WatchdogSec=), when it is ours to feed.
        self.watchdog_timeout = int(usec) / 1e6 if usec.isdigit() and owns else None
        # Pinging at half the timeout leaves one missed tick of slack, as sd_watchdog_enabled(3) suggests
        # (the daemon pings more often: vistream.ops.supervise.Limits).
        self.watchdog_interval = self.watchdog_timeout / 2 if self.watchdog_timeout else None

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> None:
        if self._sock is None or self._addr is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._addr)
        except OSError as exc:  # systemd gone or socket full: never worth crashing the daemon over
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", f"STATUS={status}") if status else self.notify("READY=1")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd (Type=notify-reload, v253+) tell this reload from an older one.
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
