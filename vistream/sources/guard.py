"""Hostile streams: what a reader refuses to decode, and the memory limit it runs under.

A camera (or whoever sits between it and us) decides how large a frame is. A 16K stream makes the
decoder allocate hundreds of megabytes a frame and gigabytes with its reference frames; on a box
that runs out, the kernel's OOM killer may pick the scheduler or the main process rather than the
reader. So a reader

- refuses a stream whose codec parameters say its frames are over the camera's `max_pixels`
  before it decodes one (FFmpeg's own `max_pixels` option makes its decoders refuse such frames
  while the stream is probed, too), and a stream whose frames grow past it later;
- runs under a memory limit (RLIMIT_DATA, set in its own process at start), so whatever slips past
  the checks fails an allocation in the reader (a MemoryError, an FFmpeg ENOMEM) instead of
  taking the machine's memory.

Either ends the session: counted in the ring header (`refused_*`), logged once per run of
refusals, retried with the reconnect backoff, the camera's state `refused` meanwhile.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

MIB = 1 << 20


class StreamRefused(Exception):
    """The reader will not decode this stream; `reason` labels the refusal (`too_large`, `memory`)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_size(width: int, height: int, max_pixels: int) -> None:
    """Raise StreamRefused when a width x height frame is over `max_pixels`."""
    if width * height > max_pixels:
        raise StreamRefused(
            "too_large",
            f"frames of {width}x{height} ({width * height} pixels) are over max_pixels ({max_pixels})",
        )


def limit_memory(limit_mb: int | None) -> None:
    """Cap this process's heap and private mappings (RLIMIT_DATA) at `limit_mb` MiB; None: no cap.

    RLIMIT_DATA, not RLIMIT_AS: the address space of a process with threads is mostly reservations
    (glibc gives each thread's malloc arena 64 MiB of address space, FFmpeg's and numpy's thread pools
    add theirs) that never take memory, and the ring is a shared mapping the reader did not allocate.
    RLIMIT_DATA counts the writable private memory a decoder's frames live in.
    """
    if limit_mb is None:
        return
    want = limit_mb * MIB
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY and hard < want:
        want = hard  # an unprivileged process cannot raise its hard limit; a lower one stands
    resource.setrlimit(resource.RLIMIT_DATA, (want, hard))


class RefusalLog:
    """One warning per run of refusals of the same kind, not one per reconnect: a camera refused
    for its size is refused again at every attempt until someone changes it."""

    def __init__(self, camera: str) -> None:
        self.camera = camera
        self.last: str | None = None  # the reason of the refusal in progress; None: none

    def refused(self, exc: StreamRefused) -> None:
        level = logging.DEBUG if exc.reason == self.last else logging.WARNING
        self.last = exc.reason
        log.log(level, "camera %s: stream refused (%s): %s; retrying with the reconnect backoff",
                self.camera, exc.reason, exc)  # fmt: skip

    def streamed(self) -> None:
        """The camera delivered frames: its next refusal is news again."""
        self.last = None
