"""Child processes: one base with one setup hook, started with `spawn`.

`spawn` (never `fork`): the parent may hold threads (MQTT, HTTP, logging)
whose locks a forked child would inherit mid-flight, and the scheduler child
holds torch, which must not be forked. Every child runs `_bootstrap`, which
sets the process title, routes logging to the parent's single QueueListener,
enables faulthandler, ignores SIGINT (the parent decides when children stop),
records SIGTERM in a `StopFlag` and drops the systemd notify socket (so only
the main process talks to systemd) and the secrets' environment variables.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import faulthandler
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vistream.ops.logs import LogHub

log = logging.getLogger(__name__)

SPAWN = mp.get_context("spawn")
PR_SET_PDEATHSIG = 1
# A child that cannot be made for want of a resource is tried again, with this backoff (first, most).
SPAWN_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN})
SPAWN_BACKOFF_S = (1.0, 30.0)
# Not for children: only the main process talks to systemd, and the readers parse untrusted input
# (a camera's stream), so they hold no secret they do not need. A reader's own camera password
# comes in its arguments (vistream.sources.reader.ReaderSpec).
SECRET_ENV = ("VISTREAM_MQTT_PASSWORD", "CREDENTIALS_DIRECTORY")
CHILD_ENV_REMOVED = ("NOTIFY_SOCKET", *SECRET_ENV)
_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _secrets_out_of_environ() -> Iterator[None]:
    """Unset SECRET_ENV while a child is spawned, so its exec'd environment never holds them
    (unsetting them in the child is too late for /proc/PID/environ). Only the main thread reads
    these two variables (mqtt_password, at start and reload), and it is the one spawning here."""
    with _ENV_LOCK:
        saved = {name: os.environ.pop(name) for name in SECRET_ENV if name in os.environ}
        try:
            yield
        finally:
            os.environ.update(saved)


class StopFlag:
    """Set from a signal handler, polled by the loop: handlers only record the signal."""

    def __init__(self) -> None:
        self._set = False

    def set(self, *_: object) -> None:
        self._set = True

    def __bool__(self) -> bool:
        return self._set

    def sleep(self, seconds: float, step: float = 0.1) -> bool:
        """Sleep up to `seconds`; return early (True) once stop is requested."""
        deadline = time.monotonic() + seconds
        while not self._set:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(step, left))
        return True


@dataclass(frozen=True)
class ProcessSetup:
    """What every child needs before its own work starts."""

    title: str
    log_conn: Any  # write end of this child's log pipe (vistream.ops.logs)
    log_level: int = logging.INFO
    nice: int = 0
    parent_pid: int = 0
    log_context: dict[str, Any] | None = None  # set on every record (a reader's camera)


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this process when the daemon dies, however it dies (Linux only).

    Without it a SIGKILLed daemon would leave its readers decoding for nobody.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _bootstrap(setup: ProcessSetup, target: Callable[..., int | None], args: tuple[Any, ...]) -> None:
    _die_with_parent(setup.parent_pid)
    try:
        import setproctitle

        setproctitle.setproctitle(f"vistream: {setup.title}")
    except ImportError:  # optional nicety; the name in `ps` is all it buys
        pass
    faulthandler.enable()
    for name in CHILD_ENV_REMOVED:
        os.environ.pop(name, None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = StopFlag()
    signal.signal(signal.SIGTERM, stop.set)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from vistream.ops.logs import PipeHandler

    root = logging.getLogger()
    handler = PipeHandler(setup.log_conn, context=setup.log_context)
    root.handlers[:] = [handler]
    root.setLevel(setup.log_level)
    if setup.nice:
        os.nice(setup.nice)
    try:
        code = target(*args, stop=stop)
    except Exception:
        logging.getLogger(target.__module__).exception("%s crashed", setup.title)
        code = 1
    handler.close(timeout=1.0)  # its last words (a crash's traceback) reach the parent, within a bound
    sys.exit(code or 0)


class Child:
    """A supervised child process: start, ask to stop, kill when it will not."""

    def __init__(
        self,
        title: str,
        target: Callable[..., int | None],
        args: tuple[Any, ...],
        logs: LogHub,
        log_level: int = logging.INFO,
        nice: int = 0,
        log_context: dict[str, Any] | None = None,
    ) -> None:
        self.title = title
        self._log_context = log_context
        self._target, self._args = target, args
        self._logs, self._log_level, self._nice = logs, log_level, nice
        self._proc: Any = None
        self.started_at = 0.0
        self.spawn_failures = 0  # starts that made no process (vistream_spawn_failures_total)
        self.retry_at: float | None = None  # when the last start failed: when to try again
        self._backoff = SPAWN_BACKOFF_S[0]

    def start(self) -> bool:
        """Start the process; False when it could not be made (no descriptor, memory or process
        left: EMFILE from the log pipe, EAGAIN from fork): logged, counted (`spawn_failures`),
        and `retry_due()` says when to try again (backoff 1 s doubling to 30 s). Never raised:
        a daemon out of descriptors for a moment must not exit for it."""
        try:
            conn = self._logs.channel()  # a fresh pipe per start: a killed child takes only its own
        except OSError as exc:
            return self._spawn_failed(exc)
        setup = ProcessSetup(self.title, conn, self._log_level, self._nice, os.getpid(), self._log_context)
        self._proc = SPAWN.Process(
            target=_bootstrap, args=(setup, self._target, self._args), name=self.title, daemon=True
        )
        try:
            with _secrets_out_of_environ():
                self._proc.start()
        except OSError as exc:
            self._proc = None
            return self._spawn_failed(exc)
        finally:
            conn.close()  # the child has its own copy; ours would keep the pipe from reaching EOF
        self.started_at = time.monotonic()
        self.retry_at, self._backoff = None, SPAWN_BACKOFF_S[0]
        return True

    def _spawn_failed(self, exc: OSError) -> bool:
        if exc.errno not in SPAWN_ERRNOS:
            raise exc
        self.spawn_failures += 1
        self.retry_at = time.monotonic() + self._backoff
        log.error("%s: cannot start a process (%s): trying again in %.0fs", self.title,
                  os.strerror(exc.errno), self._backoff)  # fmt: skip
        self._backoff = min(self._backoff * 2, SPAWN_BACKOFF_S[1])
        return False

    def retry_due(self, now: float) -> bool:
        """Did the last start fail, and is it time to try again?"""
        return self.retry_at is not None and now >= self.retry_at

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return bool(self._proc and self._proc.is_alive())

    @property
    def exitcode(self) -> int | None:
        return self._proc.exitcode if self._proc else None

    def terminate(self) -> None:
        if self.alive:
            self._proc.terminate()

    def kill(self) -> None:
        if self.alive:
            self._proc.kill()

    def join(self, timeout: float) -> bool:
        """Wait at most `timeout` s; True when the process is gone."""
        if self._proc is None:
            return True
        self._proc.join(max(0.0, timeout))
        return not self._proc.is_alive()

    def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL if it is still there after `timeout` s."""
        if not self.alive:
            self.join(0)
            return
        self.terminate()
        if not self.join(timeout):
            log.warning("%s (pid %s) did not stop within %.1fs: killing it", self.title, self.pid, timeout)
            self._proc.kill()
            self.join(2.0)

    def close(self) -> None:
        if self._proc is not None and not self._proc.is_alive():
            self._proc.close()
        self._proc = None


def stop_all(children: list[Child], timeout: float, stop: StopFlag | None = None) -> None:
    """Stop children together: SIGTERM to all, one deadline, then SIGKILL to those still there.

    A `stop` set meanwhile (SIGTERM to the daemon) ends the wait at once: the caller is replacing
    these children, and a daemon told to stop must not spend its stop timeout on them.
    """
    for child in children:
        child.terminate()
    deadline = time.monotonic() + timeout
    while any(child.alive for child in children) and time.monotonic() < deadline and not stop:
        time.sleep(0.05)
    for child in children:
        if child.alive:
            log.warning("%s (pid %s) did not stop within %.1fs: killing it", child.title, child.pid,
                        time.monotonic() - deadline + timeout)  # fmt: skip
            child.kill()
    for child in children:
        child.join(2.0)
