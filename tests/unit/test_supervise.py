"""Restart caps and the systemd notify protocol (against a real datagram socket)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from vistream.config.models import Config
from vistream.daemon import Daemon
from vistream.ops.scheduler import SchedulerRuntime
from vistream.ops.supervise import Limits, RestartBudget, Threads
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


@pytest.mark.parametrize(
    ("watchdog_s", "stall_s", "window_s", "ping_s"),
    [
        (None, 60.0, 10.0, None),
        (60.0, 15.0, 7.5, 15.0),
        (120.0, 30.0, 10.0, 30.0),
        (600.0, 60.0, 10.0, 150.0),
    ],
)
def test_limits_follow_the_watchdog(
    watchdog_s: float | None, stall_s: float, window_s: float, ping_s: float | None
) -> None:
    """Without a watchdog the stall limit is 60 s; under one of W seconds it is W/4 (at most 60 s),
    pings go out every W/4, and the pipeline stops counting as flowing half a stall after its
    last progress."""
    lim = Limits.for_watchdog(watchdog_s)
    assert (lim.stall_s, lim.window_s, lim.ping_s) == (stall_s, window_s, ping_s)


@pytest.mark.parametrize("watchdog_s", [8.0, 30.0, 60.0, 180.0, 600.0])
def test_a_hang_is_recovered_from_inside_before_systemd_steps_in(watchdog_s: float) -> None:
    """The chain: a hang at T starves the watchdog from T + window; the last ping went out after
    T + window - ping, so systemd acts after T + window - ping + W. The daemon kills the hung
    scheduler at T + stall, and the new one has the rest (at least half of W) to load the model."""
    lim = Limits.for_watchdog(watchdog_s)
    assert lim.ping_s is not None
    systemd_acts = lim.window_s - lim.ping_s + watchdog_s
    assert lim.stall_s + 1.0 < systemd_acts  # + a supervision tick and the kill's grace
    assert lim.reload_budget_s(watchdog_s) == pytest.approx(systemd_acts - lim.stall_s)
    assert lim.reload_budget_s(watchdog_s) >= watchdog_s / 2


def test_daemon_kills_a_hung_scheduler_before_the_unit_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    """1. The daemon runs under the unit's WatchdogSec=60 (WATCHDOG_USEC in its environment).
    2. The scheduler has been stuck in one batch for 20 s: the daemon kills it now (at 15 s),
       not at 60 s, by which time systemd would have killed the whole service."""
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    cfg = Config.model_validate(
        {"mqtt": {"client_id": "tlimits"}, "cameras": [{"name": "a", "url": "/dev/null"}]}
    )
    d = Daemon(cfg)
    now = time.monotonic()
    stopped: list[float] = []

    class Hung:
        alive, exitcode = True, None

        def start(self) -> None:
            pass

        def stop(self, timeout: float) -> None:
            stopped.append(timeout)

    beat = [now, now - 20, 1.0]
    runtime = SchedulerRuntime(
        lambda base: (Hung(), SimpleNamespace(results=None, stats=None, control=None, beat=beat))
    )  # type: ignore[arg-type, return-value]
    runtime.start()
    runtime.supervise(now, d.limits)
    assert stopped, "the hung scheduler was not killed"
    assert d.limits.stall_s == 15.0


def test_threads_dead_are_started_again_and_a_stuck_one_is_named() -> None:
    """1. The result thread died: it is started again and counted; the log hub turns.
    2. The log hub has not turned for longer than the stall limit: supervise names it (the daemon
       stops with exit 1: a thread cannot be killed); neither counts as turning meanwhile."""
    now = 1000.0
    pump = SimpleNamespace(alive=False, beat=now - 1)
    pump.start = lambda: setattr(pump, "alive", True)
    hub = SimpleNamespace(alive=True, beat=now - 0.5, start=lambda: None)
    threads = Threads(lambda: {"results": pump, "log-hub": hub}, ("results", "log-hub"))  # type: ignore[arg-type, dict-item]
    assert not threads.turning(now, 2.0)
    assert threads.supervise(now, 15.0) is None
    assert pump.alive and threads.restarts == {"results": 1, "log-hub": 0}
    assert threads.turning(now, 2.0)
    hub.beat = now - 20
    assert threads.supervise(now, 15.0) == "the log-hub thread made no progress for 20s: stopping"
    assert not threads.turning(now, 2.0)
