"""The bounded hand-off from the scheduler process to MQTT.

A thread of the main process takes results from the scheduler's queue, runs the
event engine on them (tracking, zones, lines, rules: results arrive here in
capture order per camera), publishes the detections and hands events to the
outbox. The frame's hold on its ring slot lasts until then, so a snapshot can
show the very frame an event started on; the newest inferred frame of each
camera stays held until the next result of that camera arrives, with what was
found in it, for the status page (`latest`). The queue is bounded on the
scheduler's side (`put_nowait`, overflow counted there), so a slow or absent
broker never reaches back into the scheduler. Nothing on this thread waits for a
disk: the outbox is written by its own thread (outputs/writer.py).

Events of cameras whose frames stopped coming are ended by the clock (`tick`),
but only up to where the queue has been read: after a stall, the frames still
queued may show the object, and they are read before anything is ended for
want of frames.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from vistream.events.engine import TrackedObject
from vistream.ops.logs import camera
from vistream.ops.stats import SECONDS_BUCKETS, Buckets
from vistream.outputs.alerts import Alerts
from vistream.outputs.mqtt import MqttPublisher
from vistream.outputs.payload import detections_payload
from vistream.scheduler.messages import BatchResult, FrameResult

log = logging.getLogger(__name__)

TICK_S = 0.5  # how often events of cameras without frames are checked for their end
# The latest frame of a camera whose results pause (motion gating, a scheduler restart) is given back
# before the ring's HOLD_TTL_S (5 s) would count its hold as expired; the status page keeps its picture.
KEEP_S = 4.0


@dataclass(frozen=True)
class LatestFrame:
    """A camera's newest inferred frame (held in its ring slot for a while) and what was found in it."""

    camera: str
    seq: int
    captured_at: float
    captured_mono: float
    width: int
    height: int
    objects: tuple[TrackedObject, ...]
    held: bool = True  # False once released (KEEP_S): the reader may have overwritten it since


