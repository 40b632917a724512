"""The durable outbox: every alert message is in SQLite before it is published, until the broker acks it.

Rows are events, line-counter values, rule `active` states, snapshots and discovery configs (never
detections: they would be stale after an outage). The row id (AUTOINCREMENT, so ids are never reused
even after the table was emptied) is the delivery order; sending in id order keeps every camera's
messages in order. `Delivery` (delivery.py) sends pending rows and deletes them once acknowledged.

Durability: WAL journal with `synchronous=FULL`. In WAL mode NORMAL already survives a killed process
(a commit is in the WAL file, the OS keeps it) and never corrupts the database, but it may lose the
last commits on power loss; FULL fsyncs the WAL on every commit, so an event written here also
survives a power cut of the box, which is what "delivered at least once across restarts" has to
mean on an edge device. The cost is one fsync per commit, which is fine at alert rates (acks are
deleted in batches, see `ack_many`).

A small key-value `state` table in the same file keeps what must survive a restart (line counters,
the last `active` state of each rule); `add(..., state=...)` writes a counter row and the counter's
new value in one transaction, so after a crash the two always agree.

Faults are told apart (docs/events.md, "What can go wrong"):
- Only a file SQLite reports as corrupt (SQLITE_CORRUPT, SQLITE_NOTADB, a failed `quick_check`) is
  moved aside (`*.corrupt-*`) for a fresh one. A locked, read-only or full database, or an I/O error,
  is not corruption: opening retries until `open_timeout_s` and then raises `OutboxUnavailable`, and
  a write that fails so raises `OutboxUnavailable` with the counts unchanged. Either sets `problem`
  (logged once, until a write succeeds again) and counts `write_failures`.
- Age is elapsed time the daemon measured, never the wall clock (an edge box that boots offline
  gets NTP's step of weeks later): a `ledger` of seconds run, carried across restarts (saved with
  every add, by `expire` and at close); a row's age is the ledger now minus the ledger at its add.
  Time while the daemon is stopped does not count. `created_at` (wall time) is kept for people only.
- Eviction (full, or older than `max_age_s`) never drops the one pending value of a retained
  latest-state topic (it may be the only `active OFF`) and drops an event's rows all together;
  later rows of an evicted event are not queued (its id is kept in the file, so also not after a
  restart), and nobody gets an `end` without its `start`.

One `Outbox` owns its file: `pending` is kept in memory (one COUNT(*) at open), so another writer to
the same file would make it drift.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FILENAME = "outbox.sqlite3"
SCHEMA_VERSION = 2  # 2: rows aged by the elapsed-time ledger (ledger_at), event_id

# Retained "latest state" kinds: a newer unsent value for a topic makes an older unsent one pointless,
# so it replaces it. Events are never coalesced: each one is a fact a subscriber must see.
LATEST_STATE_KINDS = frozenset({"counter", "active", "snapshot", "discovery"})

# When full, evict 1/_EVICT_BATCH of max_rows at once, so a long outage at the limit logs one warning
# per batch instead of one per added row.
_EVICT_BATCH = 100

# Pages of WAL after which a commit checkpoints it into the database (see `_connect`).
WAL_PAGES = 64

# Ids of evicted events remembered (in the file), so that their later rows are not queued.
_EVICTED_EVENTS_KEPT = 10_000

OPEN_RETRY_S = 0.5  # between attempts to open, until open_timeout_s
BUSY_TIMEOUT_S = 10.0  # how long one statement waits for another connection's lock

# Primary result codes (the low byte of sqlite_errorcode) that mean the file itself is damaged.
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26

# The one pending value of a retained latest-state topic (coalescing keeps one per topic).
_LATEST = "retain = 1 AND kind IN ({})".format(", ".join(f"'{k}'" for k in sorted(LATEST_STATE_KINDS)))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    camera TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_at REAL NOT NULL,
    kind TEXT NOT NULL,
    ledger_at REAL NOT NULL DEFAULT 0,
    event_id TEXT
);
CREATE INDEX IF NOT EXISTS outbox_topic ON outbox (topic) WHERE retain = 1;
CREATE INDEX IF NOT EXISTS outbox_ledger_at ON outbox (ledger_at);
CREATE INDEX IF NOT EXISTS outbox_event_id ON outbox (event_id) WHERE event_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    elapsed_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS evicted_event (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE
);
"""

