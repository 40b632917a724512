"""The durable outbox (SQLite) and its sender's bookkeeping, without a broker (fake paho client)."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from vistream.outputs.outbox import FILENAME, Message, Outbox

REPO_ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_outbox(tmp_path: Path, clock: FakeClock) -> Any:
    boxes: list[Outbox] = []

    def make(**kw: Any) -> Outbox:
        boxes.append(Outbox(tmp_path / FILENAME, clock=clock, monotonic=clock, **kw))
        return boxes[-1]

    yield make
    for box in boxes:
        box.close()


def topics(box: Outbox) -> list[str]:
    return [r.topic for r in box.pending_rows(0, 1_000_000)]


# -- ordering, acknowledgement -----------------------------------------------------------------------


def test_rows_come_back_in_insertion_order_overall_and_per_camera(make_outbox: Any) -> None:
    """1. Events of two cameras are added interleaved, some in one add_many transaction.
    2. pending_rows returns them in insertion order, and paging with after_id continues exactly there.
    """
    box = make_outbox()
    expected = []
    for i in range(10):
        cam = "a" if i % 3 else "b"
        box.add(cam, f"p/{cam}/events", json.dumps({"n": i}))
        expected.append((cam, i))
    box.add_many([Message("b", "p/b/events", b'{"n": 10}'), Message("a", "p/a/events", b'{"n": 11}')])
    expected += [("b", 10), ("a", 11)]

    rows = box.pending_rows(0, 100)
    assert [(r.camera, json.loads(r.payload)["n"]) for r in rows] == expected
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    for cam in "ab":
        ns = [json.loads(r.payload)["n"] for r in rows if r.camera == cam]
        assert ns == sorted(ns)
    first, rest = box.pending_rows(0, 5), box.pending_rows(rows[4].id, 100)
    assert first + rest == rows
    assert box.pending == 12


def test_ack_removes_exactly_that_row(make_outbox: Any) -> None:
    """1. Three rows. 2. Acking the middle one removes it and nothing else; pending drops by one.
    3. Acking it again (a duplicate PUBACK, or a row evicted meanwhile) changes nothing."""
    box = make_outbox()
    ids = [box.add("a", f"t/{i}", b"x") for i in range(3)]
    assert box.ack(ids[1]) is True
    assert [r.id for r in box.pending_rows()] == [ids[0], ids[2]]
    assert box.pending == 2
    assert box.ack(ids[1]) is False
    assert box.ack_many([ids[0], ids[2], 999]) == 2
    assert box.pending == 0 and box.pending_rows() == []


def test_ids_are_never_reused_after_the_table_emptied(make_outbox: Any) -> None:
    """A sender's cursor (last id sent) must never skip a new row: ids keep growing after all were acked."""
    box = make_outbox()
    first = box.add("a", "t", b"1")
    box.ack(first)
    assert box.add("a", "t", b"2") > first


def test_row_fields_round_trip(make_outbox: Any, clock: FakeClock) -> None:
    box = make_outbox()
    box.add("cam", "p/cam/rule/snapshot", b"\xff\xd8jpeg", retain=True, kind="snapshot")
    (row,) = box.pending_rows()
    assert (row.camera, row.topic, row.payload, row.qos, row.retain, row.created_at, row.kind) == (
        "cam",
        "p/cam/rule/snapshot",
        b"\xff\xd8jpeg",
        1,
        True,
        clock.t,
        "snapshot",
    )


# -- bounds --------------------------------------------------------------------------------------------


