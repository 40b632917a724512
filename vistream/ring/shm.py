"""A per-camera frame ring in shared memory: one writer, one consumer, no locks.

The camera's reader process is the only writer; the scheduler is the only
consumer of frames, and the supervisor only reads the status fields. A segment
looks like this:

    [ring header][slot 0 header][slot 0 image] ... [slot N-1 header][slot N-1 image]

Each slot is guarded seqlock style by its `version`, derived from the frame's
sequence number so that a writer which died mid-write cannot confuse the next
one: while frame `s` is being written the slot's version is `2*s - 1` (odd),
once it is complete it is `2*s` (even). The ring header's `head` is the
sequence number of the newest complete frame (0: none yet). A consumer reads
`head`, checks that the slot still holds that frame, copies it, and checks the
version again; a changed version means the writer lapped it mid-copy (a torn
read) and the copy is retried with the new head. Nothing is pickled and the
image is copied once, straight into the caller's batch buffer.

Memory ordering: CPython does enough work between two stores that the
reordering a weakly ordered CPU could do never spans a whole slot copy, and
x86-64 keeps stores in order anyway; the version check catches the rest.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import ClassVar

import numpy as np

MAGIC = 0x76697374_72656D31  # "vistrem1"
ALIGN = 64

HEADER = np.dtype(
    [
        ("magic", "<u8"),
        ("n_slots", "<u4"),
        ("height", "<u4"),
        ("width", "<u4"),
        ("channels", "<u4"),
        ("head", "<u8"),  # seq of the newest complete frame
        # Status, written by the reader process, read by the supervisor.
        ("writer_pid", "<i8"),
        ("state", "<i4"),
        ("stream_width", "<u4"),
        ("stream_height", "<u4"),
        ("stream_fps", "<f4"),
        ("heartbeat", "<f8"),  # time.monotonic() of the reader's last sign of life
        ("last_frame", "<f8"),  # time.monotonic() of the last decoded frame
        ("frames_decoded", "<u8"),
        ("reconnects", "<u8"),
        ("errors", "<u8"),
    ],
    align=True,
)

SLOT = np.dtype(
    [
        ("version", "<u8"),
        ("captured_at", "<f8"),  # time.time() when the frame was decoded
        ("captured_mono", "<f8"),  # time.monotonic() at the same moment, for ages
        ("width", "<u4"),  # the camera frame's own size, to map boxes back
        ("height", "<u4"),
        ("scale", "<f4"),  # model pixels per camera pixel
        ("pad_x", "<f4"),  # left padding of the letterbox, model pixels
        ("pad_y", "<f4"),  # top padding
        ("motion", "<f4"),  # reserved for motion gating in the reader; -1 = not computed
    ],
    align=True,
)


class State:
    """Reader states kept in the ring header."""

    STARTING = 0
    CONNECTING = 1
    STREAMING = 2
    BACKOFF = 3
    STOPPED = 4

    NAMES: ClassVar[dict[int, str]] = {
        0: "starting",
        1: "connecting",
        2: "streaming",
        3: "backoff",
        4: "stopped",
    }


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class RingLayout:
    """Shape of a ring: how many slots and the model-input image each holds."""

    n_slots: int
    height: int
    width: int
    channels: int = 3

    @property
    def image_bytes(self) -> int:
        return self.height * self.width * self.channels

    @property
    def header_bytes(self) -> int:
        return _aligned(HEADER.itemsize)

    @property
    def slot_bytes(self) -> int:
        return _aligned(SLOT.itemsize) + _aligned(self.image_bytes)

    @property
    def total_bytes(self) -> int:
        return self.header_bytes + self.n_slots * self.slot_bytes


@dataclass(frozen=True)
class FrameMeta:
    """What the consumer learns about a frame besides its pixels."""

    seq: int
    captured_at: float
    captured_mono: float
    width: int
    height: int
    scale: float
    pad_x: float
    pad_y: float
    motion: float


class FrameRing:
    """A mapped ring segment. Create it in the owner, attach to it elsewhere."""

    def __init__(self, shm: shared_memory.SharedMemory, owner: bool) -> None:
        self._shm = shm
        self.owner = owner
        self.header = np.ndarray((), HEADER, buffer=shm.buf)
        if int(self.header["magic"]) != MAGIC:
            raise ValueError(f"shared memory segment {shm.name!r} is not a vistream ring")
        self.layout = RingLayout(
            int(self.header["n_slots"]),
            int(self.header["height"]),
            int(self.header["width"]),
            int(self.header["channels"]),
        )
        lay = self.layout
        self.slots = []
        self.images = []
        for i in range(lay.n_slots):
            base = lay.header_bytes + i * lay.slot_bytes
            self.slots.append(np.ndarray((), SLOT, buffer=shm.buf, offset=base))
            self.images.append(
                np.ndarray(
                    (lay.height, lay.width, lay.channels),
                    np.uint8,
                    buffer=shm.buf,
                    offset=base + _aligned(SLOT.itemsize),
                )
            )

    @property
    def name(self) -> str:
        return self._shm.name

    @classmethod
    def create(cls, name: str, layout: RingLayout) -> FrameRing:
        shm = shared_memory.SharedMemory(name=name, create=True, size=layout.total_bytes)
        header = np.ndarray((), HEADER, buffer=shm.buf)
        header[...] = 0
        header["n_slots"], header["height"], header["width"] = layout.n_slots, layout.height, layout.width
        header["channels"] = layout.channels
        header["magic"] = MAGIC  # last: attachers check it
        del header
        ring = cls(shm, owner=True)
        for slot in ring.slots:
            slot["motion"] = -1.0
        return ring

    @classmethod
    def attach(cls, name: str) -> FrameRing:
        # Attaching registers the segment with the resource tracker before 3.13, which
        # unlinks it when its last client exits (cpython gh-82300). Harmless here: the
        # daemon's children are spawned by the process that created the segments and
        # share its tracker, where the name is registered already (a no-op), and the
        # tracker ends only with the daemon. Unregistering would drop the creator's
        # registration (no clean-up after a SIGKILL, a KeyError in the tracker at unlink).
        if sys.version_info >= (3, 13):
            shm = shared_memory.SharedMemory(name=name, track=False)  # type: ignore[call-arg]
        else:
            shm = shared_memory.SharedMemory(name=name)
        return cls(shm, owner=False)

    def close(self) -> None:
        """Unmap; the numpy views must go first or the buffer stays exported."""
        self.header = None  # type: ignore[assignment]
        self.slots.clear()
        self.images.clear()
        self._shm.close()

    def unlink(self) -> None:
        self._shm.unlink()

    # -- writer side (the reader process) ----------------------------------------

    def begin(self) -> np.ndarray:
        """Mark the next slot as being written and return its image to fill."""
        seq = int(self.header["head"]) + 1
        i = seq % self.layout.n_slots
        self.slots[i]["version"] = 2 * seq - 1
        return self.images[i]

    def commit(
        self,
        *,
        captured_at: float,
        captured_mono: float,
        width: int,
        height: int,
        scale: float,
        pad_x: float,
        pad_y: float,
        motion: float = -1.0,
    ) -> int:
        """Publish the slot filled since `begin()`; returns its sequence number."""
        seq = int(self.header["head"]) + 1
        slot = self.slots[seq % self.layout.n_slots]
        slot["captured_at"], slot["captured_mono"] = captured_at, captured_mono
        slot["width"], slot["height"] = width, height
        slot["scale"], slot["pad_x"], slot["pad_y"], slot["motion"] = scale, pad_x, pad_y, motion
        slot["version"] = 2 * seq
        self.header["head"] = seq
        return seq

    # -- consumer side (the scheduler) ------------------------------------------

    @property
    def head(self) -> int:
        return int(self.header["head"])

    def peek(self) -> tuple[int, float] | None:
        """(seq, captured_mono) of the newest complete frame, without copying it.

        The answer may be outdated by the time the frame is read: `read()`
        checks again.
        """
        head = int(self.header["head"])
        if head == 0:
            return None
        slot = self.slots[head % self.layout.n_slots]
        mono = float(slot["captured_mono"])
        if int(slot["version"]) != 2 * head:
            return None  # already being rewritten; the next peek sees the newer frame
        return head, mono

    def read(self, into: np.ndarray, retries: int = 3) -> tuple[FrameMeta | None, int]:
        """Copy the newest complete frame into `into`.

        Returns (meta, torn): meta is None when no consistent frame could be
        read; torn counts copies that the writer overwrote mid-way.
        """
        torn = 0
        for _ in range(retries + 1):
            head = int(self.header["head"])
            if head == 0:
                return None, torn
            i = head % self.layout.n_slots
            slot = self.slots[i]
            if int(slot["version"]) != 2 * head:
                continue  # lapped between reading head and the slot: try the new head
            meta = slot.copy()
            self._copy_image(i, into)
            if int(slot["version"]) == 2 * head:
                return _meta(head, meta), torn
            torn += 1
        return None, torn

    def _copy_image(self, i: int, into: np.ndarray) -> None:
        np.copyto(into, self.images[i])


def _meta(seq: int, rec: np.ndarray) -> FrameMeta:
    return FrameMeta(
        seq=seq,
        captured_at=float(rec["captured_at"]),
        captured_mono=float(rec["captured_mono"]),
        width=int(rec["width"]),
        height=int(rec["height"]),
        scale=float(rec["scale"]),
        pad_x=float(rec["pad_x"]),
        pad_y=float(rec["pad_y"]),
        motion=float(rec["motion"]),
    )


class RingConsumer:
    """The scheduler's view of one camera's ring: what it took and what it missed."""

    def __init__(self, ring: FrameRing) -> None:
        self.ring = ring
        self.last_seq = ring.head  # frames written before we attached are not ours to count
        self.overwritten = 0  # frames replaced by a newer one before they were taken
        self.torn = 0  # copies the writer overwrote mid-way (retried)

    def pending(self) -> tuple[int, float] | None:
        """(seq, captured_mono) of a frame newer than the last one taken, if any."""
        newest = self.ring.peek()
        if newest is None or newest[0] <= self.last_seq:
            return None
        return newest

    def take(self, into: np.ndarray) -> FrameMeta | None:
        """Copy the newest untaken frame into `into`, counting the ones skipped."""
        meta, torn = self.ring.read(into)
        self.torn += torn
        if meta is None or meta.seq <= self.last_seq:
            return None
        self.skip_to(meta.seq)
        return meta

    def skip_to(self, seq: int) -> int:
        """Mark everything up to `seq` as handled; returns how many were never taken."""
        missed = max(0, seq - self.last_seq - 1)
        self.overwritten += missed
        self.last_seq = max(self.last_seq, seq)
        return missed
