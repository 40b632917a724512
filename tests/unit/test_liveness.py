"""Whole-pipeline liveness: the daemon's threads supervised, the watchdog fed only while results
flow, and no wait without a bound (log pipes, the scheduler's last flush)."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vistream.config.models import Config
from vistream.daemon import Daemon
from vistream.ops import logs as logs_mod
from vistream.ops.logs import LogHub, PipeHandler
from vistream.ops.process import SPAWN
from vistream.ops.scheduler import Liveness
from vistream.ops.stats import SchedulerStats
from vistream.ops.supervise import Limits, Watchdog
from vistream.ops.systemd import Notifier
from vistream.outputs.results import ResultPump
from vistream.scheduler.loop import _flush


def test_logging_in_a_child_never_blocks_on_a_full_pipe() -> None:
    """1. The parent stops reading a child's log pipe (its hub thread died, or it is busy).
    2. The child logs far more than the pipe holds: every call returns at once; what does not
       fit is dropped and counted, instead of the scheduler or a reader hanging in `log.info`."""
    r, w = SPAWN.Pipe(duplex=False)
    handler = PipeHandler(w, capacity=100)
    logger = logging.Logger("child")
    logger.addHandler(handler)
    done = threading.Event()

    def chatter() -> None:
        for i in range(5000):
            logger.warning("frame %d: %s", i, "x" * 200)
        done.set()

    threading.Thread(target=chatter, daemon=True).start()
    assert done.wait(20), "logging blocked on the pipe"
    assert handler.dropped > 0
    r.close()  # the sender thread, stuck on the full pipe, now fails and ends
    handler.close(timeout=1)


def test_scheduler_flush_gives_up_on_a_pipe_nobody_reads() -> None:
    """An exiting scheduler's results queue holds more than its pipe takes and the main process
    is not reading: the flush returns after its deadline (join_thread alone never would)."""
    q = SPAWN.Queue()
    q.put(b"x" * (4 << 20))  # far beyond a pipe's 64 KiB
    time.sleep(0.2)  # the feeder thread is now blocked writing
    t0 = time.monotonic()
    _flush(q, timeout=0.5)
    assert time.monotonic() - t0 < 5


class FakeScheduler:
    """A scheduler that loops: alive, its heartbeat fresh."""

    def __init__(self) -> None:
        self.alive = True
        self.liveness = Liveness([time.monotonic(), 0.0, 1.0])

    def totals(self) -> SchedulerStats:
        return SchedulerStats()


@pytest.fixture
def daemon(tmp_path: Path) -> Any:
    cfg = Config.model_validate(
        {"mqtt": {"client_id": f"t{uuid.uuid4().hex[:6]}"}, "cameras": [{"name": "a", "url": "/dev/null"}]}
    )
    d = Daemon(cfg)
    d.scheduler = FakeScheduler()  # type: ignore[assignment]
    d.logs = LogHub()
    d.logs.start()
    yield d
    d.pump.stop(1)
    d.logs.stop(1)


def test_dead_result_pump_is_restarted_and_starves_the_watchdog_meanwhile(daemon: Any) -> None:
    """1. The result pump thread dies (an exception escaped it): detections would stop while the
       scheduler keeps looping.
    2. The pipeline no longer counts as flowing, so the watchdog would not be fed.
    3. The supervisor starts it again, counts the restart, and results flow again."""
    calls = []

    def source() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in the pump")

    daemon.pump = ResultPump(SimpleNamespace(prefix="p"), source, lambda msg: None)  # type: ignore[arg-type]
    daemon.pump.start()
    deadline = time.monotonic() + 5
    while daemon.pump.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    now = time.monotonic()
    vitals = daemon.vitals(now)
    assert vitals.scheduler is None and not vitals.flowing  # the scheduler loops; the pump does not
    assert daemon.threads.supervise(now, daemon.limits.stall_s) is None
    assert daemon.pump.alive and daemon.threads.restarts["results"] == 1
    time.sleep(0.3)
    assert daemon.flowing(time.monotonic())


def test_stuck_result_pump_starves_the_watchdog(tmp_path: Path, daemon: Any) -> None:
    """1. The result pump is alive but stuck (its last turn longer ago than the progress window),
       while the scheduler keeps looping.
    2. No WATCHDOG=1 reaches the notify socket; once the pump turns again, it does."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)

    def received() -> list[bytes]:
        got = []
        try:
            while True:
                got.append(sock.recv(100))
        except TimeoutError:
            return got

    daemon.limits = Limits.for_watchdog(2.0)
    notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
    watchdog = Watchdog(notifier, daemon.limits.ping_s)
    daemon.pump = SimpleNamespace(alive=True, beat=time.monotonic() - daemon.limits.window_s - 1)
    watchdog.tick(time.monotonic(), daemon.flowing, daemon.status_line)
    assert b"WATCHDOG=1" not in received()
    daemon.pump.beat = time.monotonic()
    watchdog.tick(time.monotonic(), daemon.flowing, daemon.status_line)
    assert b"WATCHDOG=1" in received()
    sock.close()
    daemon.pump = SimpleNamespace(stop=lambda t: None)


def test_dead_log_hub_is_restarted(daemon: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    """1. The log hub thread dies (an exception escaped it): children's records stop arriving.
    2. The supervisor starts it again and counts it; a child's record arrives again."""
    daemon.pump = SimpleNamespace(alive=True, beat=time.monotonic(), stop=lambda t: None)
    real_wait = logs_mod.wait
    failures = [RuntimeError("a bug in the hub")]

    def failing_wait(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(logs_mod, "wait", failing_wait)
    daemon.logs.channel().close()  # a new pipe wakes it: it turns now
    deadline = time.monotonic() + 5
    while daemon.logs.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not daemon.logs.alive and not daemon.flowing(time.monotonic())
    assert daemon.threads.supervise(time.monotonic(), daemon.limits.stall_s) is None
    assert daemon.logs.alive and daemon.threads.restarts["log-hub"] == 1
    handler = PipeHandler(daemon.logs.channel())
    record = logging.LogRecord("vistream.child", logging.WARNING, __file__, 1, "hello again", None, None)
    with caplog.at_level(logging.WARNING, logger="vistream.child"):
        handler.handle(record)
        deadline = time.monotonic() + 5
        while "hello again" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    handler.close()
    assert "hello again" in caplog.text
