"""Log records from child processes to the parent's handlers, one pipe per child.

A pipe per child rather than one shared multiprocessing.Queue: a queue's
writers share a lock, and a child killed while holding it (the supervisor
SIGKILLs hung children) would silence every other process's logging. A pipe
has one writer, and a dead writer's pipe just reaches EOF.

Nothing waits on a pipe without a bound: a child's records go through a
bounded in-process queue to a sender thread, so a parent that stops reading
(its hub thread died or is slow) costs the child dropped records, never a
logging call that blocks the scheduler or a reader. The hub thread beats
(`beat`) on every turn and can be started again; the daemon supervises it.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import queue
import threading
import time
from multiprocessing.connection import Connection, wait

from vistream.ops.process import SPAWN


class PipeHandler(logging.handlers.QueueHandler):
    """Sends prepared records (message formatted, no args or live traceback) down a pipe.

    The caller only queues the record (dropped and counted when `capacity` are waiting);
    a sender thread does the blocking write.
    """

    def __init__(self, conn: Connection, capacity: int = 1000) -> None:
        self.records: queue.Queue[logging.LogRecord | None] = queue.Queue(capacity)
        super().__init__(self.records)
        self.conn = conn
        self.dropped = 0
        self._sender = threading.Thread(target=self._send, name="log-pipe", daemon=True)
        self._sender.start()

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.records.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _send(self) -> None:
        while True:
            record = self.records.get()
            if record is None:
                return
            try:
                self.conn.send(record)
            except (OSError, ValueError):  # the parent is gone: nothing left to tell
                return

    def close(self, timeout: float = 1.0) -> None:
        """Send what is queued, for at most `timeout` s (a process about to exit calls this)."""
        with contextlib.suppress(queue.Full):
            self.records.put(None, timeout=timeout)
        self._sender.join(timeout)
        super().close()


class LogHub:
    """Receives records from every child and hands them to this process's loggers."""

    def __init__(self) -> None:
        self._conns: list[Connection] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = SPAWN.Pipe(duplex=False)
        self._stopping = False
        self.beat = time.monotonic()  # the thread's last turn (it turns at least once a second)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread, or a new one after it died (the daemon's supervisor does that)."""
        self.beat = time.monotonic()
        self._thread = threading.Thread(target=self._main, name="log-hub", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def channel(self) -> Connection:
        """A new write end for one child; the read end is watched from now on."""
        r, w = SPAWN.Pipe(duplex=False)
        with self._lock:
            self._conns.append(r)
        self._wake()
        return w

    def stop(self, timeout: float = 1.0) -> None:
        self._stopping = True
        self._wake()
        if self._thread:
            self._thread.join(timeout)

    def _wake(self) -> None:
        # One pending wake-up is enough; more could fill the pipe (and block) while the thread is down.
        if not self._wake_r.poll():
            self._wake_w.send(None)

    def _main(self) -> None:
        try:
            self._run()
        except Exception:  # the supervisor sees the thread dead and starts another
            logging.getLogger(__name__).exception("the log hub crashed")

    def _run(self) -> None:
        while not self._stopping:
            self.beat = time.monotonic()
            with self._lock:
                conns = [*self._conns, self._wake_r]
            ready: list[Connection] = wait(conns, timeout=1.0)  # type: ignore[assignment]
            for conn in ready:
                try:
                    record = conn.recv()
                except (EOFError, OSError):
                    with self._lock:
                        self._conns.remove(conn)
                    conn.close()
                    continue
                if conn is not self._wake_r and isinstance(record, logging.LogRecord):
                    logging.getLogger(record.name).handle(record)
