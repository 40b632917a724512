"""Restart caps and the systemd notify protocol (against a real datagram socket)."""

from __future__ import annotations

import socket
from pathlib import Path

from vistream.ops.supervise import RestartBudget
from vistream.ops.systemd import Notifier


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_restart_budget_caps_restarts_per_minute() -> None:
    """1. Five restarts in a row are allowed, the sixth within the same minute is not.
    2. Once the first falls out of the 60 s window, one more is allowed: never given up for good."""
    clock = Clock()
    budget = RestartBudget(per_minute=5, clock=clock)
    for k in range(5):
        clock.t = k
        assert budget.take()
    clock.t = 30
    assert not budget.take()
    clock.t = 60
    assert budget.take()
    assert not budget.take()


def test_notifier_speaks_sd_notify_on_a_real_socket(tmp_path: Path) -> None:
    """READY/STATUS/WATCHDOG/STOPPING reach the NOTIFY_SOCKET as newline-separated datagrams,
    and the watchdog interval is half of WATCHDOG_USEC."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(1)
    n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "20000000"})
    assert n.enabled and n.watchdog_interval == 10.0
    n.ready("4 cameras")
    n.watchdog()
    n.stopping()
    got = [sock.recv(1024).decode() for _ in range(3)]
    assert got == ["READY=1\nSTATUS=4 cameras", "WATCHDOG=1", "STOPPING=1"]
    n.close()
    sock.close()


def test_notifier_is_a_noop_outside_systemd() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval is None
    n.ready()
    n.watchdog()


def test_watchdog_belongs_to_its_pid_only() -> None:
    """WATCHDOG_PID naming another process means the watchdog is not ours to feed."""
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval is None
