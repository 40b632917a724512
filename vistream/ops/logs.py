"""Log records from child processes to the parent's handlers, one pipe per child.

A pipe per child rather than one shared multiprocessing.Queue: a queue's
writers share a lock, and a child killed while holding it (the supervisor
SIGKILLs hung children) would silence every other process's logging. A pipe
has one writer, and a dead writer's pipe just reaches EOF.
"""

from __future__ import annotations

import logging
import logging.handlers
import threading
from multiprocessing.connection import Connection, wait

from vistream.ops.process import SPAWN


class PipeHandler(logging.handlers.QueueHandler):
    """Sends prepared records (message formatted, no args or live traceback) down a pipe."""

    def enqueue(self, record: logging.LogRecord) -> None:
        self.queue.send(record)  # type: ignore[attr-defined]


class LogHub:
    """Receives records from every child and hands them to this process's loggers."""

    def __init__(self) -> None:
        self._conns: list[Connection] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = SPAWN.Pipe(duplex=False)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="log-hub", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def channel(self) -> Connection:
        """A new write end for one child; the read end is watched from now on."""
        r, w = SPAWN.Pipe(duplex=False)
        with self._lock:
            self._conns.append(r)
        self._wake_w.send(None)
        return w

    def stop(self, timeout: float = 1.0) -> None:
        self._stopping = True
        self._wake_w.send(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping:
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
