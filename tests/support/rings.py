"""A real shared-memory ring for unit tests, removed afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from vistream.ring.shm import FrameRing, RingLayout


@contextmanager
def temp_ring(slots: int = 4, height: int = 64, width: int = 64) -> Iterator[FrameRing]:
    """A ring in /dev/shm with a unique name (snapshot planes at their default size), unlinked after."""
    ring = FrameRing.create(f"vistream-test-{uuid.uuid4().hex[:8]}", RingLayout(slots, height, width))
    try:
        yield ring
    finally:
        ring.close()
        ring.unlink()
