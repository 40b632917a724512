"""The shared-memory ring protocol: one writer, one consumer, no locks; holds and snapshot planes."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from vistream.ring.naming import remove_leftovers, segment_name
from vistream.ring.shm import HOLD_TTL_S, FrameRing, RingConsumer, RingLayout

LAYOUT = RingLayout(n_slots=3, height=8, width=12, plane_width=16, plane_height=8)


@pytest.fixture
def ring() -> Iterator[FrameRing]:
    r = FrameRing.create(f"vistream-test-{uuid.uuid4().hex[:8]}", LAYOUT)
    yield r
    r.close()
    r.unlink()


def write(ring: FrameRing, value: int, mono: float = 0.0, now: float | None = None) -> int:
    """Frame `value`: all its model-input and plane bytes are `value % 256`, captured at `mono` (default
    `value`), written at `now` (default: when captured)."""
    mono = mono or float(value)
    img = ring.begin(now=mono if now is None else now)
    img[...] = value % 256
    ring.plane_buffer(16, 8)[...] = value % 256
    return ring.commit(
        captured_at=1000.0 + value, captured_mono=mono, width=1920, height=1080,
        scale=0.5, pad_x=0.0, pad_y=4.0, plane_width=16, plane_height=8,
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


# -- holds and snapshot planes -------------------------------------------------
# Frames here come at 30 fps (frame v captured at v/30 s), so holds do not age out unless a test says so.


def take_held(ring: FrameRing, consumer: RingConsumer | None = None) -> int:
    """The scheduler takes the newest frame and holds it; returns its seq."""
    consumer = consumer or RingConsumer(ring)
    consumer.last_seq = min(consumer.last_seq, ring.head - 1)
    meta = consumer.take(np.empty((8, 12, 3), np.uint8), hold=True)
    assert meta is not None
    return meta.seq


def plane_of(ring: FrameRing, seq: int) -> int | None:
    """The value frame `seq`'s plane was written with, or None when the ring lost the frame."""
    got = ring.read_plane(seq)
    if got is None:
        return None
    plane, meta = got
    assert plane.shape == (12, 16) and (meta.seq, meta.plane_width, meta.plane_height) == (seq, 16, 8)
    assert (plane == plane[0, 0]).all(), "plane mixes two frames"
    return int(plane[0, 0])


def test_held_frame_survives_many_newer_writes(ring: FrameRing) -> None:
    """1. The scheduler takes frame 1 and holds it.
    2. The writer commits 100 newer frames into the 3-slot ring (the camera at 30 fps, the result late).
    3. The main process still reads frame 1's plane, and nothing was overwritten for want of a slot;
       the scheduler goes on taking the newest frames."""
    write(ring, 1, mono=1 / 30)
    consumer = RingConsumer(ring)
    consumer.last_seq = 0
    assert take_held(ring, consumer) == 1
    for v in range(2, 102):
        write(ring, v, mono=v / 30)
    assert plane_of(ring, 1) == 1
    assert int(ring.header["holds_broken"]) == 0 and int(ring.header["snapshots_lost"]) == 0
    into = np.empty((8, 12, 3), np.uint8)
    meta = consumer.take(into)
    assert meta is not None and meta.seq == 101 and (into == 101).all()


def test_writer_takes_the_oldest_slot_that_is_neither_newest_nor_held() -> None:
    """1. Frames 1 and 2 are written into a 4-slot ring; the scheduler holds 2; frames 3 and 4 follow.
    2. Frame 5 replaces frame 1 (the oldest), frame 6 replaces 3 (2 is held), 7 replaces 4, 8 replaces 5:
       the held frame and the newest one are never chosen."""
    ring = FrameRing.create(f"vistream-test-{uuid.uuid4().hex[:8]}", RingLayout(4, 8, 12, 3, 16, 8))
    try:
        write(ring, 1, mono=1 / 30)
        write(ring, 2, mono=2 / 30)
        take_held(ring)
        write(ring, 3, mono=3 / 30)
        write(ring, 4, mono=4 / 30)
        slot_of = {seq: ring._find(seq) for seq in (1, 2, 3, 4)}
        for new, replaced in ((5, 1), (6, 3), (7, 4), (8, 5)):
            before = ring._find(replaced)
            write(ring, new, mono=new / 30)
            assert ring._find(new) == before and ring._find(replaced) is None
        assert ring._find(2) == slot_of[2] and plane_of(ring, 2) == 2
    finally:
        ring.close()
        ring.unlink()


