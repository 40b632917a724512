"""The ring's lifetime rule in the main process: unmapped only once every reader has let go."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import numpy as np

from vistream.ring.lifetime import SharedRing
from vistream.ring.shm import FrameRing, RingLayout

LAYOUT = RingLayout(2, 32, 32, plane_width=64, plane_height=48)


def make() -> SharedRing:
    return SharedRing(FrameRing.create(f"vt-life-{uuid.uuid4().hex[:8]}", LAYOUT))


def test_a_ring_retired_mid_copy_is_unmapped_when_the_copy_ends() -> None:
    """1. A thread takes the ring and is in the middle of a copy (it holds a view of a plane).
    2. The main thread retires the ring: the segment's name leaves /dev/shm at once, the mapping
       stays (unmapping it now would make the copy read freed memory: SIGSEGV).
    3. The copy completes with the plane's bytes; when the thread lets go the ring is unmapped.
    4. Retired, the ring is not handed out again."""
    shared = make()
    path = Path("/dev/shm") / shared.name
    shared.owned.planes[0][:] = 7
    inside, resume = threading.Event(), threading.Event()
    copied: list[np.ndarray] = []

    def reader() -> None:
        with shared.use() as ring:
            assert ring is not None
            view = ring.planes[0]
            inside.set()
            resume.wait(5)
            copied.append(view.copy())

    t = threading.Thread(target=reader)
    t.start()
    assert inside.wait(5)
    shared.retire()
    assert not path.exists() and not shared.closed and shared.users == 1
    resume.set()
    t.join(5)
    assert copied and int(copied[0].min()) == int(copied[0].max()) == 7
    assert shared.closed and shared.users == 0
    with shared.use() as ring:
        assert ring is None


def test_a_ring_nobody_reads_is_unmapped_when_retired() -> None:
    shared = make()
    with shared.use() as ring:
        assert ring is not None and ring.head == 0
    assert shared.users == 0
    shared.retire()
    assert shared.closed and not (Path("/dev/shm") / shared.name).exists()
    shared.retire()  # twice: nothing more to do
