"""A ring's lifetime in the main process: unmapped only once every thread reading it has let go.

Threads of the main process read the rings: HTTP workers copy a snapshot plane for the status
page, a /metrics scrape copies headers, the result pump copies snapshot planes and releases holds.
The main thread removes a camera on reload. Reading a numpy view of a segment after
`SharedMemory.close()` is not an exception but SIGSEGV (numpy keeps no buffer export that would
make `close()` refuse), so the rule is:

* a reader from another thread takes the ring with `use()` and lets go at the end of the block,
  holding it no longer than a copy;
* `retire()` (the main thread, when a camera goes) unlinks the segment at once, so its name is
  free and nothing is left in /dev/shm, and unmaps it when the last reader lets go: right away
  when nobody reads it, else by that reader at the end of its block.

Retired, `use()` gives None: the camera is being removed, there is nothing to read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress

from vistream.ring.shm import FrameRing

# What readers are handed: the ring under a lease for a `with` block, None when there is none.
RingAccess = Callable[[str], AbstractContextManager[FrameRing | None]]


class SharedRing:
    """One camera's ring as the main process's threads share it (see the module's rule)."""

    def __init__(self, ring: FrameRing) -> None:
        self._ring = ring
        self.name = ring.name  # the segment's name: a plain string, safe to read at any time
        self._lock = threading.Lock()
        self._users = 0
        self._retired = False
        self._closed = False

    @contextmanager
    def use(self) -> Iterator[FrameRing | None]:
        """The ring for the block (no longer than a copy); None once it is retired."""
        with self._lock:
            ring = None if self._retired else self._ring
            if ring is not None:
                self._users += 1
        try:
            yield ring
        finally:
            if ring is not None:
                self._let_go()

    @property
    def owned(self) -> FrameRing:
        """The ring without a lease: for the main thread only, the one thread that retires it,
        and only while the ring is in the daemon's mapping."""
        return self._ring

    @property
    def users(self) -> int:
        return self._users

    @property
    def closed(self) -> bool:
        return self._closed

    def retire(self) -> None:
        """Unlink now; unmap once nobody reads it (now, or when the last reader lets go)."""
        with self._lock:
            if self._retired:
                return
            self._retired = True
            idle = self._users == 0
        with suppress(FileNotFoundError):  # removed already (a leftover sweep, a test)
            self._ring.unlink()
        if idle:
            self._close()

    def _let_go(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._retired and self._users == 0
        if last:
            self._close()

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._ring.close()


def fixed(rings: Mapping[str, FrameRing]) -> RingAccess:
    """Rings that live as long as the caller (tests, benchmarks): access without leases."""
    return lambda name: nullcontext(rings.get(name))
