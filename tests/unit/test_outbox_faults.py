"""What can go wrong with the outbox (issue 18, "No alert lost, none invented"): a database that is
locked or full is not corrupt, the wall clock does not age rows, and eviction keeps what a subscriber
needs (the latest retained state, whole events)."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vistream.outputs import outbox as ob
from vistream.outputs.alerts import Alerts
from vistream.outputs.outbox import FILENAME, Message, Outbox

DAY = 86400.0
T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / FILENAME


@pytest.fixture
def fast_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock held by someone else is reported after 50 ms instead of SQLite's 10 s; retried as fast."""
    monkeypatch.setattr(ob, "BUSY_TIMEOUT_S", 0.05, raising=False)
    monkeypatch.setattr(ob, "OPEN_RETRY_S", 0.05, raising=False)


@pytest.fixture
def locked(path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holds the write lock of an outbox file with two rows and a counter state."""
    box = Outbox(path)
    box.add("a", "p/a/events", b'{"id": "e1"}')
    box.add("a", "p/a/gate/in/count", b"7", retain=True, kind="counter", state={"count/a": "7"})
    box.close()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    yield other
    if other.in_transaction:
        other.execute("ROLLBACK")
    other.close()


def assert_intact(path: Path) -> None:
    """Nothing moved aside, and the rows and state written before are there."""
    assert not list(path.parent.glob("*.corrupt-*"))
    box = Outbox(path)
    try:
        assert box.pending == 2 and box.get_state("count/a") == "7"
    finally:
        box.close()


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- 2. locked, read-only, full: not corrupt ---------------------------------------------------------


def test_a_locked_database_is_not_moved_aside(
    path: Path, locked: sqlite3.Connection, fast_busy: None, caplog: pytest.LogCaptureFixture
) -> None:
    """1. An outbox file with rows and a counter; another process holds its write lock.
    2. Opening fails with OutboxUnavailable naming SQLITE_BUSY: the file is not renamed aside and
       no empty outbox is started (counters would restart at 0, pending rows be orphaned).
    3. Once the lock is released the outbox opens with its rows and state."""
    with pytest.raises(sqlite3.OperationalError) as info:
        Outbox(path).close()
    assert type(info.value).__name__ == "OutboxUnavailable"
    assert info.value.reason.startswith("SQLITE_BUSY")  # type: ignore[attr-defined]
    assert "corrupt" not in caplog.text
    locked.execute("ROLLBACK")
    assert_intact(path)


def test_opening_retries_a_lock_until_it_is_released_and_logs_once(
    path: Path, locked: sqlite3.Connection, fast_busy: None, caplog: pytest.LogCaptureFixture
) -> None:
    """1. The write lock is held for 0.4 s; the outbox is opened with a 5 s deadline.
    2. It fails several times, logs one error (not one per retry), counts every failure, opens
       when the lock goes, with `problem` cleared and its rows there."""
    threading.Timer(0.4, locked.execute, ("ROLLBACK",)).start()
    box = Outbox(path, open_timeout_s=5.0)
    try:
        assert box.pending == 2 and box.get_state("count/a") == "7"
        assert box.write_failures >= 2 and box.problem is None
        assert len(errors(caplog)) == 1 and "SQLITE_BUSY" in errors(caplog)[0]
        assert "opened after" in caplog.text
    finally:
        box.close()
    assert not list(path.parent.glob("*.corrupt-*"))


# The database refuses to grow by another page (SQLITE_FULL, as on a full disk), or to be written
# at all (SQLITE_READONLY, as a read-only file or mount), and then takes writes again.
FAULTS = {
    "full": ("SQLITE_FULL", "PRAGMA max_page_count = {pages}", "PRAGMA max_page_count = 1073741823"),
    "read-only": ("SQLITE_READONLY", "PRAGMA query_only = ON", "PRAGMA query_only = OFF"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_refused_write_raises_a_named_error_and_keeps_the_counts(
    path: Path, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    """1. One row pending, a counter state; then the disk is full (or the file read-only).
    2. add_many (rows and state) and set_state raise OutboxUnavailable("SQLITE_FULL: ..."): nothing
       is written, `pending` and the state are unchanged, `problem` says why, every failure is
       counted, and the error is logged once.
    3. Writable again: the next write goes in and clears `problem`."""
    name, refuse, allow = FAULTS[fault]
    box = Outbox(path)
    try:
        box.add("a", "p/a/events", b"{}", state={"count": "1"})
        box._db.execute(refuse.format(pages=box._db.execute("PRAGMA page_count").fetchone()[0]))
        big = Message("a", "p/a/events", b"x" * 200_000)
        for _ in range(3):
            with pytest.raises(ob.OutboxUnavailable) as info:
                box.add_many([big, big], state={"count": "2"})
            assert info.value.reason.startswith(name)
        with pytest.raises(ob.OutboxUnavailable):
            box.set_state("big", "x" * 200_000)
        assert box.pending == 1 and len(box.pending_rows()) == 1 and box.get_state("count") == "1"
        assert box.problem is not None and box.problem.startswith(name)
        assert box.write_failures == 4
        assert len(errors(caplog)) == 1
        assert not list(path.parent.glob("*.corrupt-*"))

        box._db.execute(allow)
        box.add_many([big], state={"count": "2"})
        assert box.problem is None and box.pending == 2 and box.get_state("count") == "2"
    finally:
        box.close()


def test_real_corruption_is_still_moved_aside(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file that is not a database (SQLITE_NOTADB) is the one case that is moved aside."""
    path.write_bytes(b"this is not a database" * 100)
    box = Outbox(path)
    try:
        assert box.pending == 0 and box.problem is None and box.write_failures == 0
    finally:
        box.close()
    assert len(list(path.parent.glob(f"{FILENAME}.corrupt-*"))) == 1
    assert "corrupt" in caplog.text


@pytest.mark.parametrize(
    ("exc_type", "code", "corrupt"),
    [
        (sqlite3.OperationalError, 5, False),  # SQLITE_BUSY
        (sqlite3.OperationalError, 6, False),  # SQLITE_LOCKED
        (sqlite3.OperationalError, 8, False),  # SQLITE_READONLY
        (sqlite3.OperationalError, 10, False),  # SQLITE_IOERR
        (sqlite3.OperationalError, 10 | (13 << 8), False),  # SQLITE_IOERR_FSYNC
        (sqlite3.OperationalError, 13, False),  # SQLITE_FULL
        (sqlite3.OperationalError, 14, False),  # SQLITE_CANTOPEN
        (sqlite3.DatabaseError, 11, True),  # SQLITE_CORRUPT
        (sqlite3.DatabaseError, 11 | (1 << 8), True),  # SQLITE_CORRUPT_VTAB
        (sqlite3.DatabaseError, 26, True),  # SQLITE_NOTADB
        (sqlite3.DatabaseError, None, False),  # raised by Python code, not by SQLite
    ],
)
def test_only_sqlite_corruption_codes_count_as_corrupt(
    exc_type: type[sqlite3.Error], code: int | None, corrupt: bool
) -> None:
    exc = exc_type("some reason")
    if code is not None:
        exc.sqlite_errorcode = code
    assert ob._corrupt(exc) is corrupt


# -- 4. the wall clock does not age rows -------------------------------------------------------------


@pytest.mark.parametrize("step", [30 * DAY, -3600.0])
def test_a_wall_clock_step_evicts_nothing(path: Path, step: float) -> None:
    """1. Rows are added (max_age_s one day) with the wall clock at T0.
    2. The wall clock steps (NTP after an offline boot: +30 days; or back an hour).
    3. Neither expire() nor reopening evicts anything: only a few milliseconds really passed."""
    wall = FakeClock(T0)
    box = Outbox(path, max_age_s=DAY, clock=wall)
    box.add("a", "p/a/events", b"1")
    box.add("a", "p/a/r/active", b"OFF", retain=True, kind="active")
    wall.t += step
    assert box.expire() == 0 and box.pending == 2
    box.close()
    box = Outbox(path, max_age_s=DAY, clock=wall)
    try:
        assert box.pending == 2 and box.evicted == 0
    finally:
        box.close()


@pytest.mark.parametrize("step", [30 * DAY, -3600.0])
def test_rows_age_by_elapsed_time_whatever_the_wall_clock_does(path: Path, step: float) -> None:
    """1. Row A at elapsed 0, the wall clock steps, row B 50 s later (max_age_s=100).
    2. At 99 s elapsed nothing is old enough; at 101 s A goes and B stays, whatever the wall says."""
    wall, mono = FakeClock(T0), FakeClock(1000.0)
    box = Outbox(path, max_age_s=100, clock=wall, monotonic=mono)
    try:
        box.add("a", "t", b"A")
        wall.t += step
        mono.t += 50
        box.add("a", "t", b"B")
        mono.t += 49
        assert box.expire() == 0
        mono.t += 2
        assert box.expire() == 1
        assert [r.payload for r in box.pending_rows()] == [b"B"]
    finally:
        box.close()


SCHEMA_1 = """
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, camera TEXT NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, created_at REAL NOT NULL,
    kind TEXT NOT NULL);
CREATE INDEX outbox_topic ON outbox (topic) WHERE retain = 1;
CREATE INDEX outbox_created_at ON outbox (created_at);
CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
PRAGMA user_version = 1;
"""


def schema_1_file(path: Path, rows: list[tuple[str, bytes, int, str]], created_at: float) -> None:
    """An outbox file as version 1 wrote it; rows are (topic, payload, retain, kind)."""
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1)
    db.executemany(
        "INSERT INTO outbox (camera, topic, payload, qos, retain, created_at, kind)"
        " VALUES ('a', ?, ?, 1, ?, ?, ?)",
        [(topic, payload, retain, created_at, kind) for topic, payload, retain, kind in rows],
    )
    db.commit()
    db.close()


