"""The scheduler loop on real rings with a fake detector and a fake clock: drops, failures, hand-off."""

from __future__ import annotations

import dataclasses
import queue
import threading
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from vistream.config.models import BatchingConfig, ModelConfig
from vistream.detector import BackendUnavailable, Detector, Ticket
from vistream.ops.process import StopFlag
from vistream.ring.shm import FrameRing, RingLayout, State
from vistream.scheduler.loop import MAX_CONSECUTIVE_FAILURES, Scheduler, SchedulerSpec
from vistream.scheduler.messages import BatchResult

IMGSZ = 128
LAYOUT = RingLayout(4, IMGSZ, IMGSZ, plane_width=0, plane_height=0)
MAX_AGE_S = 0.5


class FakeDetector(Detector):
    """Finds one box per frame, or raises while `failing`; takes any batch shape up to IMGSZ."""

    def __init__(self, max_batch: int) -> None:
        self.names, self.device, self.half = {0: "person"}, "cpu", False
        self.input_buffer = np.zeros((max_batch, LAYOUT.height, LAYOUT.width, 3), np.uint8)
        self.failing = False
        self.calls: list[int] = []
        self.warmups: list[tuple[int, int]] = []

    def reshape(self, height: int, width: int) -> None:
        self.input_buffer = np.zeros((len(self.input_buffer), height, width, 3), np.uint8)

    def warmup(self) -> None:
        self.warmups.append(self.input_hw)

    def infer(self, n: int) -> list[np.ndarray]:
        self.calls.append(n)
        if self.failing:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return [np.array([[1, 2, 8, 9, 0.9, 0]], np.float32) for _ in range(n)]


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Rig:
    """Two cameras' rings, a scheduler on them, and ways to feed frames."""

    def __init__(self, *, queue_size: int = 8, start_seqs: dict[str, int] | None = None) -> None:
        self.rings = {
            cam: FrameRing.create(f"vistream-test-{uuid.uuid4().hex[:8]}", LAYOUT) for cam in ("a", "b")
        }
        for ring in self.rings.values():
            ring.header["state"] = State.STREAMING
        self.results: queue.Queue = queue.Queue(queue_size)
        self.spec = SchedulerSpec(
            model=ModelConfig(path="fake.pt", imgsz=IMGSZ),
            batching=BatchingConfig(max_batch=4, max_wait_ms=10, max_frame_age_ms=int(MAX_AGE_S * 1000)),
            rings={cam: ring.name for cam, ring in self.rings.items()},
            wake=threading.Semaphore(0),
            results=self.results,
            stats=queue.Queue(),
            control=queue.Queue(),
            beat=[0.0, 0.0, 0.0],
            start_seqs=start_seqs or {},
        )
        self.clock = Clock()
        self.detector = FakeDetector(4)
        self.scheduler: Scheduler | None = None

    def start(self) -> Scheduler:
        self.scheduler = Scheduler(self.spec, self.detector, StopFlag(), clock=self.clock)
        return self.scheduler

    def write(self, cam: str, age: float = 0.0, motion: float = -1.0) -> int:
        ring = self.rings[cam]
        ring.begin(now=self.clock.t)
        return ring.commit(
            captured_at=1e9, captured_mono=self.clock.t - age, width=64, height=64, scale=0.25,
            pad_x=0.0, pad_y=0.0, motion=motion,
        )  # fmt: skip

    def counts(self, cam: str):  # type: ignore[no-untyped-def]
        assert self.scheduler is not None
        return self.scheduler.stats.cameras[cam]

    def close(self) -> None:
        if self.scheduler:
            self.scheduler.close()
        for ring in self.rings.values():
            ring.close()
            ring.unlink()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def accounted(rig: Rig, cam: str) -> int:
    c = rig.counts(cam)
    return c.inferred + c.stale + c.overwritten + c.failed + c.unattached


def test_fresh_frames_of_both_cameras_go_in_one_batch(rig: Rig) -> None:
    """Both streaming cameras have a fresh frame: one batch of 2, one BatchResult with boxes
    mapped back to camera pixels, both counted as inferred."""
    s = rig.start()
    rig.write("a"), rig.write("b")
    s.step()
    assert rig.detector.calls == [2]
    batch = rig.results.get_nowait()
    assert isinstance(batch, BatchResult) and {f.camera for f in batch.frames} == {"a", "b"}
    assert batch.frames[0].detections[0][2:] == pytest.approx((4.0, 8.0, 32.0, 36.0))
    assert (rig.counts("a").inferred, rig.counts("b").inferred) == (1, 1)