def test_eviction_by_rows_drops_the_oldest_and_counts_them(
    make_outbox: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """1. max_rows=10 and 11 events: the oldest one goes, counted, with a warning naming its kind.
    2. 10 more: the 10 oldest of those left go; the newest 10 remain in order."""
    box = make_outbox(max_rows=10)
    caplog.set_level(logging.WARNING, "vistream.outputs.outbox")
    ids = [box.add("a", "t", str(i)) for i in range(11)]
    assert box.pending == 10 and box.evicted == 1
    assert [r.id for r in box.pending_rows()] == ids[1:]
    assert "evicted 1 undelivered messages" in caplog.text and "1 event" in caplog.text
    ids += [box.add("a", "t", str(i)) for i in range(11, 21)]
    assert box.pending <= 10 and box.evicted == 21 - box.pending
    assert [r.id for r in box.pending_rows()] == ids[-box.pending :]


def test_eviction_by_rows_goes_in_batches(make_outbox: Any, caplog: pytest.LogCaptureFixture) -> None:
    """At the limit, one batch (1 % of max_rows) is evicted at a time: one warning per batch, not per row."""
    box = make_outbox(max_rows=1000)
    caplog.set_level(logging.WARNING, "vistream.outputs.outbox")
    box.add_many([Message("a", "t", b"x")] * 1000)
    for _ in range(20):
        box.add("a", "t", b"x")
    assert box.evicted == 20
    assert len([r for r in caplog.records if "evicted" in r.getMessage()]) == 2
    assert box.pending == 1000


def test_eviction_by_age(make_outbox: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """1. Rows written at t, t+10 and t+100 with max_age_s=100.
    2. At t+120 expire() evicts the two older than 100 s, counts them and warns; the newest stays.
    3. Nothing more to expire: expire() returns 0 and adds nothing to the count."""
    box = make_outbox(max_age_s=100)
    caplog.set_level(logging.WARNING, "vistream.outputs.outbox")
    t0 = clock.t
    for dt in (0, 10, 100):
        clock.t = t0 + dt
        box.add("a", "t", str(dt), kind="counter")
    clock.t = t0 + 120
    assert box.expire() == 2
    assert box.evicted == 2 and box.pending == 1
    assert [r.payload for r in box.pending_rows()] == [b"100"]
    assert "older than 100 s" in caplog.text and "2 counter" in caplog.text
    assert box.expire() == 0 and box.evicted == 2


def test_age_carries_across_a_restart_but_time_stopped_does_not_count(
    tmp_path: Path, clock: FakeClock
) -> None:
    """1. A row is added; the daemon runs 40 s and stops.
    2. It is stopped for a day (the wall clock says so; nothing the outbox trusts does) and starts in
       a new process whose monotonic clock starts elsewhere: the row is 40 s old, it stays.
    3. 21 s later it is 61 s old (over max_age_s=60): expire() evicts it."""
    mono = FakeClock(5.0)
    box = Outbox(tmp_path / FILENAME, max_age_s=60, clock=clock, monotonic=mono)
    box.add("a", "t", b"old")
    mono.t += 40
    clock.t += 40
    box.close()
    clock.t += 86400
    mono.t = 3.0
    box = Outbox(tmp_path / FILENAME, max_age_s=60, clock=clock, monotonic=mono)
    try:
        assert box.pending == 1 and box.evicted == 0
        mono.t += 21
        assert box.expire() == 1 and box.pending == 0
    finally:
        box.close()


# -- coalescing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "retain", "coalesced"),
    [
        ("counter", True, True),
        ("active", True, True),
        ("snapshot", True, True),
        ("discovery", True, True),
        ("event", False, False),
        ("event", True, False),  # an event is a fact, never superseded
        ("counter", False, False),  # not retained: not a "latest state"
    ],
)
def test_latest_state_supersedes_an_older_unsent_value_of_the_same_topic(
    make_outbox: Any, kind: str, retain: bool, coalesced: bool
) -> None:
    """1. Two values for one topic, with an event in between and another topic's value.
    2. For retained latest-state kinds only the newer value is pending (later in order than the
       event, as it was added later); events and non-retained rows are all kept."""
    box = make_outbox()
    box.add("a", "p/a/gate/in/count", b"1", retain=retain, kind=kind)
    box.add("a", "p/a/events", b"{}", kind="event")
    box.add("a", "p/a/gate/out/count", b"7", retain=retain, kind=kind)
    box.add("a", "p/a/gate/in/count", b"2", retain=retain, kind=kind)
    rows = box.pending_rows()
    if coalesced:
        assert [(r.topic, r.payload) for r in rows] == [
            ("p/a/events", b"{}"),
            ("p/a/gate/out/count", b"7"),
            ("p/a/gate/in/count", b"2"),
        ]
        assert box.coalesced == 1 and box.pending == 3
    else:
        assert len(rows) == 4 and box.coalesced == 0 and box.pending == 4


# -- restart state -------------------------------------------------------------------------------------


def test_state_round_trip_survives_reopen(tmp_path: Path) -> None:
    """1. Line counters and an active state are set; one counter is written with its outbox row.
    2. After close and reopen every value is back, `states(prefix)` lists one family, None deletes."""
    box = Outbox(tmp_path / FILENAME)
    box.set_state("count/front/gate/in", "12")
    box.set_state("active/front/person", "ON")
    box.add(
        "front",
        "p/front/gate/out/count",
        b"3",
        retain=True,
        kind="counter",
        state={"count/front/gate/out": "3"},
    )
    box.close()

    box = Outbox(tmp_path / FILENAME)
    try:
        assert box.get_state("count/front/gate/in") == "12"
        assert box.get_state("missing") is None and box.get_state("missing", "0") == "0"
        assert box.states("count/") == {"count/front/gate/in": "12", "count/front/gate/out": "3"}
        assert box.pending == 1
        box.set_state("count/front/gate/in", "13")
        box.set_state("active/front/person", None)
        assert box.states() == {"count/front/gate/in": "13", "count/front/gate/out": "3"}
    finally:
        box.close()


def test_a_failed_add_writes_neither_row_nor_state(make_outbox: Any) -> None:
    """A counter row and its state value are one transaction: if the row cannot be written, the state
    stays at its old value too (here: a payload of the wrong type after a valid message), and so does
    `pending`."""
    box = make_outbox()
    box.set_state("count", "1")
    with pytest.raises(TypeError):
        box.add_many([Message("a", "t", b"2"), Message("a", "t", 3)], state={"count": "2"})  # type: ignore[arg-type]
    assert box.get_state("count") == "1"
    assert box.pending == 0 and box.pending_rows() == []


def test_opens_in_wal_mode_with_full_sync(make_outbox: Any, tmp_path: Path) -> None:
    make_outbox()
    db = sqlite3.connect(tmp_path / FILENAME)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_an_unreadable_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Garbage where the database should be: it is kept as `*.corrupt-*` and an empty outbox opens."""
    (tmp_path / FILENAME).write_bytes(b"this is not a database" * 100)
    box = Outbox(tmp_path / FILENAME)
    try:
        assert box.pending == 0
        assert box.add("a", "t", b"x") >= 1
    finally:
        box.close()
    assert len(list(tmp_path.glob(f"{FILENAME}.corrupt-*"))) == 1
    assert "is corrupt" in caplog.text and "moved aside" in caplog.text


# -- crash mid-write -----------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from vistream.outputs.outbox import Message, Outbox
    box = Outbox(sys.argv[1])
    big = bytes(range(256)) * 800  # ~200 kB, a snapshot's size: kills land inside writes
    i = 0
    while True:
        i += 1
        event = Message("a", "p/a/events", b"%d" % i)
        snapshot = Message("b", "p/b/snap", big, retain=True, kind="snapshot")
        ids = box.add_many([event, snapshot], state={"counter": str(i)})
        print(ids[0], i, flush=True)
    """
)


