"""The scheduler process: owns the model, turns ring frames into batches and results.

It never blocks on a reader (frames are taken from shared memory without
locks) and never queues work without bound (only the newest frame of each
camera is a candidate; results go to a bounded queue and overflow is counted).
It sleeps on a semaphore the readers release after each frame, so it wakes
the moment a frame lands instead of polling.

A remote backend (Triton) may have up to `max_inflight` batches in flight:
each keeps its frames' holds and accounting until its result is collected,
results are handed over in the order the batches were sent, and a batch the
backend could not take drops its frames (reason `backend`) without counting
as a failure of this process.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from vistream.config.models import BatchingConfig, ModelConfig
from vistream.detector import (
    BackendUnavailable,
    Detector,
    ModelConfigError,
    ModelLoadError,
    Ticket,
    load_detector,
)
from vistream.ops.process import StopFlag
from vistream.ops.stats import CameraCounts, SchedulerStats
from vistream.ring.shm import FrameMeta, FrameRing, RingConsumer, State
from vistream.scheduler.messages import (
    AddCamera,
    BatchResult,
    Detection,
    Fatal,
    FrameResult,
    Ready,
    RemoveCamera,
)
from vistream.scheduler.policy import BatchPolicy, Candidate, MotionGate
from vistream.scheduler.shape import ShapeFit, batch_shape
from vistream.sources.letterbox import boxes_to_camera

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 1.0
IDLE_WAKE_S = 0.25  # heartbeat and control messages are handled at least this often
MAX_CONSECUTIVE_FAILURES = 10  # then exit and let the supervisor start a fresh scheduler
FLUSH_S = 1.0  # how long an exiting scheduler lets its queues hand their last messages over
DRAIN_S = 1.0  # how long an exiting scheduler waits for each batch still in flight

# Slots of the shared heartbeat array (multiprocessing.Array of doubles).
BEAT_TIME, BEAT_BATCH_START, BEAT_READY = 0, 1, 2


@dataclass(frozen=True)
class SchedulerSpec:
    """Everything the scheduler process needs, picklable for `spawn`."""

    model: ModelConfig
    batching: BatchingConfig
    rings: dict[str, str]  # camera name -> ring segment name
    wake: Any  # multiprocessing.Semaphore released by readers
    results: Any  # multiprocessing.Queue: Ready, Fatal, BatchResult
    stats: Any  # multiprocessing.Queue of SchedulerStats snapshots
    control: Any  # multiprocessing.Queue: AddCamera, RemoveCamera
    beat: Any  # multiprocessing.Array("d", 3): last loop time, batch start (0: idle), ready flag
    # Camera -> the newest seq the previous schedulers accounted for (0 at start): the frames
    # written after it and before this scheduler attaches are counted as `unattached`.
    start_seqs: dict[str, int] = field(default_factory=dict)
    detect_fps: dict[str, float] = field(default_factory=dict)  # camera -> its rate, for its tracker


def run_scheduler(spec: SchedulerSpec, *, stop: StopFlag) -> int:
    t0 = time.monotonic()
    try:
        detector = load_detector(detector_model(spec.model), spec.batching.max_batch)
        # Fitted to the cameras that reported their size while the model loaded; `Scheduler`
        # follows later changes.
        if detector.fixed_input is None:
            detector.reshape(*batch_shape(reported_sizes(spec.rings), spec.model.imgsz))
        detector.warmup()
    except ModelConfigError as exc:
        return _fatal(spec, 2, str(exc))
    except ModelLoadError as exc:
        return _fatal(spec, 3, str(exc))
    except Exception as exc:  # anything from torch or Ultralytics while loading is a model problem
        log.exception("model could not be loaded")
        return _fatal(spec, 3, f"model.path: cannot load {spec.model.path!r}: {exc}")
    load_s = time.monotonic() - t0
    log.info("model warm after %.1fs on %s", load_s, detector.device)
    spec.beat[BEAT_TIME] = time.monotonic()  # before READY: the supervisor judges progress by it
    spec.beat[BEAT_READY] = 1.0
    ready = Ready(
        detector.names, detector.device, detector.half, load_s, detector.backend, detector.precision
    )
    spec.results.put(ready)
    scheduler = Scheduler(spec, detector, stop)
    try:
        scheduler.run()
    finally:
        scheduler.close()
        detector.close()
        _flush(spec.results)
        _flush(spec.stats)
    return 0


def detector_model(model: ModelConfig) -> ModelConfig:
    """`model` as the detector runs it: every camera is tracked here, so NMS keeps the boxes down to
    ByteTrack's low threshold (`vistream.events.tracking.nms_conf`); `Feed.result` keeps of them
    what is reported."""
    from vistream.events.tracking import nms_conf  # brings Ultralytics, which the detector needs anyway

    return model.model_copy(update={"conf": nms_conf(model.conf)})


def reported_sizes(rings: dict[str, str]) -> list[tuple[int, int]]:
    """(width, height) of each camera's stream as far as its reader has reported it ((0, 0): not yet)."""
    sizes = []
    for ring_name in rings.values():
        ring = FrameRing.attach(ring_name)
        try:
            sizes.append(ring.stream_size)
        finally:
            ring.close()
    return sizes


def _fatal(spec: SchedulerSpec, code: int, message: str) -> int:
    spec.results.put(Fatal(code, message))
    _flush(spec.results)
    return code


def _flush(q: Any, timeout: float = FLUSH_S) -> None:
    """Close `q` and let its feeder thread hand what is buffered to the pipe, for at most `timeout` s.

    `join_thread()` alone waits as long as the pipe is full: forever, if the main process
    stopped reading. Past the deadline the rest is given up (the main process counts
    results it never read as abandoned) and the process may exit without waiting for it.
    """
    q.close()
    joiner = threading.Thread(target=q.join_thread, name="flush", daemon=True)
    joiner.start()
    joiner.join(timeout)
    if joiner.is_alive():
        q.cancel_join_thread()


class Feed:
    """One camera as the scheduler sees it."""

    def __init__(
        self,
        name: str,
        ring_name: str,
        start_seq: int | None = None,
        detect_fps: float = 5.0,
        conf: float = 0.25,
    ) -> None:
        self.name = name
        self.ring = FrameRing.attach(ring_name)
        self.consumer = RingConsumer(self.ring)  # starts at the ring's head: older frames are not ours
        self.counts = CameraCounts()
        # Every box of the last inferred frame, tracked again for the frames motion gating skips.
        self.last_found: list[Detection] | None = None
        self.detect_fps = detect_fps
        self.conf = conf  # model.conf: what is reported (`vistream.events.tracking.reported`)
        self._tracker: Any = None
        self.quiet = False  # its latest frame was skipped for want of motion
        if start_seq is not None:  # ... but they are counted, from where the last scheduler left off
            self.counts.unattached = max(0, self.consumer.last_seq - start_seq)

    @property
    def streaming(self) -> bool:
        return int(self.ring.header["state"]) == State.STREAMING

    def result(self, meta: FrameMeta, found: list[Detection], repeated: bool = False) -> FrameResult:
        """Track all the boxes `found` in frame `meta` (frames come in capture order here) and keep
        those the daemon reports, with their track ids and boxes. Tracking runs in this process,
        which has torch loaded anyway: Ultralytics' ByteTrack imports it, and the main process
        stays small without it."""
        from vistream.events.tracking import CameraTracker, TrackerSettings, reported

        if self._tracker is None:
            self._tracker = CameraTracker(self.detect_fps, TrackerSettings().for_conf(self.conf))
        tracker = self._tracker
        ids = tracker.update(found, meta.captured_mono)
        keep = reported(found, ids, self.conf)
        return FrameResult(
            self.name, meta.seq, meta.captured_at, meta.captured_mono, meta.width, meta.height,
            [found[i] for i in keep], repeated=repeated, track_ids=tuple(ids[i] for i in keep),
            removed_tracks=tuple(tracker.removed), tracker=int(tracker.generation),
            track_boxes=tuple(tracker.boxes[i] for i in keep),
        )  # fmt: skip

    def set_rate(self, detect_fps: float) -> None:
        if detect_fps != self.detect_fps:
            self.detect_fps, self._tracker = detect_fps, None

    def close(self) -> None:
        self.ring.close()


@dataclass
class InFlight:
    """A batch handed to the detector and not collected yet, with the frames it holds."""

    taken: list[tuple[Feed, FrameMeta]]
    ticket: Ticket
    started: float