def test_stale_frames_are_dropped_and_counted_never_inferred(rig: Rig) -> None:
    """A frame older than max_frame_age_ms at decision time is dropped as stale: the model
    never sees it, and it is not counted anywhere else."""
    s = rig.start()
    rig.write("a", age=MAX_AGE_S + 0.1)
    s.step()
    assert rig.detector.calls == []
    assert rig.counts("a").stale == 1 and rig.counts("a").inferred == 0
    assert rig.results.empty()


def test_failed_batch_counts_its_frames_and_the_error(rig: Rig) -> None:
    """1. Inference raises: both frames of the batch are counted `failed`, one inference error,
       no result is queued and the scheduler carries on.
    2. The next batch succeeds: the failure streak resets."""
    s = rig.start()
    rig.detector.failing = True
    rig.write("a"), rig.write("b")
    s.step()
    assert (rig.counts("a").failed, rig.counts("b").failed) == (1, 1)
    assert s.stats.inference_errors == 1 and rig.results.empty()
    rig.detector.failing = False
    rig.write("a"), rig.write("b")
    s.step()
    assert rig.counts("a").inferred == 1 and s._failures == 0


def test_ten_failures_in_a_row_end_the_scheduler(rig: Rig) -> None:
    """Nine failing batches are counted and survived; the tenth in a row raises, so the
    process exits and the supervisor starts a fresh scheduler (a wedged GPU context)."""
    s = rig.start()
    rig.rings["b"].header["state"] = State.CONNECTING  # only `a` streams: no waiting for `b`
    rig.detector.failing = True
    for _ in range(MAX_CONSECUTIVE_FAILURES - 1):
        rig.write("a")
        s.step()
    assert rig.counts("a").failed == MAX_CONSECUTIVE_FAILURES - 1
    rig.write("a")
    with pytest.raises(RuntimeError, match="illegal memory access"):
        s.step()
    assert rig.counts("a").failed == MAX_CONSECUTIVE_FAILURES


def test_results_overflow_is_counted_not_waited_for() -> None:
    """The hand-off to the main process is full (MQTT side stalled): the batch's results are
    dropped and counted per frame; the scheduler never blocks on the queue."""
    rig = Rig(queue_size=1)
    try:
        s = rig.start()
        rig.results.put_nowait("someone else's result")
        rig.write("a"), rig.write("b")
        s.step()
        assert s.stats.results_overflow == 2
        assert rig.counts("a").inferred == 1  # the model did run on it
    finally:
        rig.close()


def test_frames_before_attach_are_counted_unattached_from_the_previous_position() -> None:
    """1. Camera `a` wrote 7 frames; the previous scheduler accounted for the first 3 of them
       (its last report), `b` 2 frames with nothing accounted; then this scheduler attaches.
    2. The 4 and 2 frames it never saw are counted `unattached`; frames after attach are its own.
    3. Every frame is accounted for exactly once: position == all counts + the previous position."""
    rig = Rig(start_seqs={"a": 3, "b": 0})
    try:
        for _ in range(7):
            rig.write("a")
        rig.write("b"), rig.write("b")
        s = rig.start()
        assert (rig.counts("a").unattached, rig.counts("b").unattached) == (4, 2)
        rig.write("a"), rig.write("a"), rig.write("b")  # one `a` overwritten before the batch
        s.step()
        s._send_stats()
        assert s.stats.positions == {"a": 9, "b": 3}
        assert accounted(rig, "a") == 9 - 3 and accounted(rig, "b") == 3
        assert rig.counts("a").overwritten == 1
    finally:
        rig.close()


# -- motion gating ----------------------------------------------------------------------


def gated(rig: Rig, keepalive_s: float = 10.0) -> Scheduler:
    """Camera `a` gated (min_area 0.001), its first frame inferred; `b` not gated and silent."""
    for ring in rig.rings.values():
        ring.header["motion_min_area"], ring.header["motion_keepalive_s"] = 0.001, keepalive_s
    rig.rings["b"].header["state"] = State.CONNECTING
    s = rig.start()
    rig.write("a", motion=1.0)
    s.step()
    rig.results.get_nowait()
    return s