@pytest.mark.parametrize("after_lines", [1, 50, 400])
def test_reopening_after_sigkill_mid_write_keeps_every_committed_row(
    tmp_path: Path, after_lines: int
) -> None:
    """1. A process adds (event, 200 kB snapshot, counter state) transactions in a loop and prints each
       committed event id.
    2. It is SIGKILLed while writing.
    3. Reopened, the database passes integrity_check; every printed id is pending, in order; the
       counter state equals the newest event's number (row and state committed together)."""
    path = tmp_path / FILENAME
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, cwd=REPO_ROOT, text=True
    )
    assert proc.stdout is not None
    committed: list[tuple[int, int]] = []
    for line in proc.stdout:
        row_id, n = map(int, line.split())
        committed.append((row_id, n))
        if len(committed) >= after_lines:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    committed += [tuple(map(int, line.split())) for line in proc.stdout]  # type: ignore[misc]

    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    box = Outbox(path)
    try:
        events = [r for r in box.pending_rows(0, 10**9) if r.kind == "event"]
        stored = {r.id: int(r.payload) for r in events}
        assert all(stored.get(row_id) == n for row_id, n in committed), "a committed row is missing"
        assert [r.id for r in events] == sorted(stored)
        newest = max(stored.values())
        assert newest >= committed[-1][1]
        assert box.get_state("counter") == str(newest)
        assert len([r for r in box.pending_rows(0, 10**9) if r.kind == "snapshot"]) == 1  # coalesced
    finally:
        box.close()