def event(event_id: str, type_: str) -> bytes:
    return json.dumps({"id": event_id, "type": type_, "camera": "a"}).encode()


def test_rows_of_schema_1_count_as_young(path: Path) -> None:
    """1. A version 1 file whose rows say (wall clock) they were written 30 days ago; max_age_s 7 days.
    2. Opened, it is migrated: nothing is evicted (their age is unknown, not 30 days), event rows get
       their event id from the payload.
    3. They age from the migration on: 7 days of elapsed time later they go."""
    schema_1_file(
        path, [("p/events", event("e1", "start"), 0, "event"), ("t", b"1", 0, "counter")], T0 - 30 * DAY
    )
    mono = FakeClock(0.0)
    box = Outbox(path, max_age_s=7 * DAY, clock=FakeClock(T0), monotonic=mono)
    try:
        assert box.pending == 2 and box.evicted == 0
        ids = box._db.execute("SELECT event_id FROM outbox ORDER BY id").fetchall()
        assert ids == [("e1",), (None,)]
        assert box._db.execute("PRAGMA user_version").fetchone()[0] == ob.SCHEMA_VERSION
        mono.t += 7 * DAY + 1
        assert box.expire() == 2
    finally:
        box.close()


# -- 7. eviction keeps the meaning -------------------------------------------------------------------