def test_a_frame_without_motion_is_skipped_counted_and_repeated_to_the_main_process(rig: Rig) -> None:
    """1. Camera `a` was inferred; its next frame has motion under min_area.
    2. The model does not see it; it is counted `skipped_no_motion`, not as a drop.
    3. The main process gets the last detections again for this frame (`repeated`), so tracks and
       events go on: the scene did not change.
    4. The accounting holds: sampled = inferred + dropped + skipped."""
    s = gated(rig)
    seq = rig.write("a", motion=0.0002)
    rig.clock.t += 0.2
    s.step()
    assert rig.detector.calls == [1]
    c = rig.counts("a")
    assert (c.inferred, c.skipped_no_motion, c.stale, c.overwritten) == (1, 1, 0, 0)
    (frame,) = rig.results.get_nowait().frames
    assert frame.repeated and frame.seq == seq and frame.camera == "a"
    assert frame.detections[0][2:] == pytest.approx((4.0, 8.0, 32.0, 36.0))
    assert accounted(rig, "a") + c.skipped_no_motion == rig.rings["a"].head


def test_motion_is_inferred(rig: Rig) -> None:
    s = gated(rig)
    rig.write("a", motion=0.05)
    s.step()
    assert rig.detector.calls == [1, 1] and rig.counts("a").skipped_no_motion == 0


def test_a_moving_track_keeps_the_frames_inferred(rig: Rig) -> None:
    """The main process wrote that a track moved (active until t+2 s): frames with motion under
    min_area (but some) are inferred until then, skipped after."""
    s = gated(rig)
    rig.rings["a"].header["active_until"] = rig.clock.t + 2.0
    rig.clock.t += 1.0
    rig.write("a", motion=0.0005)
    s.step()
    assert rig.detector.calls == [1, 1]
    rig.clock.t += 1.5
    rig.write("a", motion=0.0005)
    s.step()
    assert rig.detector.calls == [1, 1] and rig.counts("a").skipped_no_motion == 1


def test_keepalive_infers_a_still_camera_now_and_then(rig: Rig) -> None:
    """No motion at all for 10 s at 5 fps with keepalive 4 s: frames at 4 s and 8 s are inferred."""
    s = gated(rig, keepalive_s=4.0)
    for _ in range(50):
        rig.clock.t += 0.2
        rig.write("a", motion=0.0)
        s.step()
    assert rig.detector.calls == [1, 1, 1]
    assert rig.counts("a").skipped_no_motion == 48


def test_an_ungated_camera_is_not_held_back_by_a_quiet_one(rig: Rig) -> None:
    """1. Both cameras streaming; `a` has had no motion, so its frames are skipped.
    2. `b`'s frame goes out alone at once: the batch does not wait max_wait_ms for `a`."""
    s = gated(rig)
    rig.rings["b"].header["state"] = State.STREAMING
    rig.write("a", motion=0.0)
    s.step()
    rig.write("b")
    s.step()
    assert rig.detector.calls == [1, 1]
    assert rig.results.get_nowait().frames[0].repeated
    assert rig.results.get_nowait().frames[0].camera == "b"


def test_frames_are_tracked_in_the_scheduler(rig: Rig) -> None:
    """1. Camera a's frames come in capture order: each result carries a track id per detection,
       the same object keeping its id (ByteTrack runs here, where torch is loaded anyway).
    2. AddCamera for a known camera at another rate restarts its tracker but not its counts."""
    from vistream.scheduler.messages import AddCamera

    s = rig.start()
    ids = []
    for _ in range(4):
        rig.clock.t += 0.2
        rig.write("a"), rig.write("b")
        s.step()
        frame = next(f for f in rig.results.get_nowait().frames if f.camera == "a")
        assert frame.track_ids is not None and len(frame.track_ids) == len(frame.detections)
        ids.append(frame.track_ids[0])
    assert ids[1] is not None and len(set(ids[1:])) == 1
    inferred = rig.counts("a").inferred
    s.add("a", rig.rings["a"].name, 2.0)
    assert s.feeds["a"].detect_fps == 2.0 and rig.counts("a").inferred == inferred
    rig.spec.control.put(AddCamera("a", rig.rings["a"].name, 2.0))
    s._control()
    assert rig.counts("a").inferred == inferred


