"""The outbox's one writer in the main process: what frames caused, committed off the results thread.

The results thread must never wait for a disk: every outbox commit fsyncs (`synchronous=FULL`) and
the delivery thread's acknowledgements fsync under the same lock, so a commit made on the results
thread stalled it, the scheduler's results queue overflowed, and events ended early. Instead the
results thread hands each frame's messages and state here (`put`, a list append under a lock) and
this thread commits everything queued since its last turn in one transaction (group commit: one
fsync for many frames).

A write that fails (disk full, read-only, locked: `sqlite3.Error`) is kept and tried again, with
what came after it, in the same order, until it lands: a lost `start` would leave updates and an
`end` of an event nobody saw, a lost `end` a rule `active` forever. What is kept is bounded
(`max_messages`); beyond it, what matters least goes first, and each drop is counted by reason:

1. `superseded`: an older unwritten value of a retained state topic (active flag, counter,
   snapshot) whose newer value is queued too; the subscriber sees the newer one either way.
2. `update`: an event update; the event's `end` carries everything it said.
3. `event`: an event whose `start` was not written yet, whole: its start, updates and end,
   also those that come later. A subscriber never gets an update or end of an event whose start
   it was not sent. Ends of events whose start was written are never dropped (nor are counters'
   and flags' newest values): there are at most as many as events and topics.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from vistream.ops.stats import Buckets
from vistream.outputs.outbox import LATEST_STATE_KINDS, Message, Outbox

log = logging.getLogger(__name__)

MAX_MESSAGES = 10_000  # unwritten messages kept in memory while the outbox cannot be written
RETRY_S = (0.5, 5.0)  # first and longest wait before writing again after a failure
# Write latencies (seconds), from 50 µs: a hand-over is microseconds, a commit a few ms (an fsync).
WRITE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

DROP_REASONS = ("superseded", "update", "event")


@dataclass(frozen=True, slots=True)
class Entry:
    """One message to write; `event` is (event id, type) for an event message or an event's
    snapshot (type `snapshot`), else None."""

    message: Message
    event: tuple[str, str] | None = None


class OutboxWriter:
    """Commits what `put` hands it to `outbox`, in order, retrying until it lands (see the module doc).

    `open_key(event_id)` is the state key of an open event: dropping an unwritten event drops that
    key too, so a restart does not end an event nobody was told of.
    """

    def __init__(
        self,
        outbox: Outbox,
        open_key: Callable[[str], str],
        max_messages: int = MAX_MESSAGES,
        retry_s: tuple[float, float] = RETRY_S,
    ) -> None:
        self.outbox = outbox
        self._open_key = open_key
        self.max_messages = max_messages
        self._retry_s = retry_s
        self._cond = threading.Condition()
        self._entries: list[Entry] = []  # unwritten, in order
        self._state: dict[str, str | None] = {}  # unwritten state keys, newest value
        self._writing = 0  # entries taken by the thread and not committed yet
        self._gone: set[str] = set()  # events dropped unwritten: their later messages go too
        self.dropped: Counter[str] = Counter()  # reason -> messages dropped unwritten
        self.events_dropped = 0
        self.failures = 0  # failed commits (each retried)
        self.commits = 0
        self.commit_s = Buckets(WRITE_BUCKETS)  # one transaction, on this thread
        self.failing: str | None = None  # why the last commit failed, until one succeeds
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- the results thread's side -----------------------------------------------------------------

    def put(self, entries: Iterable[Entry], state: dict[str, str | None] | None = None) -> None:
        """Queue one frame's messages and state (None deletes a key); never blocks on the disk."""
        with self._cond:
            ended: set[str] = set()
            for entry in entries:
                if entry.event is not None and entry.event[0] in self._gone:
                    self.dropped["event"] += 1
                    if entry.event[1] == "end":
                        ended.add(entry.event[0])
                    continue
                self._entries.append(entry)
            gone = {self._open_key(i) for i in self._gone}
            self._gone -= ended  # nothing of them comes after their end
            for key, value in (state or {}).items():
                if key not in gone:
                    self._state[key] = value
            if len(self._entries) + self._writing > self.max_messages:
                self._shed()
            self._cond.notify()

    def get_state(self, key: str) -> str | None:
        """A state key as it will be once everything queued is written (queued values first)."""
        with self._cond:
            if key in self._state:
                return self._state[key]
        return self.outbox.get_state(key)

    def states(self, prefix: str) -> dict[str, str]:
        """Every state key under `prefix` as it will be once everything queued is written."""
        with self._cond:
            queued = {k: v for k, v in self._state.items() if k.startswith(prefix)}
        stored = self.outbox.states(prefix)
        merged = {**stored, **queued}
        return {k: v for k, v in sorted(merged.items()) if v is not None}

    @property
    def unwritten(self) -> int:
        """Messages queued and not committed yet (for `vistream_alert_messages_unwritten`)."""
        with self._cond:
            return len(self._entries) + self._writing

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="outbox-writer", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is committed; False if it was not within `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._entries or self._state or self._writing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self, timeout: float = 1.0) -> None:
        """Write what is queued (one more try, within `timeout`), then stop; what is left is logged."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        left = self.unwritten
        if left:
            log.error("outbox: %d message(s) could not be written before stopping (%s)", left, self.failing)

    # -- the writer thread -------------------------------------------------------------------------

    def _main(self) -> None:
        delay = self._retry_s[0]
        while True:
            with self._cond:
                while not (self._entries or self._state) and not self._stopping:
                    self._cond.wait()
                if not (self._entries or self._state):
                    return
                entries, state = self._entries, self._state
                self._entries, self._state, self._writing = [], {}, len(entries)
            ok = self._commit(entries, state)
            with self._cond:
                self._writing = 0
                if not ok:  # back in front of what came meanwhile, newer state values winning
                    self._entries = entries + self._entries
                    self._state = state | self._state
                    if len(self._entries) > self.max_messages:
                        self._shed()
                self._cond.notify_all()
                if ok:
                    delay = self._retry_s[0]
                    continue
                if self._stopping:
                    return
                self._cond.wait(delay)  # a new put does not hurry a retry
            delay = min(delay * 2, self._retry_s[1])

    def _commit(self, entries: list[Entry], state: dict[str, str | None]) -> bool:
        t0 = time.perf_counter()
        try:
            self.outbox.add_many([e.message for e in entries], state=state)
        except sqlite3.Error as exc:  # disk full, read-only, locked, unreadable: all kept for a retry
            self.failures += 1
            if self.failing is None:
                log.error("outbox: cannot write %d message(s): %s; kept in memory and tried again",
                          len(entries), exc)  # fmt: skip
            self.failing = str(exc)
            return False
        except Exception as exc:  # a defect here must not lose the messages either
            self.failures += 1
            log.exception("outbox: writing %d message(s) failed; kept and tried again", len(entries))
            self.failing = repr(exc)
            return False
        self.commit_s.observe(time.perf_counter() - t0)
        self.commits += 1
        if self.failing is not None:
            log.warning("outbox: writing again after a failure (%s); %d message(s) written", self.failing,
                        len(entries))  # fmt: skip
            self.failing = None
        return True

    # -- the bound (under the lock) ----------------------------------------------------------------

    def _shed(self) -> None:
        """Drop what matters least until a tenth of the bound is free again (so that a long outage
        sheds, and logs, once per that many messages), or nothing more may go."""
        before = len(self._entries)
        # What the thread is trying to write counts too (it comes back if that fails).
        target = self.max_messages - max(1, self.max_messages // 10) - self._writing
        self._supersede()
        if len(self._entries) > target:
            self._keep(lambda e: e.event is None or e.event[1] != "update", "update")
        if len(self._entries) > target:
            self._drop_events(len(self._entries) - target)
        if len(self._entries) < before:
            log.warning("outbox: %d unwritten message(s) over the bound of %d: dropped %d (so far %s)",
                        before, self.max_messages, before - len(self._entries),
                        ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())))  # fmt: skip

    def _supersede(self) -> None:
        """Keep only the newest unwritten value of each retained state topic."""
        newest: dict[str, int] = {}
        for i, e in enumerate(self._entries):
            if e.message.retain and e.message.kind in LATEST_STATE_KINDS:
                newest[e.message.topic] = i
        self._keep_indexed(
            lambda i, e: (
                not (e.message.retain and e.message.kind in LATEST_STATE_KINDS)
                or newest[e.message.topic] == i
            ),
            "superseded",
        )

    def _drop_events(self, excess: int) -> None:
        """Drop whole unwritten events, oldest first, until `excess` messages went."""
        per_event: Counter[str] = Counter(e.event[0] for e in self._entries if e.event is not None)
        doomed: set[str] = set()
        for e in self._entries:
            if excess <= 0:
                break
            if e.event is None or e.event[1] != "start" or e.event[0] in doomed:
                continue
            doomed.add(e.event[0])
            excess -= per_event[e.event[0]]
        if not doomed:
            return
        ended = {e.event[0] for e in self._entries if e.event is not None and e.event[1] == "end"}
        self._keep(lambda e: e.event is None or e.event[0] not in doomed, "event")
        self._gone |= doomed - ended  # their update and end, when they come, go too
        for event_id in doomed:
            self._state.pop(self._open_key(event_id), None)
        self.events_dropped += len(doomed)

    def _keep(self, keep: Callable[[Entry], bool], reason: str) -> None:
        self._keep_indexed(lambda _, e: keep(e), reason)

    def _keep_indexed(self, keep: Callable[[int, Entry], bool], reason: str) -> None:
        kept = [e for i, e in enumerate(self._entries) if keep(i, e)]
        self.dropped[reason] += len(self._entries) - len(kept)
        self._entries = kept