def test_a_full_outbox_keeps_the_latest_value_of_each_retained_topic(path: Path) -> None:
    """1. max_rows=10: an `active OFF` (the broker keeps the ON it has until it gets this) and a counter.
    2. 20 events during an outage: the oldest events are evicted, never the OFF or the counter."""
    box = Outbox(path, max_rows=10)
    try:
        box.add("a", "p/a/r/active", b"OFF", retain=True, kind="active")
        box.add("a", "p/a/l/in/count", b"3", retain=True, kind="counter")
        for i in range(20):
            box.add("a", "p/a/events", str(i))
        rows = box.pending_rows(0, 100)
        assert [r.payload for r in rows if r.retain] == [b"OFF", b"3"]
        assert box.pending == 10 and box.evicted == 12
    finally:
        box.close()


def test_age_eviction_keeps_the_latest_value_of_each_retained_topic(path: Path) -> None:
    """An `active OFF` older than max_age_s is still the truth the broker lacks: it stays; the event
    next to it goes."""
    mono = FakeClock(0.0)
    box = Outbox(path, max_age_s=100, monotonic=mono)
    try:
        box.add("a", "p/a/r/active", b"OFF", retain=True, kind="active")
        box.add("a", "p/a/events", b"{}")
        mono.t += 101
        assert box.expire() == 1
        assert [r.payload for r in box.pending_rows()] == [b"OFF"]
    finally:
        box.close()


def event_messages(event_id: str, type_: str) -> list[Message]:
    """As Alerts writes an event's message: to `{prefix}/events` and `{prefix}/{camera}/events`."""
    payload = event(event_id, type_)
    return [
        Message("a", "p/events", payload, event_id=event_id),
        Message("a", "p/a/events", payload, event_id=event_id),
    ]