@pytest.mark.parametrize(
    ("age", "survives"),
    [
        (HOLD_TTL_S - 0.5, True),  # a result late by seconds: still held
        (HOLD_TTL_S + 0.5, False),  # its holder is gone or forgot it: the writer takes the slot back
    ],
)
def test_stale_hold_is_ignored(ring: FrameRing, age: float, survives: bool) -> None:
    """1. Frames 1-3 fill the 3-slot ring; the scheduler holds 3 (captured at 3/30 s); frames 4 and 5 follow.
    2. Frame 6 arrives when frame 3 is `age` seconds old.
    3. Within HOLD_TTL_S the hold keeps frame 3 (frame 4 is replaced); past it the hold is ignored,
       frame 3 (the oldest) is replaced and the expiry is counted."""
    for v in (1, 2, 3):
        write(ring, v, mono=v / 30)
    take_held(ring)
    write(ring, 4, mono=4 / 30)
    write(ring, 5, mono=5 / 30)
    write(ring, 6, mono=6 / 30, now=3 / 30 + age)
    assert (plane_of(ring, 3) == 3) is survives
    assert (plane_of(ring, 4) == 4) is not survives
    assert int(ring.header["holds_expired"]) == (0 if survives else 1)
    assert int(ring.header["holds_broken"]) == 0


def test_all_held_overwrites_the_oldest_held_frame(ring: FrameRing) -> None:
    """1. The scheduler holds frames 1 and 2; frame 3 is the newest: no slot of the 3 is free.
    2. Frame 4 must go somewhere: it replaces the oldest held frame (1), counted as a broken hold.
    3. The main process asking for frame 1 gets None (counted as a lost snapshot), never frame 4;
       frame 2 is still there."""
    write(ring, 1, mono=1 / 30)
    consumer = RingConsumer(ring)
    consumer.last_seq = 0
    take_held(ring, consumer)
    write(ring, 2, mono=2 / 30)
    take_held(ring, consumer)
    write(ring, 3, mono=3 / 30)
    write(ring, 4, mono=4 / 30)
    assert int(ring.header["holds_broken"]) == 1
    assert plane_of(ring, 1) is None
    assert int(ring.header["snapshots_lost"]) == 1
    assert plane_of(ring, 2) == 2


@pytest.mark.parametrize("how", ["release", "release_all", "unhold"])
def test_released_frame_is_reused(ring: FrameRing, how: str) -> None:
    """1. The scheduler holds frame 1.
    2. The main process releases it (its result is handled; or all holds, when the scheduler was
       replaced), or the scheduler gives the hold up (its result could not be handed off).
    3. The writer reuses the slot like any other: after 3 more frames, frame 1 is gone."""
    write(ring, 1, mono=1 / 30)
    take_held(ring)
    if how == "unhold":
        ring.unhold(1)
    else:
        attached = FrameRing.attach(ring.name)  # the main process has its own mapping
        try:
            attached.release(1) if how == "release" else attached.release_all()
        finally:
            attached.close()
    for v in (2, 3, 4):
        write(ring, v, mono=v / 30)
    assert plane_of(ring, 1) is None
    assert int(ring.header["holds_broken"]) == 0


def test_taking_nothing_new_keeps_the_hold(ring: FrameRing) -> None:
    """A second take while no newer frame exists returns nothing and leaves the first take's hold alone."""
    write(ring, 1, mono=1 / 30)
    consumer = RingConsumer(ring)
    consumer.last_seq = 0
    take_held(ring, consumer)
    assert consumer.take(np.empty((8, 12, 3), np.uint8), hold=True) is None
    for v in (2, 3, 4, 5):
        write(ring, v, mono=v / 30)
    assert plane_of(ring, 1) == 1


class TornPlaneRing(FrameRing):
    """A ring whose writer takes a frame's slot back in the middle of the main process's plane copy."""

    def _copy_plane(self, i: int, nbytes: int) -> np.ndarray:
        out = super()._copy_plane(i, nbytes)
        self.release_all()
        for _ in range(self.layout.n_slots):
            write(self, self.head + 1, mono=(self.head + 1) / 30)
        return out


def test_torn_plane_read_is_detected() -> None:
    """1. The main process starts copying held frame 1's plane.
    2. Meanwhile its hold goes (released) and the writer goes round the ring, over frame 1's slot.
    3. The version check notices: None and a lost snapshot, not a plane mixing two frames."""
    ring = TornPlaneRing.create(f"vistream-test-{uuid.uuid4().hex[:8]}", LAYOUT)
    try:
        write(ring, 1, mono=1 / 30)
        take_held(ring)
        assert ring.read_plane(1) is None
        assert int(ring.header["snapshots_lost"]) == 1
    finally:
        ring.close()
        ring.unlink()


@pytest.mark.parametrize(
    ("camera", "plane"),
    [
        ((1920, 1080), (1280, 720)),
        ((3840, 2160), (1280, 720)),
        ((1440, 1080), (960, 720)),  # 4:3
        ((1920, 1200), (1152, 720)),  # 16:10
        ((1080, 1920), (404, 720)),  # portrait: 405 rounded down to even
        ((640, 480), (640, 480)),  # never upscaled
        ((641, 481), (640, 480)),  # I420 needs even sides
    ],
)
def test_plane_size(camera: tuple[int, int], plane: tuple[int, int]) -> None:
    """The plane fits 1280x720, keeps the camera's aspect, never upscales, and has even sides."""
    assert RingLayout(6, 640, 640).plane_size(*camera) == plane