class Scheduler:
    def __init__(self, spec: SchedulerSpec, detector: Detector, stop: StopFlag, clock=time.monotonic) -> None:
        b = spec.batching
        self.spec, self.detector, self.stop, self.clock = spec, detector, stop, clock
        self.policy = BatchPolicy(b.max_batch, b.max_wait_ms / 1000, b.max_frame_age_ms / 1000)
        self.gate = MotionGate()
        self.feeds: dict[str, Feed] = {}
        self.stats = SchedulerStats()
        self._failures = 0
        self._next_stats = 0.0
        self.shapes = ShapeFit(spec.model.imgsz, b.reshape_after_s)
        self._fitted: tuple[tuple[int, int], tuple[str, ...]] | None = None  # shape, rings told it
        self._inflight: deque[InFlight] = deque()  # oldest first: results go out in this order
        self.max_inflight = max(1, min(detector.max_inflight, spec.model.max_inflight))
        self.stats.batch_shape = detector.input_hw
        for name, ring_name in spec.rings.items():
            self.add(name, ring_name)
        self.fit_shape()

    def add(self, name: str, ring_name: str, detect_fps: float | None = None) -> None:
        fps = detect_fps or self.spec.detect_fps.get(name, 5.0)
        known = self.feeds.get(name)
        if known is not None and known.ring.name == ring_name:
            known.set_rate(fps)  # the same camera at another rate: its counts go on
            return
        if known is not None:
            self.remove(name)
        try:
            feed = Feed(name, ring_name, self.spec.start_seqs.get(name), fps, self.spec.model.conf)
        except FileNotFoundError:
            # A reload storm: a later reload removed the camera and unlinked its ring before this
            # add was read; its RemoveCamera follows. Nothing to attach, nothing to crash over.
            log.info("camera %s: its ring %s is already gone (removed by a later reload)", name, ring_name)
            return
        self.feeds[name] = feed
        self.stats.cameras[name] = feed.counts

    def remove(self, name: str) -> None:
        if name in self.feeds:
            self.drain()  # its frames in flight still need the ring, to hand their holds back
        feed = self.feeds.pop(name, None)
        if feed:
            feed.close()
            self.policy.forget(name)
            self.gate.forget(name)

    def close(self) -> None:
        self.drain(DRAIN_S)
        self._send_stats(force=True)
        for name in list(self.feeds):
            self.remove(name)

    def fit_shape(self) -> None:
        """Keep the batch shape fitted to the cameras (vistream.scheduler.shape) as they are added,
        removed or change resolution: re-warm the model for a new shape and ask every reader for it.
        Frames already letterboxed for the old one are dropped (`reshape`), never inferred. A camera
        whose resolution changed moves the shape only once the new fit held `reshape_after_s`
        (`ShapeFit`); until then its frames are letterboxed into the current shape."""
        sizes = {name: feed.ring.stream_size for name, feed in self.feeds.items()}
        det = self.detector
        want = det.fixed_input or self.shapes.decide(self.clock(), sizes)
        fitted = (want, tuple(feed.ring.name for feed in self.feeds.values()))
        if fitted == self._fitted:
            return
        self._fitted = fitted
        if want != det.input_hw:
            self.drain()  # no batch in flight while the buffers change
            old = det.input_hw
            started = self.clock()
            self.spec.beat[BEAT_BATCH_START] = started  # the supervisor times the warm-up as a batch
            try:
                det.reshape(*want)
                det.warmup()
            finally:
                self.spec.beat[BEAT_BATCH_START] = 0.0
            self.stats.reshapes += 1
            log.info(
                "batch shape %dx%d -> %dx%d (height x width) for cameras %s; model warm again after %.2fs",
                *old, *want, ", ".join(f"{n} {w}x{h}" for n, (w, h) in sizes.items() if w),
                self.clock() - started,
            )  # fmt: skip
        self.stats.batch_shape = want
        for feed in self.feeds.values():
            feed.ring.set_input_shape(*want)

    def run(self) -> None:
        while not self.stop:
            self._control()
            self.fit_shape()
            self.step()
            now = self.clock()
            self.spec.beat[BEAT_TIME] = now
            if now >= self._next_stats:
                self._send_stats()

    def _control(self) -> None:
        while True:
            try:
                msg = self.spec.control.get_nowait()
            except queue.Empty:
                return
            if isinstance(msg, AddCamera):
                self.add(msg.name, msg.ring_name, msg.detect_fps)
            elif isinstance(msg, RemoveCamera):
                self.remove(msg.name)

    def step(self) -> None:
        """One decision: drop what is stale, then run a batch or sleep until there may be one.

        Batches in flight that are done are handed over first; with `max_inflight` of them out,
        the oldest is waited for before the next is built."""
        self._complete(wait=len(self._inflight) >= self.max_inflight)
        now = self.clock()
        candidates, streaming = [], 0
        repeats: list[FrameResult] = []
        for feed in self.feeds.values():
            pending = feed.consumer.pending()
            if pending:
                skipped = self._gate(feed, pending[0], now)
                if skipped is not None:
                    repeats += skipped
                    continue
                feed.quiet = False
                candidates.append(Candidate(feed.name, *pending))
            # A camera whose frames motion gating skips is not waited for: its next one may be skipped too.
            streaming += feed.streaming and not feed.quiet
        if repeats:
            with contextlib.suppress(queue.Full):  # losing one only costs the event engine a still frame
                self.spec.results.put_nowait(BatchResult(repeats))
        decision = self.policy.decide(now, candidates, streaming)
        for c in decision.stale:
            feed = self.feeds[c.camera]
            feed.consumer.skip_to(c.seq)
            feed.counts.stale += 1
        if decision.batch and (why := self.detector.unavailable()) is not None:
            # The backend is down and not due for a reconnect yet: the frames are not even taken.
            self.stats.backend_down = why
            for c in decision.batch:
                self.feeds[c.camera].consumer.skip_to(c.seq)
                self.feeds[c.camera].counts.backend += 1
        elif decision.batch:
            self._run_batch([self.feeds[c.camera] for c in decision.batch])
            # One at a time (a local backend): its result is handed over in this step, as before.
            self._complete(wait=self.max_inflight == 1)
        else:
            self._wait(decision.wait_until, now)

    def _gate(self, feed: Feed, seq: int, now: float) -> list[FrameResult] | None:
        """None when frame `seq` goes on to batching; else it was skipped for want of motion, and
        the list holds what the main process gets instead: the camera's last result, repeated for
        this frame (the scene did not change, so neither did what is in it; tracks and events go
        on without the model)."""
        meta = feed.ring.meta_of(seq)
        hdr = feed.ring.header
        if meta is None or not self.gate.skip(
            feed.name,
            now,
            meta.motion,
            float(hdr["motion_min_area"]),
            float(hdr["motion_keepalive_s"]),
            float(hdr["active_until"]),
        ):
            return None
        feed.consumer.skip_to(seq)
        feed.counts.skipped_no_motion += 1
        feed.quiet = True
        if feed.last_found is None:
            return []
        # The tracker sees the repeat too, as it sees the same still frame with gating off. After a
        # gap instead, it would carry each track on at its old speed for up to its track buffer:
        # a walker who stopped as the stretch began can be missed there and get a new id.
        return [feed.result(meta, feed.last_found, repeated=True)]

    def _wait(self, until: float | None, now: float) -> None:
        timeout = IDLE_WAKE_S if until is None else min(IDLE_WAKE_S, max(0.0, until - now))
        if self.spec.wake.acquire(timeout=timeout):
            while self.spec.wake.acquire(False):  # one wake-up is enough for any number of frames
                pass

    def _run_batch(self, feeds: list[Feed]) -> None:
        """Take the frames into the detector's input buffer and submit them as one batch."""
        buf = self.detector.input_buffer
        started = self.clock()
        taken: list[tuple[Feed, FrameMeta]] = []
        for feed in feeds:
            # Held until the main process has handled the result (and rendered a snapshot, if any).
            meta = feed.consumer.take(buf[len(taken)], hold=True)
            if meta is None:
                continue
            if meta.input_hw != buf.shape[1:3]:  # letterboxed before the reader heard of the new shape
                feed.counts.reshape += 1
                continue
            taken.append((feed, meta))
        if not taken:
            return
        self.spec.beat[BEAT_BATCH_START] = started
        try:
            ticket = self.detector.submit(len(taken), self.spec.wake.release)
        except Exception as exc:
            self._failed(taken, exc)
            return
        finally:
            self.spec.beat[BEAT_BATCH_START] = 0.0
        self._inflight.append(InFlight(taken, ticket, started))

    def drain(self, timeout: float | None = None) -> None:
        """Hand over every batch in flight (each waited for at most `timeout` s)."""
        while self._inflight:
            self._complete(wait=True, timeout=timeout)

    def _complete(self, wait: bool, timeout: float | None = None) -> None:
        """Hand over the batches in flight that are done, oldest first; with `wait`, the oldest
        is waited for. A batch done before an older one waits for it: results go out in order."""
        while self._inflight and (wait or self._inflight[0].ticket.done()):
            wait = False
            batch = self._inflight.popleft()
            self.spec.beat[BEAT_BATCH_START] = batch.started
            try:
                boxes = self.detector.collect(batch.ticket, timeout)
            except Exception as exc:
                self._failed(batch.taken, exc)
                continue
            finally:
                self.spec.beat[BEAT_BATCH_START] = 0.0
            self._hand_over(batch, boxes)

    def _failed(self, taken: list[tuple[Feed, FrameMeta]], exc: Exception) -> None:
        """A batch that produced no boxes: its frames are counted and their holds given back.

        A remote backend that was down or did not answer drops them (reason `backend`) and is
        not this process's failure; anything else counts toward MAX_CONSECUTIVE_FAILURES."""
        for feed, meta in taken:
            if feed.name in self.feeds:
                feed.ring.unhold(meta.seq)
        if isinstance(exc, BackendUnavailable):
            self.stats.backend_down = str(exc)
            for feed, _ in taken:
                feed.counts.backend += 1
            log.debug("batch of %d dropped: %s", len(taken), exc)
            return
        self._failures += 1
        self.stats.inference_errors += 1
        for feed, _ in taken:
            feed.counts.failed += 1
        log.error("inference failed on a batch of %d (%d in a row)", len(taken), self._failures, exc_info=exc)
        if self._failures >= MAX_CONSECUTIVE_FAILURES:
            raise exc

    def _hand_over(self, batch: InFlight, boxes: list[Any]) -> None:
        """Count a collected batch, map and track its boxes, and queue its results to the main process."""
        self._failures = 0
        self.stats.backend_down = ""
        started, taken = batch.started, batch.taken
        ended = self.clock()
        elapsed = ended - started
        self.policy.observe(elapsed)
        frames = []
        for (feed, meta), found in zip(taken, boxes, strict=True):
            feed.counts.inferred += 1
            self.gate.inferred(feed.name, started)
            self.stats.frame_age_s.observe(started - meta.captured_mono)
            self.stats.result_age_s.observe(ended - meta.captured_mono)
            if ended - meta.captured_mono > self.policy.max_age:
                feed.counts.late += 1
            feed.last_found = camera_detections(meta, found)
            frames.append(feed.result(meta, feed.last_found))
        self.stats.batch_size.observe(len(taken))
        self.stats.inference_s.observe(elapsed)
        try:
            self.spec.results.put_nowait(BatchResult(frames))
        except queue.Full:
            self.stats.results_overflow += len(frames)
            for feed, meta in taken:
                feed.ring.unhold(meta.seq)

    def _send_stats(self, force: bool = False) -> None:
        self._next_stats = self.clock() + STATS_INTERVAL_S
        for feed in self.feeds.values():
            feed.counts.overwritten, feed.counts.torn = feed.consumer.overwritten, feed.consumer.torn
            self.stats.positions[feed.name] = feed.consumer.last_seq
        # A copy: the queue pickles in a background thread while this one keeps counting.
        snapshot = copy.deepcopy(self.stats)
        with contextlib.suppress(queue.Full):  # cumulative: the next snapshot carries these figures too
            self.spec.stats.put(snapshot, block=force, timeout=1.0 if force else None)


def camera_detections(meta: FrameMeta, found: Any) -> list[Detection]:
    """The detector's boxes of frame `meta` (model-input pixels) as detections in camera pixels."""
    cam_boxes = boxes_to_camera(found, meta.scale, meta.pad_x, meta.pad_y, meta.width, meta.height)
    return [
        (int(row[5]), float(row[4]), float(b[0]), float(b[1]), float(b[2]), float(b[3]))
        for row, b in zip(found, cam_boxes, strict=True)
    ]
