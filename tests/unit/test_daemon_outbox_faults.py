"""The daemon and an outbox it cannot open (locked, full): it never starts empty beside it."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from unit.test_daemon_outbox import FakeAlerts, config, link, runtime
from vistream.daemon import BootError
from vistream.ops.status import Figures, Vitals, health
from vistream.outputs import outbox as ob
from vistream.outputs import outbox_runtime
from vistream.outputs.outbox import FILENAME, Outbox

BOOT_OPEN_S = 0.3  # the boot deadline (outbox_runtime.OPEN_S, 30 s), in tenths of a second


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's lock wait and the outbox's retries in tenths of a second."""
    monkeypatch.setattr(ob, "BUSY_TIMEOUT_S", 0.05, raising=False)
    monkeypatch.setattr(ob, "OPEN_RETRY_S", 0.05, raising=False)


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
    rt = runtime(tmp_path)
    with ExitStack() as stack, pytest.raises(BootError) as info:
        rt.start(stack, config(tmp_path, [{"name": "r", "line": "mid"}]), BOOT_OPEN_S)
    assert info.value.exit_code == 2
    assert str(tmp_path / FILENAME) in str(info.value) and "SQLITE_BUSY" in str(info.value)
    assert rt.outbox is None
    locked.execute("ROLLBACK")
    assert_kept(tmp_path)


def test_a_reload_keeps_trying_to_open_a_locked_outbox(
    tmp_path: Path, locked: sqlite3.Connection, fast: None, caplog: pytest.LogCaptureFixture
) -> None:
    """1. The daemon runs without rules (no outbox); a reload brings a line rule, the outbox is locked.
    2. It is not opened, `problem` (/healthz, /metrics) says why, one error is logged.
    3. The main loop tries again every RETRY_S, logging nothing new while it fails.
    4. Once the lock is gone the next try opens it, with its rows, and the problem is cleared."""
    rt, stack, alerts = runtime(tmp_path), ExitStack(), FakeAlerts()
    rt.start(stack, config(tmp_path, []))
    cfg, mqtt, later = config(tmp_path, [{"name": "r", "line": "mid"}]), link(), outbox_runtime.RETRY_S + 1
    try:
        rt.reload(cfg, alerts, mqtt)  # type: ignore[arg-type]
        problem = rt.problem
        assert rt.outbox is None and problem is not None and "SQLITE_BUSY" in problem
        rt.retry(time.monotonic() + later, cfg, alerts, mqtt)  # type: ignore[arg-type]
        assert rt.outbox is None
        assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1

        locked.execute("ROLLBACK")
        rt.retry(time.monotonic(), cfg, alerts, mqtt)  # type: ignore[arg-type]  # not due yet
        assert rt.outbox is None
        rt.retry(time.monotonic() + later, cfg, alerts, mqtt)  # type: ignore[arg-type]
        assert rt.outbox is not None and alerts.outbox is rt.outbox
        assert rt.problem is None and rt.outbox.pending == 1
    finally:
        stack.close()
        rt.stop_delivery()
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_a_refused_write_shows_in_metrics_and_health(tmp_path: Path) -> None:
    """1. The outbox's disk is full and a frame's events cannot be written.
    2. /metrics: vistream_outbox_unavailable 1, vistream_outbox_write_failures_total 1; /healthz
       names SQLite's reason, /livez does not (a restart frees no disk).
    3. A write succeeds again: unavailable 0, the failure stays counted, /healthz is ok."""
    from vistream.ops.metrics import _alert_metrics

    rt, stack = runtime(tmp_path), ExitStack()
    rt.start(stack, config(tmp_path, [{"name": "r", "line": "mid"}]))
    box = rt.outbox
    assert box is not None

    def figures() -> dict[str, float]:
        fig = Figures(outbox=rt.figures())
        return {s.name: s.value for family in _alert_metrics(fig, {}, []) for s in family.samples}

    def verdict(remote: bool = True) -> str | None:
        return health(Vitals(2.0, ready=True, flowing=True, outbox_problem=rt.problem), remote=remote)

    try:
        pages = box._db.execute("PRAGMA page_count").fetchone()[0]
        box._db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(ob.OutboxUnavailable):
            box.add("a", "p/a/events", b"x" * 100_000)
        assert figures()["vistream_outbox_unavailable"] == 1
        assert figures()["vistream_outbox_write_failures_total"] == 1
        assert verdict() == "the event outbox cannot be written: SQLITE_FULL: database or disk is full"
        assert verdict(remote=False) is None

        box._db.execute("PRAGMA max_page_count = 1073741823")
        box.add("a", "p/a/events", b"x")
        assert figures()["vistream_outbox_unavailable"] == 0
        assert figures()["vistream_outbox_write_failures_total"] == 1
        assert verdict() is None
    finally:
        stack.close()
