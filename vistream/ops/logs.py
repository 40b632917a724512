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

Records keep their context fields (`camera`) on the way: a reader child tags
every record it makes with its camera (`PipeHandler(context=...)`), and the
parent's formatters show it, as a `camera NAME:` prefix in text and a field in
JSON (docs/operations.md, "Logs").
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import queue
import threading
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection, wait
from typing import IO, Any

from vistream.config.secrets import RedactFilter
from vistream.ops.process import SPAWN

# Fields a record may carry beyond the standard ones (`extra=`), shown by both formatters.
CONTEXT_FIELDS = ("camera", "rule", "event_id")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s [%(processName)s] %(name)s: %(message)s"
# journald stamps every line itself; a second time in the message is noise.
JOURNAL_FORMAT = "%(levelname)-7s [%(processName)s] %(name)s: %(message)s"
# sd-daemon(3) priority prefixes: journald strips them and files the line at that priority.
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
_PLAIN = logging.Formatter()
# Every record is redacted (URL credentials, secret parameters; message, traceback, stack) where it
# leaves a child (PipeHandler) and where it is written (both formatters): one filter for all.
REDACT = RedactFilter()
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def camera(name: str) -> dict[str, Any]:
    """`extra=` for a line about one camera: its name becomes the record's `camera` field."""
    return {"camera": name}


def _camera_prefix(record: logging.LogRecord) -> str:
    name = getattr(record, "camera", None)
    return f"camera {name}: " if name is not None else ""


class TextFormatter(logging.Formatter):
    """One line per record (a traceback follows it), `camera NAME:` before every camera's message.

    Messages written as "camera %s: ..." keep their prefix; others about a camera get it, so a
    grep for `camera NAME:` finds all of them. `journal`: no timestamp, and every line starts
    with its syslog priority, so `journalctl -p warning` works (and a traceback's lines are errors).
    """

    def __init__(self, journal: bool = False) -> None:
        super().__init__(JOURNAL_FORMAT if journal else TEXT_FORMAT)
        self.journal = journal

    def formatMessage(self, record: logging.LogRecord) -> str:
        prefix = _camera_prefix(record)
        if prefix and not record.message.startswith(prefix):
            record.message = prefix + record.message  # set afresh by every format() call
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        REDACT.filter(record)
        text = super().format(record)
        if not self.journal:
            return text
        level = PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return "\n".join(f"<{level}>{line}" for line in text.splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO-8601, UTC), level, logger, process, message, the context
    fields the record has (camera), and exc_info/stack_info as strings.

    The message loses a leading `camera NAME:`: the name is in its own field.
    """

    def format(self, record: logging.LogRecord) -> str:
        REDACT.filter(record)
        message = record.getMessage()
        prefix = _camera_prefix(record)
        if prefix and message.startswith(prefix):
            message = message[len(prefix) :]
        created = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        doc: dict[str, Any] = {
            "time": created.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": message,
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                doc[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # a child's traceback arrives as text (PipeHandler.prepare)
            doc["exc_info"] = record.exc_text
        if record.stack_info:
            doc["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def on_journal(stream: IO[str]) -> bool:
    """Is `stream` connected to journald? systemd sets $JOURNAL_STREAM to the device and inode of
    the stream it connected; comparing them (systemd.exec(5)) keeps a redirect to a file from
    losing its timestamps."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def make_formatter(fmt: str, stream: IO[str]) -> logging.Formatter:
    """The formatter for `--log-format` ("text" or "json") writing to `stream`."""
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter(journal=on_journal(stream))
    raise ValueError(f"unknown log format {fmt!r} (text or json)")


class PipeHandler(logging.handlers.QueueHandler):
    """Sends prepared records (message formatted, no args or live traceback) down a pipe.

    The caller only queues the record (dropped and counted when `capacity` are waiting);
    a sender thread does the blocking write. `context` (e.g. this reader's camera) is set on
    every record that does not carry its own.
    """

    def __init__(self, conn: Connection, capacity: int = 1000, context: dict[str, Any] | None = None) -> None:
        self.records: queue.Queue[logging.LogRecord | None] = queue.Queue(capacity)
        super().__init__(self.records)
        self.conn = conn
        self.addFilter(REDACT)  # before prepare(): the traceback is formatted and redacted here
        self.context = dict(context or {})
        self.dropped = 0
        self._sender = threading.Thread(target=self._send, name="log-pipe", daemon=True)
        self._sender.start()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """A copy that pickles: the message with its args applied, the traceback as text (the
        parent's formatter places it: appended in text, its own field in JSON), the context, and
        only those `extra=` fields that are plain values. A field that cannot be pickled would
        otherwise end the sender thread, and with it every later record of this process."""
        out = logging.makeLogRecord({k: v for k, v in record.__dict__.items() if k in _STANDARD})
        out.msg, out.args = record.getMessage(), None
        if record.exc_info:
            out.exc_text = record.exc_text or _PLAIN.formatException(record.exc_info)
        out.exc_info = None
        for key, value in {**self.context, **record.__dict__}.items():
            if key not in _STANDARD and isinstance(value, str | int | float | bool):
                setattr(out, key, value)
        return out

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