class ResultPump:
    def __init__(
        self,
        publisher: MqttPublisher,
        source: Callable[[], Any],
        on_control: Callable[[Any], None],
        alerts: Alerts | None = None,
        release: Callable[[str, int], None] = lambda camera, seq: None,
    ) -> None:
        """`source()` returns the current scheduler's results queue (it changes when
        the scheduler is restarted); messages that are not results go to `on_control`.
        `release(camera, seq)` gives a frame's ring slot back once its result is handled."""
        self.publisher = publisher
        self._source = source
        self._on_control = on_control
        self.alerts = alerts
        self._release = release
        self.alert_errors = 0  # frames whose event processing raised (their detections still go out)
        self._next_tick = 0.0
        self._caught_up = True  # the queue was empty when last read
        self._read_upto = float("-inf")  # the newest capture time (monotonic) read from it
        self.names: dict[int, str] = {}
        self.latency = Buckets(SECONDS_BUCKETS)  # capture -> publish
        self.published: Counter[str] = Counter()  # camera -> detection messages handed to MQTT
        self.last_objects: dict[str, Counter[str]] = {}
        self._latest: dict[str, LatestFrame] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self.beat = time.monotonic()  # the thread's last turn (at least every 0.1 s while it is well)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread, or a new one after it died (the daemon's supervisor does that)."""
        self.beat = time.monotonic()
        self._thread = threading.Thread(target=self._main, name="results", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def stop(self, timeout: float = 1.0) -> None:
        """Publish what is still queued (up to `timeout`), write what that caused (as long
        again), then stop."""
        self._stopping = True
        if self._thread:
            self._thread.join(timeout)
        if self.alerts is not None:
            self.alerts.stop(timeout)

    def snapshot(self) -> tuple[Buckets, dict[str, int], dict[str, Counter[str]]]:
        with self._lock:
            return (
                self.latency.copy(),
                dict(self.published),
                {k: Counter(v) for k, v in self.last_objects.items()},
            )

    def latest(self, camera: str) -> LatestFrame | None:
        """The camera's newest inferred frame; its slot stays held until the next one (or KEEP_S)."""
        with self._lock:
            return self._latest.get(camera)

    def _main(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("the result pump crashed")  # the supervisor sees it dead and starts another

    def _run(self) -> None:
        while True:
            self.beat = time.monotonic()
            self._tick()
            q = self._source()
            try:
                msg = q.get(timeout=0.1) if q is not None else None
            except queue.Empty:
                msg = None
            except (EOFError, OSError, ValueError):  # the queue of a scheduler that was replaced
                msg = None
                time.sleep(0.1)
            self._caught_up = msg is None
            if msg is None:
                if self._stopping:
                    return
                continue
            if isinstance(msg, BatchResult):
                self._publish(msg)
            else:
                self._on_control(msg)

    def _tick(self) -> None:
        now = time.monotonic()
        if now < self._next_tick:
            return
        self._next_tick = now + TICK_S
        self._let_go(now)
        if self.alerts is None:
            return
        # Behind (frames queued): events end by the capture time of what was read, not by now.
        upto = min(now, self._read_upto) if self._behind() else now
        try:
            self.alerts.tick(upto)
        except Exception:
            self.alert_errors += 1
            log.exception("ending events of silent cameras failed")

    def _behind(self) -> bool:
        """Are results waiting? The last read found some, or some came since it found none."""
        if not self._caught_up:
            return True
        q = self._source()
        try:
            return q is not None and not q.empty()
        except (EOFError, OSError, ValueError):  # the queue of a scheduler that was replaced
            return False

    def _events(self, frame: FrameResult) -> Any:
        """Track and evaluate rules; a failure there must not stop detections, so it is logged and counted."""
        try:
            return self.alerts.process(frame) if self.alerts is not None else None
        except Exception:
            self.alert_errors += 1
            log.exception(
                "camera %s: event processing failed on frame %d",
                frame.camera,
                frame.seq,
                extra=camera(frame.camera),
            )
            return None

    def _keep(self, frame: FrameResult, objects: list[TrackedObject] | None) -> None:
        """Keep this frame held as the camera's latest and release the one it replaces."""
        if objects is None:
            objects = [
                TrackedObject(self.names.get(cls, str(cls)), cls, conf, (x1, y1, x2, y2), None)
                for cls, conf, x1, y1, x2, y2 in frame.detections
            ]
        kept = LatestFrame(
            frame.camera,
            frame.seq,
            frame.captured_at,
            frame.captured_mono,
            frame.width,
            frame.height,
            tuple(objects),
        )
        with self._lock:
            previous = self._latest.get(frame.camera)
            self._latest[frame.camera] = kept
        # A camera removed and added again has a new ring whose seqs start over: its old frame is gone.
        if previous is not None and previous.held and previous.seq < frame.seq:
            self._release(frame.camera, previous.seq)

    def _let_go(self, now: float) -> None:
        """Release the latest frames held longer than KEEP_S."""
        with self._lock:
            old = [f for f in self._latest.values() if f.held and now - f.captured_mono > KEEP_S]
            for f in old:
                self._latest[f.camera] = replace(f, held=False)
        for f in old:
            self._release(f.camera, f.seq)

    def _publish(self, batch: BatchResult) -> None:
        for frame in batch.frames:
            self._read_upto = max(self._read_upto, frame.captured_mono)
            if frame.repeated:  # skipped by motion gating: the event engine sees the scene go on, nobody else
                self._events(frame)
                continue
            objects = self._events(frame)
            self._keep(frame, objects)
            now = time.time()
            payload = detections_payload(frame, self.names, now, objects)
            topic = f"{self.publisher.prefix}/{frame.camera}/detections"
            sent = self.publisher.publish(topic, payload, kind="detections")
            with self._lock:
                if sent:
                    self.published[frame.camera] += 1
                    self.latency.observe(now - frame.captured_at)
                self.last_objects[frame.camera] = Counter(
                    self.names.get(d[0], str(d[0])) for d in frame.detections
                )