# From version 1: rows had only wall-clock `created_at`. Their age is unknown; they count as added
# at the migration (ledger_at 0, and the ledger starts at 0), so no wall-clock reason evicts them.
# Their event ids come from the payload, so an event's rows are evicted together also when migrated.
_MIGRATE_FROM_1 = """
ALTER TABLE outbox ADD COLUMN ledger_at REAL NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN event_id TEXT;
UPDATE outbox SET event_id = json_extract(CAST(payload AS TEXT), '$.id')
    WHERE kind = 'event' AND json_valid(CAST(payload AS TEXT));
DROP INDEX IF EXISTS outbox_created_at
"""


class OutboxUnavailable(sqlite3.OperationalError):
    """The database cannot be written now (locked, read-only, full, I/O): not corruption, try again.

    `reason` is SQLite's name and message, e.g. "SQLITE_FULL: database or disk is full".
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OutboxCorrupt(sqlite3.DatabaseError):
    """`PRAGMA quick_check` found damage."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message to queue; `add_many` takes several in one transaction.

    `event_id`: the event an `event` message belongs to; eviction drops an event's messages together.
    """

    camera: str
    topic: str
    payload: bytes | str
    retain: bool = False
    kind: str = "event"
    qos: int = 1
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class Row:
    """A pending message as stored."""

    id: int
    camera: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_at: float
    kind: str


class Outbox:
    """`Outbox(state_dir / FILENAME)`: pending alert messages and restart state in one SQLite file.

    Thread-safe: producers add from their thread, the delivery thread reads and acks from its own.
    `clock` (wall time) only stamps `created_at`; ages come from `monotonic` and the stored ledger.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_rows: int = 100_000,
        max_age_s: float = 7 * 86400.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        open_timeout_s: float = 0.0,
    ) -> None:
        if max_rows < 1 or max_age_s <= 0:
            raise ValueError("max_rows must be >= 1 and max_age_s > 0")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.RLock()
        self._watchers: list[Callable[[], None]] = []
        self._evicted = 0
        self._coalesced = 0
        self._write_failures = 0
        self._problem: str | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open(open_timeout_s)
        self._problem = None  # the open wrote the schema: writable now
        try:
            row = self._db.execute("SELECT elapsed_s FROM ledger WHERE id = 1").fetchone()
            self._ledger_base, self._mono_base = (row[0] if row else 0.0), monotonic()
            self._pending = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            if self._pending:
                log.info("outbox %s: %d messages pending from before", self.path, self._pending)
            self.expire()
        except BaseException:
            self._db.close()
            raise

    # -- opening ---------------------------------------------------------------------------------------

    def _open(self, timeout_s: float) -> sqlite3.Connection:
        """Connect; move a corrupt file aside (once); retry anything else until `timeout_s` has passed."""
        deadline = time.monotonic() + timeout_s
        moved = False
        while True:
            try:
                db = self._connect()
            except sqlite3.Error as exc:
                if _corrupt(exc) and not moved:
                    self._move_aside(exc)
                    moved = True
                    continue
                if not isinstance(exc, sqlite3.OperationalError):
                    raise  # e.g. a schema newer than this code: refuse, keep the file as it is
                reason = _reason(exc)
                self._write_failures += 1
                if time.monotonic() >= deadline:  # the caller says so (and may try again later)
                    raise OutboxUnavailable(reason) from exc
                if reason != self._problem:
                    log.error(
                        "outbox %s: cannot open (%s); nothing is moved aside, retrying for up to %g s",
                        self.path,
                        reason,
                        timeout_s,
                    )
                    self._problem = reason
                time.sleep(min(OPEN_RETRY_S, max(0.0, deadline - time.monotonic())))
                continue
            if self._write_failures:
                log.warning("outbox %s: opened after %d failed attempts", self.path, self._write_failures)
            return db

    def _move_aside(self, exc: sqlite3.Error) -> None:
        # A file SQLite cannot read (disk fault, someone else's file): keep it for inspection and
        # start empty, rather than crash-loop the daemon on every start.
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(self._clock())}")
        log.error("outbox %s is corrupt (%s); moved aside to %s, starting empty", self.path, exc, aside)
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.rename(f"{aside}{suffix}")

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; every write below is an explicit BEGIN
        # IMMEDIATE ... COMMIT, so what belongs together commits together.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(f"journal_mode WAL refused (got {mode})")
            db.execute("PRAGMA synchronous=FULL")
            # A small WAL: SQLite's default checkpoints at 1000 pages (4 MiB), and on a state_dir
            # smaller than that (a 1 MiB tmpfs, an almost full SD card) the WAL alone filled the
            # disk; every commit then failed, so no checkpoint ever ran again to make room. 64
            # pages (256 KiB) costs a checkpoint every few dozen events, nothing at alert rates.
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            db.execute(f"PRAGMA journal_size_limit={WAL_PAGES * 4096}")  # and truncated back to it
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise OutboxCorrupt(f"quick_check: {check}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(
                    f"schema version {version} is not one this vistream knows (up to {SCHEMA_VERSION})"
                )
            with _transaction(db):
                if version == 1:
                    _run(db, _MIGRATE_FROM_1)
                    log.info("outbox %s: schema 1 -> %d", self.path, SCHEMA_VERSION)
                _run(db, _SCHEMA)  # not executescript(): it would commit on its own
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    # -- adding ----------------------------------------------------------------------------------------

    def add(
        self,
        camera: str,
        topic: str,
        payload: bytes | str,
        *,
        retain: bool = False,
        kind: str = "event",
        qos: int = 1,
        state: Mapping[str, str | None] | None = None,
    ) -> int:
        """Queue one message (and set `state` keys in the same transaction); returns its row id."""
        return self.add_many([Message(camera, topic, payload, retain, kind, qos)], state=state)[0]

    def add_many(
        self, messages: Iterable[Message], *, state: Mapping[str, str | None] | None = None
    ) -> list[int]:
        """Queue messages in order in one transaction, with `state` keys (None deletes); returns row ids.

        A message of an event evicted before is not queued (id 0), counted as evicted.
        """
        ids: list[int] = []
        now = self._clock()
        with self._lock:
            with self._write():
                ledger = self._ledger()
                for m in messages:
                    if m.event_id is not None and self._was_evicted(m.event_id):
                        self._evicted += 1
                        ids.append(0)
                        continue
                    if m.retain and m.kind in LATEST_STATE_KINDS:
                        gone = self._db.execute(
                            "DELETE FROM outbox WHERE topic = ? AND retain = 1", (m.topic,)
                        ).rowcount
                        self._pending -= gone
                        self._coalesced += gone
                    payload = _bytes(m.payload)
                    cur = self._db.execute(
                        "INSERT INTO outbox"
                        " (camera, topic, payload, qos, retain, created_at, kind, ledger_at, event_id)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (m.camera, m.topic, payload, m.qos, int(m.retain), now, m.kind, ledger, m.event_id),
                    )
                    assert cur.lastrowid is not None
                    ids.append(cur.lastrowid)
                    self._pending += 1
                self._set_states(state or {})
                self._save_ledger(ledger)  # never behind a row's ledger_at, also after a crash
                if self._pending > self.max_rows:
                    self._evict_rows()
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher()
        return ids

    def watch(self, callback: Callable[[], None]) -> None:
        """Call `callback()` after every committed add (the delivery thread's wake-up)."""
        with self._lock:
            self._watchers.append(callback)

    # -- reading and acknowledging ---------------------------------------------------------------------

    def pending_rows(self, after_id: int = 0, limit: int = 100) -> list[Row]:
        """Up to `limit` pending rows with id > after_id, oldest first."""
        with self._lock:
            cur = self._db.execute(
                "SELECT id, camera, topic, payload, qos, retain, created_at, kind FROM outbox"
                " WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            )
            return [Row(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5]), r[6], r[7]) for r in cur]

    def ack(self, row_id: int) -> bool:
        """The broker has the row: delete it. False when it was gone already (evicted, coalesced)."""
        return self.ack_many([row_id]) == 1

    def ack_many(self, row_ids: Iterable[int]) -> int:
        """Delete acknowledged rows in one transaction; returns how many were still there."""
        ids = [(i,) for i in row_ids]
        if not ids:
            return 0
        with self._write():
            gone = 0
            for param in ids:
                gone += self._db.execute("DELETE FROM outbox WHERE id = ?", param).rowcount
            self._pending -= gone
        return gone

    # -- bounds ----------------------------------------------------------------------------------------

    def expire(self) -> int:
        """Evict rows older than max_age_s of elapsed time (whole events); returns how many.

        The sender calls this every minute; it also saves the elapsed-time ledger.
        """
        with self._lock:
            ledger = self._ledger()
            cutoff = ledger - self.max_age_s
            oldest_sql = f"SELECT MIN(ledger_at) FROM outbox WHERE NOT ({_LATEST})"
            oldest = self._db.execute(oldest_sql).fetchone()[0]
            with self._write():
                self._save_ledger(ledger)
                if oldest is None or oldest >= cutoff:
                    return 0
                rows = self._db.execute(
                    f"SELECT id, kind FROM outbox WHERE NOT ({_LATEST}) AND event_id IS NULL"
                    " AND ledger_at < ?",
                    (cutoff,),
                ).fetchall()
                # An event goes when its oldest row is too old: with all its rows, the newer ones too.
                events = [
                    e
                    for (e,) in self._db.execute(
                        "SELECT event_id FROM outbox WHERE event_id IS NOT NULL AND ledger_at < ?"
                        " GROUP BY event_id ORDER BY MIN(id)",
                        (cutoff,),
                    )
                ]
                return self._evict(rows, events, f"older than {self.max_age_s:g} s")

    def _evict_rows(self) -> None:
        """Full: evict the oldest rows and events until one batch below max_rows, latest states kept."""
        excess = self._pending - self.max_rows + max(1, self.max_rows // _EVICT_BATCH) - 1
        rows: list[tuple[int, str]] = []
        events: list[str] = []
        n = 0
        cur = self._db.execute(f"SELECT id, kind, event_id FROM outbox WHERE NOT ({_LATEST}) ORDER BY id")
        for row_id, kind, event_id in cur:
            if n >= excess:
                break
            if event_id is None:
                rows.append((row_id, kind))
                n += 1
            elif event_id not in events:
                events.append(event_id)
                n += self._db.execute(
                    f"SELECT COUNT(*) FROM outbox WHERE event_id = ? AND NOT ({_LATEST})", (event_id,)
                ).fetchone()[0]
        cur.close()
        self._evict(rows, events, f"full ({self.max_rows} rows)")

    def _evict(self, rows: list[tuple[int, str]], events: list[str], why: str) -> int:
        """Delete `rows` ((id, kind)) and every row of `events`, in the transaction in progress."""
        doomed = list(rows)
        for event_id in events:
            doomed += self._db.execute(  # an event's rows only: never a latest state, whatever it says
                f"SELECT id, kind FROM outbox WHERE event_id = ? AND NOT ({_LATEST})", (event_id,)
            ).fetchall()
        if not doomed:
            return 0
        self._db.executemany("DELETE FROM outbox WHERE id = ?", [(row_id,) for row_id, _ in doomed])
        n = len(doomed)
        self._pending -= n
        self._evicted += n
        self._remember_evicted(events)
        kinds = Counter(kind for _, kind in doomed)
        log.warning(
            "outbox %s: evicted %d undelivered messages, oldest first (ids %d..%d: %s%s)",
            why,
            n,
            min(row_id for row_id, _ in doomed),
            max(row_id for row_id, _ in doomed),
            ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())),
            f"; {len(events)} whole events, their later messages are dropped too" if events else "",
        )
        return n

    def _remember_evicted(self, events: list[str]) -> None:
        """Keep the ids (the newest _EVICTED_EVENTS_KEPT), in the file: a restart forgets none."""
        if not events:
            return
        self._db.executemany(
            "INSERT OR IGNORE INTO evicted_event (event_id) VALUES (?)", [(e,) for e in events]
        )
        self._db.execute(
            "DELETE FROM evicted_event WHERE seq <= (SELECT MAX(seq) FROM evicted_event) - ?",
            (_EVICTED_EVENTS_KEPT,),
        )

    def _was_evicted(self, event_id: str) -> bool:
        return (
            self._db.execute("SELECT 1 FROM evicted_event WHERE event_id = ?", (event_id,)).fetchone()
            is not None
        )

    # -- elapsed time ----------------------------------------------------------------------------------

    def _ledger(self) -> float:
        """Seconds this outbox's daemons have run, across restarts (never the wall clock)."""
        return self._ledger_base + max(0.0, self._monotonic() - self._mono_base)

    def _save_ledger(self, elapsed_s: float) -> None:
        self._db.execute(
            "INSERT INTO ledger (id, elapsed_s) VALUES (1, ?)"
            " ON CONFLICT (id) DO UPDATE SET elapsed_s = max(elapsed_s, excluded.elapsed_s)",
            (elapsed_s,),
        )

    # -- restart state ---------------------------------------------------------------------------------

    def get_state(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return default if row is None else str(row[0])

    def set_state(self, key: str, value: str | None) -> None:
        """Set (or with None delete) one key, durably."""
        with self._write():
            self._set_states({key: value})

    def states(self, prefix: str = "") -> dict[str, str]:
        """Every key starting with `prefix` and its value (e.g. all line counters at start-up)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value FROM state WHERE substr(key, 1, ?) = ? ORDER BY key", (len(prefix), prefix)
            ).fetchall()
        return {k: v for k, v in rows}

    def _set_states(self, values: Mapping[str, str | None]) -> None:
        for key, value in values.items():
            if value is None:
                self._db.execute("DELETE FROM state WHERE key = ?", (key,))
            else:
                self._db.execute(
                    "INSERT INTO state (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One transaction under the lock; the in-memory counts roll back with it.

        An operational failure (locked, read-only, full, I/O) raises `OutboxUnavailable`.
        """
        with self._lock:
            saved = self._pending, self._evicted, self._coalesced
            try:
                with _transaction(self._db):
                    yield
            except sqlite3.OperationalError as exc:
                self._pending, self._evicted, self._coalesced = saved
                if isinstance(exc, OutboxUnavailable) or _corrupt(exc):
                    raise
                raise self._failed(exc) from exc
            except BaseException:
                self._pending, self._evicted, self._coalesced = saved
                raise
            if self._problem is not None:
                log.warning("outbox %s is writable again (%s before)", self.path, self._problem)
                self._problem = None

    def _failed(self, exc: sqlite3.OperationalError) -> OutboxUnavailable:
        """Count a failed write; log it when the reason is new (not at every retry of the caller)."""
        reason = _reason(exc)
        self._write_failures += 1
        if reason != self._problem:
            log.error(
                "outbox %s: cannot write (%s); the write is refused, nothing is dropped", self.path, reason
            )
            self._problem = reason
        return OutboxUnavailable(reason)

    # -- figures and closing ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged (for `vistream_outbox_pending`); no query."""
        return self._pending

    @property
    def evicted(self) -> int:
        """Undelivered messages evicted since open (for `vistream_outbox_evicted_total`)."""
        return self._evicted

    @property
    def coalesced(self) -> int:
        """Unsent latest-state messages replaced by a newer value for the same topic."""
        return self._coalesced

    @property
    def problem(self) -> str | None:
        """Why the last write (or the open) failed, e.g. "SQLITE_FULL: ..."; None once one succeeds."""
        return self._problem

    @property
    def write_failures(self) -> int:
        """Opens and writes that failed for an operational reason (`vistream_outbox_write_failures_total`)."""
        return self._write_failures

    def close(self) -> None:
        with self._lock:
            # On a full disk the ledger keeps its last saved value: rows only age more slowly.
            with contextlib.suppress(sqlite3.Error), _transaction(self._db):
                self._save_ledger(self._ledger())
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA optimize")
            self._db.close()


def _corrupt(exc: sqlite3.Error) -> bool:
    """Does SQLite say the file itself is damaged (not merely unwritable now)?"""
    if isinstance(exc, OutboxCorrupt):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _reason(exc: sqlite3.Error) -> str:
    if isinstance(exc, OutboxUnavailable):
        return exc.reason
    name = getattr(exc, "sqlite_errorname", None)
    return f"{name}: {exc}" if name else str(exc)


def _bytes(payload: bytes | str) -> bytes:
    if isinstance(payload, str):
        return payload.encode()
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    raise TypeError(f"payload must be bytes or str, not {type(payload).__name__}")


def _run(db: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")  # may fail too (a full disk): roll back, or the next BEGIN fails
    except BaseException:
        # SQLite may already have rolled back on its own (SQLITE_FULL, SQLITE_IOERR, SQLITE_BUSY);
        # a failing ROLLBACK must not hide the error that caused it.
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise
