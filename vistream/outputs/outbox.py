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
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FILENAME = "outbox.sqlite3"
SCHEMA_VERSION = 1

# Retained "latest state" kinds: a newer unsent value for a topic makes an older unsent one pointless,
# so it replaces it. Events are never coalesced: each one is a fact a subscriber must see.
LATEST_STATE_KINDS = frozenset({"counter", "active", "snapshot", "discovery"})

# When full, evict 1/_EVICT_BATCH of max_rows at once, so a long outage at the limit logs one warning
# per batch instead of one per added row.
_EVICT_BATCH = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    camera TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_at REAL NOT NULL,
    kind TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_topic ON outbox (topic) WHERE retain = 1;
CREATE INDEX IF NOT EXISTS outbox_created_at ON outbox (created_at);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class Message:
    """One message to queue; `add_many` takes several in one transaction."""

    camera: str
    topic: str
    payload: bytes | str
    retain: bool = False
    kind: str = "event"
    qos: int = 1


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
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_rows: int = 100_000,
        max_age_s: float = 7 * 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_rows < 1 or max_age_s <= 0:
            raise ValueError("max_rows must be >= 1 and max_age_s > 0")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.RLock()
        self._watchers: list[Callable[[], None]] = []
        self._evicted = 0
        self._coalesced = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()
        self._pending = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        if self._pending:
            log.info("outbox %s: %d messages pending from before", self.path, self._pending)
        self.expire()

    # -- opening ---------------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            # A file SQLite cannot read (disk fault, someone else's file): keep it for inspection and
            # start empty, rather than crash-loop the daemon on every start.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(self._clock())}")
            log.error(
                "outbox %s is unreadable (%s); moved aside to %s, starting empty", self.path, exc, aside
            )
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    src.rename(f"{aside}{suffix}")
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; every write below is an explicit BEGIN
        # IMMEDIATE ... COMMIT, so what belongs together commits together.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.DatabaseError(f"journal_mode WAL refused (got {mode})")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA journal_size_limit=67108864")  # truncate the WAL back to 64 MiB
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {version}, expected {SCHEMA_VERSION}")
            with _transaction(db):
                _create(db)  # not executescript(): it would commit on its own
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
        """Queue messages in order in one transaction, with `state` keys (None deletes); returns row ids."""
        ids: list[int] = []
        now = self._clock()
        with self._lock:
            with self._write():
                for m in messages:
                    if m.retain and m.kind in LATEST_STATE_KINDS:
                        gone = self._db.execute(
                            "DELETE FROM outbox WHERE topic = ? AND retain = 1", (m.topic,)
                        ).rowcount
                        self._pending -= gone
                        self._coalesced += gone
                    payload = _bytes(m.payload)
                    cur = self._db.execute(
                        "INSERT INTO outbox (camera, topic, payload, qos, retain, created_at, kind)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (m.camera, m.topic, payload, m.qos, int(m.retain), now, m.kind),
                    )
                    assert cur.lastrowid is not None
                    ids.append(cur.lastrowid)
                    self._pending += 1
                self._set_states(state or {})
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
        """Evict rows older than max_age_s (oldest first); returns how many. The sender calls this."""
        cutoff = self._clock() - self.max_age_s
        with self._lock:
            oldest = self._db.execute("SELECT MIN(created_at) FROM outbox").fetchone()[0]
            if oldest is None or oldest >= cutoff:
                return 0
            with self._write():
                return self._evict("created_at < ?", (cutoff,), f"older than {self.max_age_s:g} s")

    def _evict_rows(self) -> None:
        excess = self._pending - self.max_rows + max(1, self.max_rows // _EVICT_BATCH) - 1
        last = self._db.execute("SELECT id FROM outbox ORDER BY id LIMIT 1 OFFSET ?", (excess - 1,))
        self._evict("id <= ?", (last.fetchone()[0],), f"full ({self.max_rows} rows)")

    def _evict(self, where: str, params: tuple[float | int, ...], why: str) -> int:
        kinds = self._db.execute(
            f"SELECT kind, COUNT(*), MIN(id), MAX(id) FROM outbox WHERE {where} GROUP BY kind", params
        ).fetchall()
        n = self._db.execute(f"DELETE FROM outbox WHERE {where}", params).rowcount
        self._pending -= n
        self._evicted += n
        if n:
            log.warning(
                "outbox %s: evicted %d undelivered messages, oldest first (ids %d..%d: %s)",
                why,
                n,
                min(k[2] for k in kinds),
                max(k[3] for k in kinds),
                ", ".join(f"{k[1]} {k[0]}" for k in kinds),
            )
        return n

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
        """One transaction under the lock; the in-memory counts roll back with it."""
        with self._lock:
            saved = self._pending, self._evicted, self._coalesced
            try:
                with _transaction(self._db):
                    yield
            except BaseException:
                self._pending, self._evicted, self._coalesced = saved
                raise

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

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA optimize")
            self._db.close()


def _bytes(payload: bytes | str) -> bytes:
    if isinstance(payload, str):
        return payload.encode()
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    raise TypeError(f"payload must be bytes or str, not {type(payload).__name__}")


def _create(db: sqlite3.Connection) -> None:
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
