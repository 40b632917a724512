"""A per-camera frame ring in shared memory: one writer, one consumer, no locks.

The camera's reader process is the only writer; the scheduler is the only
consumer of frames; the main process reads the snapshot plane of frames whose
results it handles, and the status fields. A segment looks like this:

    [ring header][slot 0 header][slot 0 image][slot 0 plane] ... [slot N-1 ...]

The image is the model input, letterboxed to the batch shape the scheduler
asks for in the header (`input_height` x `input_width`, at most the layout's
size; each slot records the shape its frame has); the plane is the camera
frame scaled to fit the plane's size (1280x720 by default), I420, for snapshots.

Each slot is guarded seqlock style by its `version`, derived from the frame's
sequence number so that a writer which died mid-write cannot confuse the next
one: while frame `s` is being written the slot's version is `2*s - 1` (odd),
once it is complete it is `2*s` (even). The ring header's `head` is the
sequence number of the newest complete frame (0: none yet) and `head_slot` the
slot it is in. A consumer reads `head`, finds the slot whose version is
`2*head`, copies it, and checks the version again; a changed version means the
writer lapped it mid-copy (a torn read) and the copy is retried with the new
head. Nothing is pickled and the image is copied once, straight into the
caller's batch buffer.

Holds keep a frame until its results have been handled. The scheduler holds a
frame's slot when it takes the frame (`held`, written by the scheduler only)
and the main process releases it when it has handled the frame's result
(`released`, written by the main process only): a slot is held while
`held` is its frame's seq and differs from `released`. The writer never
rewrites the newest frame or a held slot while another slot is free, and it
takes the slot with the oldest frame, so a held frame survives any number of
newer ones. A hold older than `HOLD_TTL_S` is ignored (its holder is gone or
forgot it); with every other slot held the writer overwrites the oldest held
frame and counts it. The version check, not the hold, proves a copy
consistent: a reader of a frame the writer took back sees the version change.

Memory ordering: CPython does enough work between two stores that the
reordering a weakly ordered CPU could do never spans a whole slot copy, and
x86-64 keeps stores in order anyway; the version check catches the rest.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import ClassVar

import numpy as np

MAGIC = 0x76697374_72656D33  # "vistrem3": slots with a snapshot plane, holds and their own input shape
ALIGN = 64
# A hold on a frame captured longer ago than this is ignored by the writer: a
# result takes well under a second to reach the main process.
HOLD_TTL_S = 5.0

HEADER = np.dtype(
    [
        ("magic", "<u8"),
        ("n_slots", "<u4"),
        ("height", "<u4"),
        ("width", "<u4"),
        ("channels", "<u4"),
        ("plane_width", "<u4"),  # largest snapshot plane a slot holds; 0: no planes
        ("plane_height", "<u4"),
        ("head", "<u8"),  # seq of the newest complete frame
        ("head_slot", "<u4"),  # the slot that holds it
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
        # Holds, counted by the reader: ignored because stale, and overwritten for want of a free slot.
        ("holds_expired", "<u8"),
        ("holds_broken", "<u8"),
        # Sampled frames the reader left unconverted: the model was busy and a newer frame would come
        # before it was free (vistream.sources.timing.Deferral); never written, so not in `head`.
        ("deferred", "<u8"),
        # Written by the main process: snapshots asked for whose frame was no longer in the ring.
        ("snapshots_lost", "<u8"),
        # Motion gating (vistream.sources.motion). The reader writes the camera's settings when it
        # starts; the main process writes until when (time.monotonic()) a track that moved keeps the
        # camera's frames inferred whatever their motion score.
        ("motion_min_area", "<f4"),
        ("motion_keepalive_s", "<f4"),
        ("active_until", "<f8"),
        # The batch shape (vistream.scheduler.shape) the reader letterboxes new frames to, written by
        # the scheduler; 0 x 0: the layout's full height x width.
        ("input_height", "<u4"),
        ("input_width", "<u4"),
        # Sessions the reader ended because the stream was unsafe to decode (vistream.sources.guard):
        # frames over the camera's max_pixels, and the reader's memory limit reached.
        ("refused_too_large", "<u8"),
        ("refused_memory", "<u8"),
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
        ("motion", "<f4"),  # changed-area fraction (vistream.sources.motion); -1 = not computed
        ("plane_width", "<u4"),  # this frame's snapshot plane; 0: none
        ("plane_height", "<u4"),
        ("input_height", "<u4"),  # the shape this frame was letterboxed to (the first h*w*3 image bytes)
        ("input_width", "<u4"),
        ("held", "<u8"),  # seq the scheduler holds in this slot (0: none); the scheduler writes it
        ("released", "<u8"),  # seq whose hold the main process released; the main process writes it
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
    REFUSED = 5  # backing off after refusing the stream (too large, out of memory): see `refused_*`

    NAMES: ClassVar[dict[int, str]] = {
        0: "starting",
        1: "connecting",
        2: "streaming",
        3: "backoff",
        4: "stopped",
        5: "refused",
    }


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class RingLayout:
    """Shape of a ring: how many slots, the model-input image and the largest snapshot plane each holds."""

    n_slots: int
    height: int
    width: int
    channels: int = 3
    plane_width: int = 1280  # 0 x 0: no snapshot planes
    plane_height: int = 720

    def __post_init__(self) -> None:
        if self.n_slots < 2:
            raise ValueError("a ring needs at least 2 slots: the newest frame and the one being written")
        if self.plane_width % 2 or self.plane_height % 2:
            raise ValueError("the snapshot plane is I420: its sides must be even")

    @property
    def image_bytes(self) -> int:
        return self.height * self.width * self.channels

    @property
    def plane_bytes(self) -> int:
        return self.plane_width * self.plane_height * 3 // 2

    @property
    def header_bytes(self) -> int:
        return _aligned(HEADER.itemsize)

    @property
    def slot_bytes(self) -> int:
        return _aligned(SLOT.itemsize) + _aligned(self.image_bytes) + _aligned(self.plane_bytes)

    def plane_size(self, width: int, height: int) -> tuple[int, int]:
        """The snapshot plane of a width x height camera frame: fits the plane, keeps the aspect,
        never upscales, even sides (I420). (0, 0) when the ring has no planes."""
        if not self.plane_width or width < 2 or height < 2:
            return 0, 0
        scale = min(1.0, self.plane_width / width, self.plane_height / height)
        return max(2, round(width * scale) // 2 * 2), max(2, round(height * scale) // 2 * 2)

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
    plane_width: int = 0  # the snapshot plane's size; 0: the frame has none
    plane_height: int = 0
    input_height: int = 0  # the batch shape the frame was letterboxed to
    input_width: int = 0

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.input_height, self.input_width


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
            int(self.header["plane_width"]),
            int(self.header["plane_height"]),
        )
        lay = self.layout
        self.slots = []
        self.images = []
        self.planes = []  # flat I420 buffers; a frame uses the first w*h*3/2 bytes
        self._writing: int | None = None  # the slot between begin() and commit()
        for i in range(lay.n_slots):
            base = lay.header_bytes + i * lay.slot_bytes
            self.slots.append(np.ndarray((), SLOT, buffer=shm.buf, offset=base))
            image_at = base + _aligned(SLOT.itemsize)
            # Flat: a frame letterboxed to a batch shape smaller than the layout uses the first bytes.
            self.images.append(np.ndarray((lay.image_bytes,), np.uint8, buffer=shm.buf, offset=image_at))
            plane_at = image_at + _aligned(lay.image_bytes)
            self.planes.append(np.ndarray((lay.plane_bytes,), np.uint8, buffer=shm.buf, offset=plane_at))

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
        header["plane_width"], header["plane_height"] = layout.plane_width, layout.plane_height
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
        self.planes.clear()
        self._shm.close()

    def unlink(self) -> None:
        self._shm.unlink()

    # -- writer side (the reader process) ----------------------------------------

    @property
    def stream_size(self) -> tuple[int, int]:
        """(width, height) of the camera's stream as its reader reported it; (0, 0) before a frame."""
        return int(self.header["stream_width"]), int(self.header["stream_height"])

    def input_shape(self) -> tuple[int, int]:
        """(height, width) new frames are letterboxed to: the batch shape the scheduler asked for,
        or the layout's full image."""
        h, w = int(self.header["input_height"]), int(self.header["input_width"])
        lay = self.layout
        if 0 < h <= lay.height and 0 < w <= lay.width:
            return h, w
        return lay.height, lay.width

    def set_input_shape(self, height: int, width: int) -> None:
        """The scheduler asks for frames letterboxed to height x width from now on."""
        lay = self.layout
        if not (0 < height <= lay.height and 0 < width <= lay.width):
            raise ValueError(f"a {height}x{width} input does not fit this ring's {lay.height}x{lay.width}")
        self.header["input_height"], self.header["input_width"] = height, width

    def begin(self, now: float | None = None, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Mark the next slot as being written and return its (height, width, channels) image to fill,
        `shape` (default: `input_shape()`) being its height and width.

        `now` (time.monotonic() by default) dates the holds: older than
        `HOLD_TTL_S` they are ignored."""
        h, w = shape or self.input_shape()
        i = self._pick_slot(time.monotonic() if now is None else now)
        self._writing = i
        slot = self.slots[i]
        slot["version"] = 2 * (int(self.header["head"]) + 1) - 1
        slot["input_height"], slot["input_width"] = h, w
        return self._image(i, h, w)

    def _image(self, i: int, height: int, width: int) -> np.ndarray:
        channels = self.layout.channels
        return self.images[i][: height * width * channels].reshape(height, width, channels)

    def plane_buffer(self, width: int, height: int) -> np.ndarray:
        """The slot's snapshot plane being written, as an I420 (height*3/2, width) array to fill."""
        if self._writing is None:
            raise RuntimeError("plane_buffer() before begin()")
        lay = self.layout
        if width > lay.plane_width or height > lay.plane_height or width % 2 or height % 2:
            raise ValueError(
                f"a {width}x{height} plane does not fit {lay.plane_width}x{lay.plane_height} I420"
            )
        return self.planes[self._writing][: width * height * 3 // 2].reshape(height * 3 // 2, width)

    def last_taken(self) -> int:
        """The newest seq the consumer took (and held) from this ring, as far as the slots still show."""
        return max(int(slot["held"]) for slot in self.slots)

    def _pick_slot(self, now: float) -> int:
        """The slot for the next frame: never the newest, a held one only when no other is left,
        and among those the one with the oldest frame."""
        head_slot = int(self.header["head_slot"]) if int(self.header["head"]) else -1
        free: list[int] = []
        held: list[int] = []
        expired: set[int] = set()
        for i, slot in enumerate(self.slots):
            if i == head_slot:
                continue
            hold = _hold(slot)
            if hold and now - float(slot["captured_mono"]) > HOLD_TTL_S:
                expired.add(i)
                hold = 0
            (held if hold else free).append(i)
        i = min(free or held, key=lambda j: int(self.slots[j]["version"]))
        if not free:
            self.header["holds_broken"] += 1
        elif i in expired:
            self.header["holds_expired"] += 1
        return i

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
        plane_width: int = 0,
        plane_height: int = 0,
    ) -> int:
        """Publish the slot filled since `begin()`; returns its sequence number."""
        i = self._writing
        if i is None:
            raise RuntimeError("commit() without begin()")
        seq = int(self.header["head"]) + 1
        slot = self.slots[i]
        slot["captured_at"], slot["captured_mono"] = captured_at, captured_mono
        slot["width"], slot["height"] = width, height
        slot["scale"], slot["pad_x"], slot["pad_y"], slot["motion"] = scale, pad_x, pad_y, motion
        slot["plane_width"], slot["plane_height"] = plane_width, plane_height
        slot["version"] = 2 * seq
        # head_slot before head: a reader that sees the new head sees its slot too (and checks the version).
        self.header["head_slot"] = i
        self.header["head"] = seq
        self._writing = None
        return seq

    # -- consumer side (the scheduler) ------------------------------------------

    @property
    def head(self) -> int:
        return int(self.header["head"])

    def _find(self, seq: int) -> int | None:
        """The slot that holds complete frame `seq`, if one does; callers copy, then check the version."""
        i = int(self.header["head_slot"])
        if i < len(self.slots) and int(self.slots[i]["version"]) == 2 * seq:
            return i
        for i, slot in enumerate(self.slots):
            if int(slot["version"]) == 2 * seq:
                return i
        return None

    def peek(self) -> tuple[int, float] | None:
        """(seq, captured_mono) of the newest complete frame, without copying it.

        The answer may be outdated by the time the frame is read: `read()`
        checks again.
        """
        head = int(self.header["head"])
        i = self._find(head) if head else None
        if i is None:
            return None  # none yet, or already being rewritten: the next peek sees the newer frame
        mono = float(self.slots[i]["captured_mono"])
        if int(self.slots[i]["version"]) != 2 * head:
            return None
        return head, mono

    def meta_of(self, seq: int) -> FrameMeta | None:
        """What the slot header of complete frame `seq` says (its motion score, capture time),
        without copying the image; None when the frame is gone."""
        i = self._find(seq)
        if i is None:
            return None
        meta = _meta(seq, self.slots[i].copy())
        return meta if int(self.slots[i]["version"]) == 2 * seq else None

    def read(
        self, into: np.ndarray, retries: int = 3, *, hold: bool = False, newer_than: int = 0
    ) -> tuple[FrameMeta | None, int]:
        """Copy the newest complete frame into `into`, if it is newer than `newer_than`.

        With `hold`, the frame's slot is held before the copy (see `unhold`
        and `release`). Returns (meta, torn): meta is None when no consistent
        frame could be read; torn counts copies that the writer overwrote
        mid-way.
        """
        torn = 0
        for _ in range(retries + 1):
            head = int(self.header["head"])
            if head <= newer_than:
                return None, torn
            i = self._find(head)
            if i is None:
                continue  # lapped between reading head and the slot: try the new head
            slot = self.slots[i]
            if hold:
                slot["held"] = head  # before the copy, so the writer leaves the slot alone from now on
            meta = slot.copy()
            shape = (int(meta["input_height"]), int(meta["input_width"]))
            if shape != into.shape[:2]:
                # Letterboxed for another batch shape: not copied, nor held; the caller sees the
                # shape in the meta and drops the frame.
                if hold:
                    slot["held"] = 0
                if int(slot["version"]) == 2 * head:
                    return _meta(head, meta), torn
                continue
            self._copy_image(i, into)
            if int(slot["version"]) == 2 * head:
                return _meta(head, meta), torn
            torn += 1
            if hold:
                slot["held"] = 0
        return None, torn

    def unhold(self, seq: int) -> None:
        """The scheduler gives up its hold on `seq`: the frame's result will never reach the main process."""
        for slot in self.slots:
            if int(slot["held"]) == seq:
                slot["held"] = 0

    # -- main process side -------------------------------------------------------

    def release(self, seq: int) -> None:
        """The result of frame `seq` has been handled: the writer may reuse its slot."""
        for slot in self.slots:
            if int(slot["held"]) == seq:
                slot["released"] = seq

    def release_all(self) -> None:
        """Drop every hold (the scheduler that made them was replaced)."""
        for slot in self.slots:
            slot["released"] = slot["held"]

    def read_plane(self, seq: int) -> tuple[np.ndarray, FrameMeta] | None:
        """A copy of frame `seq`'s snapshot plane, I420 as a (h*3/2, w) array, and the frame's meta.

        None when the ring no longer has that frame (counted in
        `snapshots_lost`): its slot was overwritten before or during the copy.
        """
        i = self._find(seq)
        if i is not None:
            slot = self.slots[i]
            meta = _meta(seq, slot.copy())
            w, h = meta.plane_width, meta.plane_height
            plane = self._copy_plane(i, w * h * 3 // 2)
            if w and int(slot["version"]) == 2 * seq:
                return plane.reshape(h * 3 // 2, w), meta
        self.header["snapshots_lost"] += 1
        return None

    def _copy_image(self, i: int, into: np.ndarray) -> None:
        np.copyto(into, self._image(i, *into.shape[:2]))

    def _copy_plane(self, i: int, nbytes: int) -> np.ndarray:
        return self.planes[i][:nbytes].copy()


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
        plane_width=int(rec["plane_width"]),
        plane_height=int(rec["plane_height"]),
        input_height=int(rec["input_height"]),
        input_width=int(rec["input_width"]),
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

    def take(self, into: np.ndarray, *, hold: bool = False) -> FrameMeta | None:
        """Copy the newest untaken frame into `into`, counting the ones skipped.

        With `hold`, its slot stays as it is until the main process releases
        the frame, or `unhold` gives it up."""
        meta, torn = self.ring.read(into, hold=hold, newer_than=self.last_seq)
        self.torn += torn
        if meta is None:
            return None
        self.skip_to(meta.seq)
        return meta

    def skip_to(self, seq: int) -> int:
        """Mark everything up to `seq` as handled; returns how many were never taken."""
        missed = max(0, seq - self.last_seq - 1)
        self.overwritten += missed
        self.last_seq = max(self.last_seq, seq)
        return missed


def _hold(slot: np.ndarray) -> int:
    """The seq held in `slot`, if the hold is on the frame the slot holds now and not released; else 0."""
    held = int(slot["held"])
    if held and held != int(slot["released"]) and int(slot["version"]) == 2 * held:
        return held
    return 0
