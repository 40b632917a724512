"""The daemon and an outbox it cannot open (locked, full): it never starts empty beside it."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from unit.test_daemon_outbox import FakeAlerts, config
from vistream import daemon as daemon_module
from vistream.daemon import BootError, Daemon
from vistream.outputs import outbox as ob
from vistream.outputs.outbox import FILENAME, Outbox


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's lock wait, the outbox's retries and the daemon's boot deadline, in tenths of a second."""
    monkeypatch.setattr(ob, "BUSY_TIMEOUT_S", 0.05, raising=False)
    monkeypatch.setattr(ob, "OPEN_RETRY_S", 0.05, raising=False)
    monkeypatch.setattr(daemon_module, "OUTBOX_OPEN_S", 0.3, raising=False)


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """An outbox file with a line counter and a pending row; another process holds its write lock."""
    box = Outbox(tmp_path / FILENAME)
    box.add("a", "p/a/mid/in/count", b"41", retain=True, kind="counter", state={"counter/a/mid/in": "41"})
    box.close()
    other = sqlite3.connect(tmp_path / FILENAME, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    yield other
    if other.in_transaction:
        other.execute("ROLLBACK")
    other.close()


def assert_kept(tmp_path: Path) -> None:
    assert not list(tmp_path.glob("*.corrupt-*"))
    box = Outbox(tmp_path / FILENAME)
    try:
        assert box.pending == 1 and box.get_state("counter/a/mid/in") == "41"
    finally:
        box.close()


def test_boot_with_a_locked_outbox_exits_2_and_leaves_it_as_it_is(
    tmp_path: Path, locked: sqlite3.Connection, fast: None
) -> None:
    """1. The config has a line (it needs the outbox); the outbox file is locked by another process.
    2. Booting retries until its deadline, then stops with exit code 2 and a line naming the file
       and SQLite's reason; it does not start an empty outbox (the counter would restart at 0).
    3. The file, its counter and its pending row are as they were."""
    d = Daemon(config(tmp_path, [{"name": "r", "line": "mid"}]))
    try:
        with pytest.raises(BootError) as info:
            d._init_outbox()
    finally:
        d._stack.close()
    assert info.value.exit_code == 2
    assert str(tmp_path / FILENAME) in str(info.value) and "SQLITE_BUSY" in str(info.value)
    assert d.outbox is None
    locked.execute("ROLLBACK")
    assert_kept(tmp_path)


def test_a_reload_keeps_trying_to_open_a_locked_outbox(
    tmp_path: Path, locked: sqlite3.Connection, fast: None, caplog: pytest.LogCaptureFixture
) -> None:
    """1. The daemon runs without rules (no outbox); a reload brings a line rule, the outbox is locked.
    2. It is not opened, `outbox_problem()` (/healthz, /metrics) says why, one error is logged.
    3. The main loop tries again every OUTBOX_RETRY_S, logging nothing new while it fails.
    4. Once the lock is gone the next try opens it, with its rows, and the problem is cleared."""
    d = Daemon(config(tmp_path, []))
    d._init_outbox()
    d.cfg = config(tmp_path, [{"name": "r", "line": "mid"}])
    d.alerts = FakeAlerts()  # type: ignore[assignment]
    d.mqtt = SimpleNamespace(  # type: ignore[assignment]
        client=SimpleNamespace(is_connected=lambda: False), add_listener=lambda listener: None
    )
    try:
        d._open_outbox_late()
        problem = d.outbox_problem()
        assert d.outbox is None and problem is not None and "SQLITE_BUSY" in problem
        d._retry_outbox(time.monotonic() + daemon_module.OUTBOX_RETRY_S + 1)
        assert d.outbox is None
        assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1

        locked.execute("ROLLBACK")
        d._retry_outbox(time.monotonic())  # not due yet
        assert d.outbox is None
        d._retry_outbox(time.monotonic() + daemon_module.OUTBOX_RETRY_S + 1)
        assert d.outbox is not None and d.alerts.outbox is d.outbox
        assert d.outbox_problem() is None and d.outbox.pending == 1
    finally:
        d._stack.close()
        d._stop_delivery()
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_a_refused_write_shows_in_metrics_and_health(tmp_path: Path) -> None:
    """1. The outbox's disk is full and a frame's events cannot be written.
    2. /metrics: vistream_outbox_unavailable 1, vistream_outbox_write_failures_total 1; /healthz
       names SQLite's reason, /livez does not (a restart frees no disk).
    3. A write succeeds again: unavailable 0, the failure stays counted, /healthz is ok."""
    from vistream.ops.metrics import _alert_metrics
    from vistream.ops.status import health

    box = Outbox(tmp_path / FILENAME)
    d = SimpleNamespace(
        outbox=box,
        _outbox_late=None,
        alerts=SimpleNamespace(
            figures=lambda: ({}, {}, []), snapshots=0, snapshots_lost=0, unwritten=lambda: (0, {})
        ),
        pump=SimpleNamespace(alert_errors=0),
        cameras={},
        stop_flag=False,
        ready=object(),
        flowing=lambda now: True,
        scheduler_stats=lambda: SimpleNamespace(backend_down=""),
    )
    d.outbox_problem = lambda: Daemon.outbox_problem(d)  # type: ignore[arg-type]

    def figures() -> dict[str, float]:
        return {s.name: s.value for family in _alert_metrics(d, []) for s in family.samples}  # type: ignore[arg-type]

    try:
        pages = box._db.execute("PRAGMA page_count").fetchone()[0]
        box._db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(ob.OutboxUnavailable):
            box.add("a", "p/a/events", b"x" * 100_000)
        assert figures()["vistream_outbox_unavailable"] == 1
        assert figures()["vistream_outbox_write_failures_total"] == 1
        assert health(d, 0.0) == "the event outbox cannot be written: SQLITE_FULL: database or disk is full"  # type: ignore[arg-type]
        assert health(d, 0.0, remote=False) is None  # type: ignore[arg-type]

        box._db.execute("PRAGMA max_page_count = 1073741823")
        box.add("a", "p/a/events", b"x")
        assert figures()["vistream_outbox_unavailable"] == 0
        assert figures()["vistream_outbox_write_failures_total"] == 1
        assert health(d, 0.0) is None  # type: ignore[arg-type]
    finally:
        box.close()
