"""The shared-memory ring protocol: one writer, one consumer, no locks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from vistream.ring.naming import remove_leftovers, segment_name
from vistream.ring.shm import FrameRing, RingConsumer, RingLayout

LAYOUT = RingLayout(n_slots=3, height=8, width=12)


@pytest.fixture
def ring() -> Iterator[FrameRing]:
    r = FrameRing.create(f"vistream-test-{uuid.uuid4().hex[:8]}", LAYOUT)
    yield r
    r.close()
    r.unlink()


def write(ring: FrameRing, value: int, mono: float = 0.0) -> int:
    img = ring.begin()
    img[...] = value % 256
    return ring.commit(
        captured_at=1000.0 + value, captured_mono=mono or float(value), width=1920, height=1080,
        scale=0.5, pad_x=0.0, pad_y=4.0,
    )  # fmt: skip


def test_empty_ring_has_nothing(ring: FrameRing) -> None:
    """A consumer of a ring nobody wrote to yet gets nothing, not a zero frame."""
    into = np.empty((8, 12, 3), np.uint8)
    assert ring.peek() is None
    assert RingConsumer(ring).take(into) is None


def test_consumer_takes_newest_and_counts_overwritten(ring: FrameRing) -> None:
    """1. The writer commits five frames into a three-slot ring (wrapping around).
    2. The consumer takes one: it gets the newest (5) with its metadata.
    3. The four it never took are counted as overwritten; nothing new is pending after."""
    for v in range(1, 6):
        assert write(ring, v) == v
    consumer = RingConsumer(ring)
    consumer.last_seq = 0  # as if attached before the writer started
    into = np.empty((8, 12, 3), np.uint8)
    meta = consumer.take(into)
    assert meta is not None
    assert (meta.seq, meta.captured_at, meta.width, meta.height, meta.pad_y) == (5, 1005.0, 1920, 1080, 4.0)
    assert (into == 5).all()
    assert consumer.overwritten == 4
    assert consumer.pending() is None
    assert consumer.take(into) is None


def test_wraparound_many_times(ring: FrameRing) -> None:
    """Slot reuse over many laps keeps every taken frame consistent and every frame accounted for."""
    consumer = RingConsumer(ring)
    into = np.empty((8, 12, 3), np.uint8)
    taken = 0
    for v in range(1, 101):
        write(ring, v)
        if v % 7 == 0:
            meta = consumer.take(into)
            assert meta is not None and meta.seq == v and (into == v % 256).all()
            taken += 1
    assert taken + consumer.overwritten == 98  # frames 99 and 100 are still pending
    assert consumer.pending() == (100, 100.0)


class TornRing(FrameRing):
    """A ring whose writer laps the consumer in the middle of the consumer's copy."""

    laps = 1

    def _copy_image(self, i: int, into: np.ndarray) -> None:
        super()._copy_image(i, into)
        if self.laps:
            self.laps -= 1
            for _ in range(self.layout.n_slots):  # the writer goes round once, over the slot being copied
                write(self, self.head + 1)


def test_torn_read_is_detected_and_retried() -> None:
    """1. The consumer starts copying the newest frame.
    2. Meanwhile the writer wraps around and overwrites that very slot.
    3. The version check notices, the copy is retried on the new newest frame,
       and the result is consistent (pixels and metadata of the same frame)."""
    ring = TornRing.create(f"vistream-test-{uuid.uuid4().hex[:8]}", LAYOUT)
    try:
        write(ring, 1)
        consumer = RingConsumer(ring)
        consumer.last_seq = 0
        into = np.empty((8, 12, 3), np.uint8)
        meta = consumer.take(into)
        assert consumer.torn == 1
        assert meta is not None and meta.seq == 4
        assert (into == 4).all()
        assert consumer.overwritten == 3
    finally:
        ring.close()
        ring.unlink()


def test_writer_mid_write_is_invisible(ring: FrameRing) -> None:
    """A frame being written (begin without commit, e.g. a reader that died) is never read."""
    write(ring, 1)
    ring.begin()[...] = 99  # the next slot, left half-written
    consumer = RingConsumer(ring)
    consumer.last_seq = 0
    into = np.empty((8, 12, 3), np.uint8)
    meta = consumer.take(into)
    assert meta is not None and meta.seq == 1 and (into == 1).all()
    # A restarted writer continues after the last complete frame.
    assert write(ring, 2) == 2


def test_attach_sees_the_same_memory(ring: FrameRing) -> None:
    """A second mapping (as in another process) reads the layout and the frames written by the first."""
    other = FrameRing.attach(ring.name)
    try:
        assert other.layout == LAYOUT
        write(ring, 7)
        into = np.empty((8, 12, 3), np.uint8)
        meta, torn = other.read(into)
        assert meta is not None and meta.seq == 1 and torn == 0 and (into == 7).all()
    finally:
        other.close()


def test_remove_leftovers_only_removes_dead_owners(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """1. Segments of this instance owned by a dead pid are unlinked at start-up.
    2. Segments of a live owner (here: ourselves, once created) and of other instances are left alone."""
    instance = f"t{uuid.uuid4().hex[:6]}"
    dead_pid = 2**22 + 12345  # above the default pid_max: never a live process
    dead = FrameRing.create(segment_name(instance, "cam", pid=dead_pid), LAYOUT)
    mine = FrameRing.create(segment_name(instance, "cam"), LAYOUT)
    other = FrameRing.create(segment_name(instance + "x", "cam", pid=dead_pid), LAYOUT)
    try:
        assert remove_leftovers(instance, own={mine.name}) == [dead.name]
        with pytest.raises(FileNotFoundError):
            FrameRing.attach(dead.name)
    finally:
        for r in (dead, mine, other):
            r.close()
        for r in (mine, other):
            r.unlink()