def test_ring_without_planes() -> None:
    """A layout with a 0x0 plane takes no plane memory and asks for no plane."""
    lay = RingLayout(4, 640, 640, plane_width=0, plane_height=0)
    assert lay.plane_bytes == 0 and lay.plane_size(1920, 1080) == (0, 0)


def test_memory_per_camera() -> None:
    """What a camera costs in /dev/shm at 6 slots, 640x640 model input, 1280x720 planes (about 15.7 MB)."""
    lay = RingLayout(6, 640, 640)
    assert lay.slot_bytes == 64 * 2 + 640 * 640 * 3 + 1280 * 720 * 3 // 2
    assert lay.total_bytes == 15_668_160


STRESS = RingLayout(n_slots=4, height=64, width=64, plane_width=320, plane_height=240)


def write_for(name: str, seconds: float) -> None:
    """A writer process: frames as fast as it can, every byte of frame s (image and plane) = s % 256."""
    ring = FrameRing.attach(name)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            seq = ring.head + 1
            img = ring.begin()
            img[...] = seq % 256
            ring.plane_buffer(320, 240)[...] = seq % 256
            ring.commit(
                captured_at=float(seq), captured_mono=time.monotonic(), width=640, height=480,
                scale=0.1, pad_x=0.0, pad_y=8.0, plane_width=320, plane_height=240,
            )  # fmt: skip
    finally:
        ring.close()


def test_holds_and_planes_under_a_real_concurrent_writer() -> None:
    """1. A writer process commits frames as fast as it can into a 4-slot ring for a second.
    2. Meanwhile this process, as scheduler and main process at once, takes the newest frame with a
       hold, reads its plane as the main process would, and releases it.
    3. Every image taken and every plane read belongs to one frame (the one asked for); torn copies
       are caught, never returned; a held frame is almost always still there when its plane is read."""
    ring = FrameRing.create(f"vistream-test-{uuid.uuid4().hex[:8]}", STRESS)
    writer = multiprocessing.get_context("spawn").Process(target=write_for, args=(ring.name, 1.0))
    try:
        consumer = RingConsumer(ring)
        into = np.empty((64, 64, 3), np.uint8)
        writer.start()
        taken = planes = 0
        while writer.is_alive() or consumer.pending():
            meta = consumer.take(into, hold=True)
            if meta is None:
                continue
            taken += 1
            assert (into == meta.seq % 256).all(), "an image mixing two frames"
            got = ring.read_plane(meta.seq)
            if got is not None:
                plane, pmeta = got
                assert pmeta.seq == meta.seq and (plane == meta.seq % 256).all(), "a plane of another frame"
                planes += 1
            ring.release(meta.seq)
        writer.join(5)
        assert writer.exitcode == 0
        assert taken > 50 and ring.head > taken
        assert planes >= 0.95 * taken
        assert int(ring.header["holds_broken"]) == 0
    finally:
        if writer.is_alive():
            writer.kill()
        ring.close()
        ring.unlink()


def test_frames_carry_the_batch_shape_they_were_letterboxed_to(ring: FrameRing) -> None:
    """1. The scheduler asks for 4x12 inputs: the next frame is written as a 4x12 image in the
       first bytes of its slot, and a 4x12 batch row receives exactly those pixels.
    2. A consumer whose batch is still 8x12 gets the frame's meta (with its 4x12 shape) but no
       pixels and no hold: the scheduler drops such a frame instead of inferring it.
    3. A shape larger than the ring's layout is refused."""
    assert ring.input_shape() == (8, 12)
    ring.set_input_shape(4, 12)
    img = ring.begin(now=1.0)
    assert img.shape == (4, 12, 3)
    img[...] = np.arange(4 * 12 * 3, dtype=np.uint8).reshape(4, 12, 3)
    seq = ring.commit(captured_at=1.0, captured_mono=1.0, width=36, height=12, scale=1 / 3, pad_x=0, pad_y=0)
    row = np.zeros((4, 12, 3), np.uint8)
    meta, _ = ring.read(row)
    assert meta is not None and meta.input_hw == (4, 12) and (row == img).all()

    consumer = RingConsumer(ring)
    consumer.last_seq = 0
    old = np.full((8, 12, 3), 7, np.uint8)
    meta = consumer.take(old, hold=True)
    assert meta is not None and meta.seq == seq and meta.input_hw == (4, 12)
    assert (old == 7).all() and all(int(s["held"]) == 0 for s in ring.slots)
    with pytest.raises(ValueError, match="does not fit"):
        ring.set_input_shape(16, 12)
