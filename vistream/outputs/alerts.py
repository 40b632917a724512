"""From what the event engine found in a frame to outbox rows: events, active flags, counters, snapshots.

Everything here is written to the outbox (SQLite) before it is published, in the order a subscriber
should see it: the snapshot of an event's start before the start itself, so the retained picture is
already there when the event arrives. The state that must survive a restart (line counters, events
still open, when their objects were last seen) is written in the same transaction as the messages.
The writing itself is the `OutboxWriter`'s thread (writer.py): the results thread only hands each
frame's outcome over, and a write that fails is kept and tried again, in order.

After a restart the counters go on from their stored values, and events that were open when the
daemon stopped (or was killed) are ended with `reason: "restart"` and the time their object was
last seen as `ended_at` (to within LAST_SEEN_EVERY_S): the new process cannot know whether their
objects are still there, and a subscriber must not wait forever for an `end`. An outbox that a
reload opens late, and a line that a reload adds, get the same treatment as a restart.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable
from typing import Any

from vistream.config.models import Config, unknown_label
from vistream.events.engine import CounterKey, EventEngine, FrameOutcome, SnapshotRequest, TrackedObject
from vistream.events.rules import Event
from vistream.outputs.outbox import Message, Outbox
from vistream.outputs.snapshot import box_label, read_snapshot, render_snapshot
from vistream.outputs.writer import Entry, OutboxWriter
from vistream.ring.lifetime import RingAccess
from vistream.scheduler.messages import FrameResult
from vistream.sources.motion import TrackActivity

log = logging.getLogger(__name__)

RECENT_EVENTS = 50  # kept for the demo's table and the status page

COUNTER_KEY = "counter/{}/{}/{}"
OPEN_KEY = "open/{}"
# How often the open events' `last_seen` is saved (their end at a restart is that late at most).
LAST_SEEN_EVERY_S = 5.0


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def describe(ev: Event) -> str:
    """An event for its log line: `rule R, person #12 in zone Z, 8.2s (id ...)`."""
    obj = ev.label or "object"
    if ev.track_id is not None:
        obj += f" #{ev.track_id}"
    if ev.line is not None:
        what = f"{obj} crossing line {ev.line} ({ev.direction}), {ev.count or 1} crossing(s)"
    elif ev.count is not None:
        what = f"{ev.count} x {ev.label or 'objects'}"
    else:
        what = obj
    if ev.zone is not None and ev.line is None:
        what += f" in zone {ev.zone}"
    took = f", {ev.ended_at - ev.started_at:.1f}s" if ev.ended_at is not None else ""
    return f"rule {ev.rule}, {what}{took} (id {ev.id})"


class Alerts:
    """Tracks and evaluates rules on every result (the event engine), queues what that causes.

    One per daemon. `bind(names)` once the model is loaded (the engine needs its class names);
    then `process` and `tick` are called from the result thread only. `reconfigure` (another
    thread: a reload) hands over a new config and an outbox opened late (the first rules): the
    result thread takes them up before its next frame. `stop()` writes what is still queued.
    """

    def __init__(
        self,
        cfg: Config,
        outbox: Outbox | None,
        ring_of: RingAccess,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.engine: EventEngine | None = None
        self.prefix = cfg.mqtt.topic_prefix
        self._outbox = outbox
        self.writer: OutboxWriter | None = None  # made on the result thread, for `_outbox`
        self._ring_of = ring_of
        self._clock = clock
        self._no_snapshot: set[str] = set()  # events whose start frame was gone from the ring
        self.activity = TrackActivity()  # moving tracks, for motion gating
        self._lock = threading.Lock()  # the figures below are read from other threads (metrics, demo)
        self._new_cfg: Config | None = None  # a reloaded config for the result thread to apply
        self.events_total: Counter[tuple[str, str]] = Counter()  # (camera, rule) -> events started
        self.snapshots = 0
        self.snapshots_lost = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self.counters: dict[CounterKey, int] = {}
        self._open: dict[str, dict[str, Any]] = {}  # open events' state docs (with last_seen)
        self._seen_saved = float("-inf")  # monotonic time last_seen was last saved
        self._index(cfg)

    @property
    def outbox(self) -> Outbox | None:
        return self._outbox

    def _attach(self) -> bool:
        """Start writing to the outbox if it is new; True if it is (result thread)."""
        outbox = self._outbox
        if outbox is None or (self.writer is not None and self.writer.outbox is outbox):
            return False
        self.writer = OutboxWriter(outbox, OPEN_KEY.format)
        self.writer.start()
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until what was queued is in the outbox (tests, benchmarks); False on timeout."""
        return self.writer.flush(timeout) if self.writer is not None else True

    def stop(self, timeout: float = 1.0) -> None:
        """Write what is queued (within `timeout`) and stop the writer: after the result thread stopped."""
        if self.writer is not None:
            self.writer.stop(timeout)

    def _index(self, cfg: Config) -> None:
        """The (camera, rule) pairs and line counters of `cfg`."""
        self._rules = [(cam, rule.name) for rule in cfg.alerts for cam in cfg.rule_cameras(rule)]
        self._lines = [
            (cam.name, line, d) for cam in cfg.enabled_cameras for line in cam.lines for d in ("in", "out")
        ]

    def bind(self, names: dict[int, str]) -> list[str]:
        """Start the engine for a model with these class names; returns problems with the rules' labels.

        Labels that config checks could not verify (a custom model) are checked here, against the
        model itself.
        """
        problems = [
            f"alerts[{i}].labels[{j}]: {unknown_label(label, list(names.values()))}"
            for i, rule in enumerate(self.cfg.alerts)
            for j, label in enumerate(rule.labels or [])
            if label not in names.values()
        ]
        if problems:
            return problems
        if self.engine is None:
            self._attach()
            self.engine = EventEngine(self.cfg, names, self._restored_counters())
            self._start(self.engine.counters)
        else:  # a restarted scheduler (perhaps a reloaded model): keep tracks, events and counters
            self.engine.names = names
        return []

    def reconfigure(self, cfg: Config, outbox: Outbox | None = None) -> None:
        """Take a reloaded config, and an outbox opened late (by a reload: the first rules); the
        result thread applies them before its next frame (the engine and writer are its alone)."""
        with self._lock:
            self._new_cfg = cfg
            if outbox is not None:
                self._outbox = outbox

    def _apply_reload(self) -> None:
        with self._lock:
            cfg, self._new_cfg = self._new_cfg, None
        if self.engine is not None and self._attach():  # an outbox opened late: as after a restart
            self._end_previous_run()
        if cfg is None:
            return
        self.cfg = cfg
        self._index(cfg)
        if self.engine is None:
            return
        # Lines new to the engine go on from their stored counts, as they would after a restart.
        ended = self.engine.reconfigure(cfg, self._restored_counters())
        self._queue(ended)
        if self.writer is not None:  # every state topic of the new config gets its value
            flags = [self._active(c, r, on) for c, r, on in self.engine.active_states()]
            counts = [self._counter(*key, value) for key, value in self.engine.counters.items()]
            self.writer.put([Entry(m) for m in flags + counts])
        with self._lock:
            self.counters = self.engine.counters

    def process(self, frame: FrameResult) -> list[TrackedObject] | None:
        """Track and evaluate one frame; its objects with track ids (None before `bind`)."""
        self._apply_reload()
        if self.engine is None:
            return None
        outcome = self.engine.process(frame)
        self._queue(outcome, frame.captured_at)
        if not frame.repeated:
            self._moving(frame, outcome)
        return outcome.objects

    def _moving(self, frame: FrameResult, outcome: FrameOutcome) -> None:
        """A track that moved keeps the camera's frames inferred for a while, motion score or not.
        Tracks are keyed with their tracker's generation: a rebuilt one numbers from 1 again."""
        boxes: list[tuple[Hashable | None, tuple[float, float, float, float]]] = [
            (None if o.track_id is None else (outcome.tracker, o.track_id), o.box) for o in outcome.objects
        ]
        until = self.activity.update(frame.camera, boxes, frame.width, frame.height, frame.captured_mono)
        if until is None:
            return
        with self._ring_of(frame.camera) as ring:
            if ring is not None:
                ring.header["active_until"] = until

    def tick(self, now_mono: float) -> None:
        """End events of cameras whose frames stopped coming (`now_mono`: up to when every frame
        was read), and save when the objects of open events were last seen, now and then."""
        self._apply_reload()
        if self.engine is None:
            return
        self._queue(self.engine.tick(now_mono))
        if now_mono - self._seen_saved >= LAST_SEEN_EVERY_S:
            self._seen_saved = now_mono
            self._save_last_seen()

    def _save_last_seen(self) -> None:
        """Open events whose object was seen since their state was saved get `last_seen` saved."""
        assert self.engine is not None
        state: dict[str, str | None] = {}
        for event_id, seen in self.engine.last_seen().items():
            doc = self._open.get(event_id)
            if doc is not None and doc["last_seen"] != round(seen, 3):
                doc["last_seen"] = round(seen, 3)
                state[OPEN_KEY.format(event_id)] = json.dumps(doc)
        if state and self.writer is not None:
            self.writer.put([], state)

    def _restored_counters(self) -> dict[CounterKey, int]:
        """The line counters as the last run (or an earlier config) left them (0 for lines never seen)."""
        out: dict[CounterKey, int] = {}
        for key in self._lines:
            value = self.writer.get_state(COUNTER_KEY.format(*key)) if self.writer else None
            out[key] = int(value) if value is not None else 0
        return out

    def _start(self, counters: dict[CounterKey, int]) -> None:
        """Close what a previous run left open, and give every state topic a value.

        Active flags start OFF (no event runs yet) and counters at their restored values, both
        retained, so a subscriber (or Home Assistant) that connects now sees the truth.
        """
        self.counters = dict(counters)
        if self.writer is None:
            return
        self._end_previous_run()
        messages: list[Message] = []
        for camera, rule in self._rules:
            messages.append(self._active(camera, rule, False))
        for (camera, line, direction), value in self.counters.items():
            messages.append(self._counter(camera, line, direction, value))
        self.writer.put([Entry(m) for m in messages])

    def _end_previous_run(self) -> None:
        """End the events a previous run left open, as of when their objects were last seen."""
        assert self.writer is not None
        entries: list[Entry] = []
        state: dict[str, str | None] = {}
        now = round(self._clock(), 3)
        for key, text in self.writer.states(OPEN_KEY.format("")).items():
            doc = json.loads(text)
            # Saved before last_seen was: the restart's time is all that is known.
            ended = doc.pop("last_seen", now)
            doc |= {"type": "end", "ended_at": ended, "reason": "restart"}
            entries += [Entry(m, (doc["id"], "end")) for m in self._event_messages(doc)]
            state[key] = None
        if entries:
            log.warning("ended %d event(s) left open by the previous run", len(state))
            self.writer.put(entries, state)

    def _queue(self, outcome: FrameOutcome, seen_at: float | None = None) -> None:
        """Queue what one frame (or a tick) caused, snapshots first, as one transaction. `seen_at`:
        the frame's capture time, when the objects of the events it updates were last seen."""
        for ev in outcome.events:
            if ev.type != "update":  # one line per event start and end; updates would flood
                log.info("camera %s: event %s: %s", ev.camera, ev.type, describe(ev),
                         extra={"camera": ev.camera, "rule": ev.rule, "event_id": ev.id})  # fmt: skip
        if self.writer is None or not (outcome.events or outcome.active or outcome.counters):
            return
        entries: list[Entry] = []
        state: dict[str, str | None] = {}
        for req in outcome.snapshots:
            snap = self._snapshot(req)
            if snap is not None:
                entries.append(Entry(snap, (req.event_id, "snapshot")))
        for ev in outcome.events:
            doc = self._payload(ev)
            entries += [Entry(m, (ev.id, ev.type)) for m in self._event_messages(doc)]
            key = OPEN_KEY.format(ev.id)
            if ev.type == "end":
                self._no_snapshot.discard(ev.id)
                self._open.pop(ev.id, None)
                state[key] = None
            else:
                seen = ev.started_at if ev.type == "start" or seen_at is None else seen_at
                self._open[ev.id] = doc | {"last_seen": round(seen, 3)}
                state[key] = json.dumps(self._open[ev.id])
        for camera, rule, on in outcome.active:
            entries.append(Entry(self._active(camera, rule, on)))
        for camera, line, direction, value in outcome.counters:
            entries.append(Entry(self._counter(camera, line, direction, value)))
            state[COUNTER_KEY.format(camera, line, direction)] = str(value)
        self.writer.put(entries, state)
        with self._lock:
            for ev in outcome.events:
                if ev.type == "start":
                    self.events_total[(ev.camera, ev.rule)] += 1
                self.recent.append(ev.payload())
            for camera, line, direction, value in outcome.counters:
                self.counters[(camera, line, direction)] = value

    def figures(self) -> tuple[dict[tuple[str, str], int], dict[CounterKey, int], list[dict[str, Any]]]:
        """Copies of events started per (camera, rule), the line counters and the recent events."""
        with self._lock:
            return dict(self.events_total), dict(self.counters), list(self.recent)

    def unwritten(self) -> tuple[int, dict[str, int]]:
        """Messages handed over and not in the outbox yet, and those dropped unwritten, by reason
        (superseded, update, event: see writer.py)."""
        writer = self.writer
        if writer is None:
            return 0, {}
        return writer.unwritten, dict(writer.dropped)

    def _payload(self, ev: Event) -> dict[str, Any]:
        """The event's JSON; `snapshot` is null when its start frame could not be rendered."""
        doc = ev.payload()
        if ev.id in self._no_snapshot:
            doc["snapshot"] = None  # the retained picture on that topic belongs to another event
        return doc

    def _snapshot(self, req: SnapshotRequest) -> Message | None:
        """The JPEG of the frame that started the event; None (and the event says so) when it is gone."""
        jpeg = None
        with self._ring_of(req.camera) as ring:  # a lease: the camera may be removed meanwhile
            got = read_snapshot(ring, req.seq) if ring is not None else None
        if got is not None:
            boxes = [(req.box, box_label(req.label or "", req.confidence))] if req.box is not None else []
            jpeg = render_snapshot(*got, boxes=boxes)
        if jpeg is None:
            self.snapshots_lost += 1
            self._no_snapshot.add(req.event_id)
            log.warning("camera %s: frame %d was gone before its snapshot was taken", req.camera, req.seq,
                        extra={"camera": req.camera})  # fmt: skip
            return None
        self.snapshots += 1
        topic = f"{self.prefix}/{req.camera}/{req.rule}/snapshot"
        return Message(req.camera, topic, jpeg, retain=True, kind="snapshot")

    def _event_messages(self, doc: dict[str, Any]) -> list[Message]:
        payload, camera = _json(doc), doc["camera"]
        return [
            Message(camera, f"{self.prefix}/events", payload, kind="event", event_id=doc["id"]),
            Message(camera, f"{self.prefix}/{camera}/events", payload, kind="event", event_id=doc["id"]),
        ]

    def _active(self, camera: str, rule: str, on: bool) -> Message:
        topic = f"{self.prefix}/{camera}/{rule}/active"
        return Message(camera, topic, "ON" if on else "OFF", retain=True, kind="active")

    def _counter(self, camera: str, line: str, direction: str, value: int) -> Message:
        topic = f"{self.prefix}/{camera}/{line}/{direction}/count"
        return Message(camera, topic, str(value), retain=True, kind="counter")