def test_the_main_process_does_not_load_torch() -> None:
    """The daemon, its result path and the event engine import neither torch nor Ultralytics:
    tracking runs in the scheduler, so the main process stays small (about 85 MiB, not 580)."""
    import subprocess
    import sys

    code = (
        "import sys, vistream.daemon, vistream.outputs.alerts, vistream.events.engine, vistream.ops.http;"
        "print(sorted(m for m in ('torch', 'ultralytics') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_walker_who_stops_keeps_the_track_id_across_a_skipped_stretch(rig: Rig) -> None:
    """1. Camera `a` (motion gating, keepalive 10 s): an object walks 4 px per frame, inferred.
    2. It stops; 10 s without motion at 5 fps: frames are skipped, and the one at the keepalive is
       inferred, the object where it stopped.
    3. It keeps its track id throughout and after: each repeated frame goes through the tracker
       too, as the same still frame would with gating off (after a gap the tracker would carry the
       walker on at its old speed, and can miss it and give it a new id: a new track, new events)."""
    box = [1.0]

    def infer(n: int) -> list[np.ndarray]:
        rig.detector.calls.append(n)
        return [np.array([[box[0], 4, box[0] + 3, 12, 0.9, 0]], np.float32) for _ in range(n)]

    rig.detector.infer = infer  # type: ignore[method-assign]
    s = gated(rig)
    for _ in range(8):
        rig.clock.t += 0.2
        box[0] += 1.0
        rig.write("a", motion=1.0)
        s.step()
        walking = rig.results.get_nowait().frames[0].track_ids[0]
    ids = {walking}
    repeated = 0
    for _ in range(51):
        rig.clock.t += 0.2
        rig.write("a", motion=0.0)
        s.step()
        for frame in rig.results.get_nowait().frames:
            ids.add(frame.track_ids[0] if frame.track_ids else None)
            repeated += frame.repeated
    assert repeated == 50 and len(rig.detector.calls) == 1 + 8 + 1
    assert ids == {walking} and walking is not None, ids


def test_batch_shape_follows_the_cameras(rig: Rig) -> None:
    """1. No camera has reported its size: batches stay at the IMGSZ square.
    2. Camera a reports 1280x720: the model is re-warmed at 96x128 (128x72 rounded up to the
       stride) and both readers are asked for that shape; a frame letterboxed before is dropped
       (`reshape`), never inferred, and the next one is inferred at the new shape.
    3. Camera b reports a portrait stream: back to the square, which holds both.
    4. Camera b is removed: 96x128 again."""
    s = rig.start()
    assert rig.detector.input_hw == (IMGSZ, IMGSZ) and rig.detector.warmups == []
    rig.write("a")
    rig.rings["a"].header["stream_width"], rig.rings["a"].header["stream_height"] = 1280, 720
    s.fit_shape()
    assert rig.detector.input_hw == (96, 128) and rig.detector.warmups == [(96, 128)]
    assert all(r.input_shape() == (96, 128) for r in rig.rings.values())
    assert s.stats.batch_shape == (96, 128) and s.stats.reshapes == 1
    rig.write("b")  # letterboxed at the new shape: the ring asks its writer for it
    s.step()
    assert rig.counts("a").reshape == 1 and rig.counts("a").inferred == 0
    assert rig.counts("b").inferred == 1 and rig.detector.calls == [1]
    s.fit_shape()  # nothing changed: no second warm-up
    assert rig.detector.warmups == [(96, 128)]

    rig.rings["b"].header["stream_width"], rig.rings["b"].header["stream_height"] = 720, 1280
    s.fit_shape()
    assert rig.detector.input_hw == (IMGSZ, IMGSZ) and rig.rings["a"].input_shape() == (IMGSZ, IMGSZ)
    s.remove("b")
    s.fit_shape()
    assert rig.detector.input_hw == (96, 128) and s.stats.reshapes == 3


def test_a_model_with_a_fixed_input_keeps_it(rig: Rig) -> None:
    """An export with a static input size runs that size whatever the cameras are."""
    rig.detector.fixed_input = (IMGSZ, IMGSZ)
    rig.rings["a"].header["stream_width"], rig.rings["a"].header["stream_height"] = 1280, 720
    s = rig.start()
    assert rig.detector.input_hw == (IMGSZ, IMGSZ) and rig.detector.warmups == []
    assert s.stats.batch_shape == (IMGSZ, IMGSZ)


def test_a_frame_that_goes_stale_while_its_batch_runs_is_counted_late(rig: Rig) -> None:
    """A batch that takes longer than the frame had left: the frame is inferred (its result is
    still the newest there is) and counted `late`, and its age at the end is recorded; the policy
    then expects batches to take that long and drops frames that could not finish in time."""
    s = rig.start()
    infer = rig.detector.infer

    def slow(n: int) -> list[np.ndarray]:
        rig.clock.t += 0.3
        return infer(n)

    rig.detector.infer = slow  # type: ignore[method-assign]
    rig.write("a", age=0.3), rig.write("b", age=0.1)
    s.step()
    assert rig.counts("a").inferred == 1 and rig.counts("a").late == 1
    assert rig.counts("b").inferred == 1 and rig.counts("b").late == 0
    assert s.stats.result_age_s.count == 2 and s.stats.result_age_s.sum == pytest.approx(0.6 + 0.4)
    assert s.policy.expected_s == pytest.approx(MAX_AGE_S / 2)  # capped at half the age limit
    rig.write("a", age=0.3), rig.write("b", age=0.1)  # a: 0.3 s old plus 0.25 s expected is too old
    s.step()
    assert rig.counts("a").stale == 1 and rig.counts("a").inferred == 1
    rig.clock.t += 0.02  # b waited max_wait_ms for a, which will not come
    s.step()
    assert rig.counts("b").inferred == 2


# -- batches in flight (a remote backend) -----------------------------------------------------


class AsyncDetector(FakeDetector):
    """Like a Triton backend: `submit` copies the batch and returns at once, the answer arrives
    later (`answer`), or the batch fails as a remote backend does (`BackendUnavailable`)."""

    max_inflight = 2

    def __init__(self, max_batch: int) -> None:
        super().__init__(max_batch)
        self.tickets: list[Ticket] = []
        self.sent: list[np.ndarray] = []
        self.down: str | None = None  # what `unavailable()` says
        self.waited = 0  # collects that found their batch not done yet

    def submit(self, n: int, done=None) -> Ticket:  # type: ignore[no-untyped-def]
        self.calls.append(n)
        if self.failing:
            raise BackendUnavailable("triton: connection refused")
        self.sent.append(self.input_buffer[:n].copy())  # as a client serialises the request
        self.tickets.append(Ticket(n))
        return self.tickets[-1]

    def answer(self, i: int, error: Exception | None = None) -> None:
        t = self.tickets[i]
        if error is not None:
            t.error = error
        else:
            t.result = [np.array([[1, 2, 8, 9, 0.9, 0]], np.float32) for _ in range(t.n)]

    def collect(self, ticket: Ticket, timeout: float | None = None) -> list[np.ndarray]:
        if not ticket.done():  # the server answers while the scheduler waits
            self.waited += 1
            self.answer(self.tickets.index(ticket))
        return super().collect(ticket, timeout)

    def unavailable(self) -> str | None:
        return self.down


@pytest.fixture
def arig() -> Iterator[Rig]:
    r = Rig()
    r.detector = AsyncDetector(4)
    yield r
    r.close()


def held_seqs(ring: FrameRing) -> set[int]:
    return {int(slot["held"]) for slot in ring.slots if int(slot["held"])}


def test_two_batches_in_flight_hand_over_in_order(arig: Rig) -> None:
    """1. A batch of a and b is submitted; nothing is handed over yet, both frames stay held.
    2. The next frames go out as a second batch while the first is in flight (max_inflight 2).
    3. The second answers first: nothing is handed over, results keep the order batches were sent.
    4. The first answers (polled without waiting): both batches are handed over, first then
       second, and every frame is counted inferred once; the holds stay for the main process."""
    rig = arig
    s = rig.start()
    assert s.max_inflight == 2
    first = (rig.write("a"), rig.write("b"))
    s.step()
    assert rig.detector.calls == [2] and rig.results.empty()
    assert held_seqs(rig.rings["a"]) == {first[0]} and held_seqs(rig.rings["b"]) == {first[1]}
    rig.clock.t += 0.1
    second = (rig.write("a"), rig.write("b"))
    s.step()
    assert rig.detector.calls == [2, 2] and rig.results.empty()
    rig.detector.answer(1)
    s._complete(wait=False)  # what a step does first, below the limit
    assert rig.results.empty() and rig.counts("a").inferred == 0
    rig.detector.answer(0)
    s._complete(wait=False)
    got = [sorted(f.seq for f in rig.results.get_nowait().frames) for _ in range(2)]
    assert got == [sorted(first), sorted(second)]
    assert (rig.counts("a").inferred, rig.counts("b").inferred) == (2, 2)
    assert rig.detector.waited == 0


def test_with_max_inflight_out_the_oldest_is_waited_for(arig: Rig) -> None:
    """Two batches out and a third ready: the scheduler waits for the oldest before it builds the
    next (never more than max_inflight in flight), and hands it over."""
    rig = arig
    s = rig.start()
    for _ in range(3):
        rig.clock.t += 0.1
        rig.write("a"), rig.write("b")
        s.step()
    assert rig.detector.waited == 1 and rig.detector.calls == [2, 2, 2]
    assert len(rig.results.get_nowait().frames) == 2 and rig.results.empty()
    assert len(s._inflight) == 2


def test_model_max_inflight_1_runs_one_batch_at_a_time(arig: Rig) -> None:
    """model.max_inflight: 1 keeps a remote backend to one batch at a time: each is collected in
    the step that sent it."""
    rig = arig
    rig.spec = dataclasses.replace(rig.spec, model=ModelConfig(path="fake.pt", imgsz=IMGSZ, max_inflight=1))
    s = rig.start()
    rig.write("a"), rig.write("b")
    s.step()
    assert s.max_inflight == 1 and rig.detector.waited == 1 and len(rig.results.get_nowait().frames) == 2


def test_a_backend_outage_drops_frames_as_backend_and_never_ends_the_scheduler(arig: Rig) -> None:
    """1. A batch in flight fails as a remote backend does (BackendUnavailable): its frames are
       dropped with reason `backend`, their holds given back, no inference error is counted and
       the stats say why.
    2. The backend refuses batches for more than MAX_CONSECUTIVE_FAILURES in a row: every frame
       is dropped as `backend` and the scheduler carries on (an outage elsewhere must not
       crash-loop it).
    3. While it says it is unavailable (waiting out its backoff), frames are not even taken.
    4. It is back: the next batch is inferred and the stats no longer report it down.
    5. Every frame is accounted for exactly once."""
    rig = arig
    rig.rings["b"].header["state"] = State.CONNECTING
    s = rig.start()
    rig.write("a")
    s.step()
    rig.detector.answer(0, BackendUnavailable("triton at grpc://t:8001: no answer within 10s"))
    s.step()
    assert rig.counts("a").backend == 1 and held_seqs(rig.rings["a"]) == set()
    assert s.stats.inference_errors == 0 and "no answer within 10s" in s.stats.backend_down
    rig.detector.failing = True
    for _ in range(MAX_CONSECUTIVE_FAILURES + 2):
        rig.clock.t += 0.2
        rig.write("a")
        s.step()
    assert rig.counts("a").backend == MAX_CONSECUTIVE_FAILURES + 3 and rig.counts("a").failed == 0
    assert "connection refused" in s.stats.backend_down
    rig.detector.failing, rig.detector.down = False, "triton: reconnecting in 0.5s"
    calls = len(rig.detector.calls)
    rig.clock.t += 0.2
    rig.write("a")
    s.step()
    assert len(rig.detector.calls) == calls and rig.counts("a").backend == MAX_CONSECUTIVE_FAILURES + 4
    assert s.stats.backend_down == "triton: reconnecting in 0.5s"
    rig.detector.down = None
    rig.clock.t += 0.2
    rig.write("a")
    s.step()
    s.drain()
    assert rig.counts("a").inferred == 1 and s.stats.backend_down == ""
    s._send_stats()
    assert accounted(rig, "a") + rig.counts("a").backend == rig.rings["a"].head


def test_a_batch_in_flight_survives_a_reshape_and_a_camera_removal(arig: Rig) -> None:
    """Batches in flight are handed over before the batch shape changes (the buffers are replaced)
    and before a camera is removed (its frames' holds need its ring)."""
    rig = arig
    s = rig.start()
    rig.write("a"), rig.write("b")
    s.step()
    rig.rings["a"].header["stream_width"], rig.rings["a"].header["stream_height"] = 1280, 720
    s.fit_shape()
    assert not s._inflight and len(rig.results.get_nowait().frames) == 2
    rig.write("a"), rig.write("b")
    s.step()
    s.remove("b")
    assert not s._inflight and rig.counts("a").inferred == 2


def test_an_add_whose_ring_a_later_reload_already_removed_is_skipped(rig: Rig) -> None:
    """1. Reload N sends AddCamera(c); reload N+1 removes c and unlinks its ring before the scheduler
    has read the add (a reload storm). 2. The scheduler skips the add (the RemoveCamera follows)
    instead of dying of FileNotFoundError, and goes on with the cameras it has."""
    scheduler = rig.start()
    gone = f"vistream-test-{uuid.uuid4().hex[:8]}"
    scheduler.add("c", gone, 5.0)  # what its loop does with the AddCamera message
    scheduler.remove("c")
    assert set(scheduler.feeds) == {"a", "b"}
    rig.write("a"), rig.write("b")
    scheduler.step()
    assert (rig.counts("a").inferred, rig.counts("b").inferred) == (1, 1)