def pending_events(box: Outbox) -> list[tuple[str, str]]:
    return [(d["id"], d["type"]) for d in (json.loads(r.payload) for r in box.pending_rows(0, 100))]


def test_a_full_outbox_evicts_an_event_with_all_its_rows(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. max_rows=10: e1 starts, e2 starts, e1 ends, e2 ends, e3 starts (10 rows, two per message).
    2. e3's end makes it full: the oldest event, e1, goes with all four rows (its end too), logged
       and counted; e2 and e3 stay whole.
    3. A later message of e1 is not queued (an update of an event the subscriber never saw
       start), and is counted as evicted."""
    box = Outbox(path, max_rows=10)
    caplog.set_level(logging.WARNING, "vistream.outputs.outbox")
    try:
        for event_id, type_ in [
            ("e1", "start"),
            ("e2", "start"),
            ("e1", "end"),
            ("e2", "end"),
            ("e3", "start"),
        ]:
            box.add_many(event_messages(event_id, type_))
        box.add_many(event_messages("e3", "end"))
        assert pending_events(box) == [(e, t) for e, t in [("e2", "start")] * 2 + [("e2", "end")] * 2] + [
            ("e3", "start"),
            ("e3", "start"),
            ("e3", "end"),
            ("e3", "end"),
        ]
        assert box.evicted == 4 and box.pending == 8
        assert "evicted 4 undelivered messages" in caplog.text and "1 whole events" in caplog.text
        assert box.add_many(event_messages("e1", "update")) == [0, 0]
        assert box.pending == 8 and box.evicted == 6
    finally:
        box.close()


def test_an_evicted_event_stays_evicted_after_a_restart(path: Path) -> None:
    """1. max_rows=2: e1 starts (2 rows), e2 starts: e1 is evicted while still open.
    2. The daemon restarts and ends the events it left open (`reason: restart`): e1's end is not
       queued, e2's is."""
    box = Outbox(path, max_rows=2)
    box.add_many(event_messages("e1", "start"))
    box.add_many(event_messages("e2", "start"))
    assert pending_events(box) == [("e2", "start")] * 2
    box.close()
    box = Outbox(path, max_rows=100)
    try:
        assert box.add_many(event_messages("e1", "end")) == [0, 0]
        assert box.add_many(event_messages("e2", "end"))[0] > 0
        assert pending_events(box) == [("e2", "start")] * 2 + [("e2", "end")] * 2
    finally:
        box.close()


def test_age_eviction_takes_an_event_whole(path: Path) -> None:
    """An event whose start is older than max_age_s goes with its newer end: never an end alone."""
    mono = FakeClock(0.0)
    box = Outbox(path, max_age_s=100, monotonic=mono)
    try:
        box.add_many(event_messages("e1", "start"))
        mono.t += 60
        box.add_many(event_messages("e1", "end") + event_messages("e2", "start"))
        mono.t += 41
        assert box.expire() == 4
        assert pending_events(box) == [("e2", "start")] * 2
    finally:
        box.close()


def test_migrated_events_are_evicted_whole(path: Path) -> None:
    """1. A version 1 file (no event ids stored) with e1 start, e2 start, e1 end: 6 rows.
    2. Opened with max_rows=6 and one more row added: e1 goes whole (its id read from the
       payload at migration), e2's start stays."""
    rows = [
        (topic, event(e, t), 0, "event")
        for e, t in [("e1", "start"), ("e2", "start"), ("e1", "end")]
        for topic in ("p/events", "p/a/events")
    ]
    schema_1_file(path, rows, T0)
    box = Outbox(path, max_rows=6, clock=FakeClock(T0))
    try:
        box.add("a", "p/x", b'{"id": "x", "type": "start"}')
        assert pending_events(box) == [("e2", "start")] * 2 + [("x", "start")]
    finally:
        box.close()


def test_alerts_tag_event_messages_with_their_event() -> None:
    """Both topics of an event message carry the event id, so eviction takes them together."""
    alerts: Any = SimpleNamespace(prefix="p")
    messages = Alerts._event_messages(alerts, {"id": "ev-1", "camera": "a", "type": "start"})
    assert [(m.topic, m.event_id) for m in messages] == [("p/events", "ev-1"), ("p/a/events", "ev-1")]
