"""The outbox writer (vistream/outputs/writer.py): group commits off the results thread, retries in
order while the outbox cannot be written, and a bound that never leaves an event without its start.

A real Outbox in tmp_path; "cannot be written" is SQLite's own read-only mode on its connection
(`PRAGMA query_only`), which fails every write as a full or read-only disk does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vistream.outputs.outbox import Message, Outbox
from vistream.outputs.writer import Entry, OutboxWriter


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite3")
    yield box
    box.close()


def event(event_id: str, kind: str) -> list[Entry]:
    """An event message as alerts.py queues it: on both event topics."""
    payload = json.dumps({"id": event_id, "type": kind})
    return [
        Entry(Message("cam", topic, payload, kind="event"), (event_id, kind))
        for topic in ("vs/events", "vs/cam/events")
    ]


def active(on: bool) -> Entry:
    return Entry(Message("cam", "vs/cam/r/active", "ON" if on else "OFF", retain=True, kind="active"))


def written(outbox: Outbox) -> list[tuple[str, str]]:
    """(event id, type) of the events written, or (topic, payload) of the other rows; vs/events only."""
    out = []
    for row in outbox.pending_rows(limit=10_000):
        if row.topic == "vs/cam/events":
            continue
        doc = json.loads(row.payload) if row.kind == "event" else None
        out.append((doc["id"], doc["type"]) if doc else (row.topic, row.payload.decode()))
    return out


def failing(outbox: Outbox, on: bool) -> None:
    outbox._db.execute(f"PRAGMA query_only = {int(on)}")


def test_everything_queued_meanwhile_goes_in_one_transaction_in_order(outbox: Outbox) -> None:
    """1. Frames are put while the writer is busy (not started yet): they queue.
    2. It starts: one commit writes them all, in the order they were put, with their state."""
    writer = OutboxWriter(outbox, "open/{}".format)
    for i in range(50):
        writer.put(event(f"e{i}", "start"), {f"open/e{i}": "{}"})
    writer.start()
    assert writer.flush()
    writer.stop()
    assert written(outbox) == [(f"e{i}", "start") for i in range(50)]
    assert writer.commits == 1 and len(outbox.states("open/")) == 50


def test_a_failed_write_is_tried_again_until_it_lands(outbox: Outbox) -> None:
    """1. The outbox fails every write; a start, an update and an end are put meanwhile, each
       with its state.
    2. Nothing is lost: the writer keeps them (`unwritten`) and retries.
    3. The outbox works again: they are written in order, the open event's state set and deleted."""
    writer = OutboxWriter(outbox, "open/{}".format, retry_s=(0.01, 0.05))
    writer.start()
    failing(outbox, True)
    writer.put(event("a", "start"), {"open/a": "{}"})
    writer.put(event("a", "update"), {"open/a": "{}"})
    writer.put([*event("a", "end"), active(False)], {"open/a": None})
    assert not writer.flush(0.3)
    assert writer.failures >= 2 and writer.unwritten == 7 and writer.failing
    failing(outbox, False)
    assert writer.flush()
    writer.stop()
    assert written(outbox) == [("a", "start"), ("a", "update"), ("a", "end"), ("vs/cam/r/active", "OFF")]
    assert outbox.states("open/") == {} and writer.failing is None and not writer.dropped


def test_over_the_bound_the_least_needed_goes_first_and_no_event_loses_its_start(outbox: Outbox) -> None:
    """The outbox fails; with a bound of 10 messages (the writer idle, so that what it holds is
    exactly what was put):
    1. Event `old` started and its start was written before the outage; its end comes during it.
    2. `active` flips ON, OFF, ON: only the newest value is kept (superseded).
    3. Events b, c, d start and update: updates go before any event does.
    4. Still too many when c ends: the oldest unwritten event, b, goes whole (its start, and its
       end when it comes later), and its open state with it; `old`'s end is kept (its start went
       out).
    5. The outbox works again: what is written never has an update or end without its start."""
    writer = OutboxWriter(outbox, "open/{}".format, max_messages=10, retry_s=(0.01, 0.05))
    writer.start()
    writer.put(event("old", "start"), {"open/old": "{}"})
    writer.stop()
    writer.put(event("old", "end"), {"open/old": None})
    writer.put([active(True)])
    writer.put([active(False)])
    writer.put([active(True)])
    for name in "bcd":
        writer.put(event(name, "start"), {f"open/{name}": "{}"})
        writer.put(event(name, "update"), {f"open/{name}": "{}"})
    writer.put(event("c", "end"), {"open/c": None})
    writer.put(event("b", "end"), {"open/b": None})
    assert writer.dropped == {"superseded": 2, "update": 6, "event": 4}
    assert writer.events_dropped == 1 and writer.unwritten == 9
    writer.start()
    assert writer.flush()
    writer.stop()
    assert written(outbox) == [
        ("old", "start"),
        ("old", "end"),
        ("vs/cam/r/active", "ON"),
        ("c", "start"),
        ("d", "start"),
        ("c", "end"),
    ]
    assert set(outbox.states("open/")) == {"open/d"}


def test_stop_writes_what_is_queued(outbox: Outbox) -> None:
    """Stopping right after a put still writes it (the last frames before a shutdown)."""
    writer = OutboxWriter(outbox, "open/{}".format)
    writer.start()
    writer.put(event("a", "start"))
    writer.stop(2.0)
    assert written(outbox) == [("a", "start")] and writer.unwritten == 0


def test_a_long_outage_stays_within_the_bound_and_every_written_event_is_whole(outbox: Outbox) -> None:
    """1. The outbox cannot be written, and the writer tries again and again, while 5,000 events
       (start, 3 updates, end; two at a time) and an active flag per event come: 55,000 messages
       for a bound of 1,000.
    2. What is kept never exceeds the bound; the drops are counted and add up.
    3. Written afterwards: every event there has its start first and its end last, and the newest
       active value is there."""
    writer = OutboxWriter(outbox, "open/{}".format, max_messages=1000, retry_s=(0.001, 0.001))
    failing(outbox, True)
    writer.start()
    put = 0
    for pair in range(2500):
        ids = [f"e{pair}a", f"e{pair}b"]
        for kind in ("start", "update", "update", "update", "end"):
            for i in ids:
                writer.put(event(i, kind), {f"open/{i}": None if kind == "end" else "{}"})
                put += 2
        writer.put([active(pair % 2 == 0)])
        put += 1
        assert writer.unwritten <= 1000
    deadline = time.monotonic() + 10  # the writer's thread may not have had a turn on a busy box yet
    while writer.failures < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.failures >= 2
    failing(outbox, False)
    assert writer.flush()
    assert outbox.pending + outbox.coalesced + sum(writer.dropped.values()) == put
    writer.stop()
    seen: dict[str, list[str]] = {}
    for key, value in written(outbox):
        if key.startswith("e"):
            seen.setdefault(key, []).append(value)
    assert seen and all(kinds[0] == "start" and kinds[-1] == "end" for kinds in seen.values())
    assert written(outbox)[-1] == ("vs/cam/r/active", "OFF")
    assert outbox.states("open/") == {}
