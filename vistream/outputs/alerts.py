"""From what the event engine found in a frame to outbox rows: events, active flags, counters, snapshots.

Everything here is written to the outbox (SQLite) before it is published, in one transaction per
frame, in the order a subscriber should see it: the snapshot of an event's start before the start
itself, so the retained picture is already there when the event arrives. The state that must
survive a restart (line counters, events still open) is written in that same transaction.

After a restart the counters go on from their stored values, and events that were open when the
daemon stopped (or was killed) are ended with `reason: "restart"`: the new process cannot know
whether their objects are still there, and a subscriber must not wait forever for an `end`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from vistream.config.models import Config, unknown_label
from vistream.events.engine import CounterKey, EventEngine, FrameOutcome, SnapshotRequest, TrackedObject
from vistream.events.rules import Event
from vistream.outputs.outbox import Message, Outbox
from vistream.outputs.snapshot import box_label, snapshot_jpeg
from vistream.ring.shm import FrameRing
from vistream.scheduler.messages import FrameResult
from vistream.sources.motion import TrackActivity

log = logging.getLogger(__name__)

RECENT_EVENTS = 50  # kept for the demo's table and the status page

COUNTER_KEY = "counter/{}/{}/{}"
OPEN_KEY = "open/{}"


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
    then `process` and `tick` are called from the result thread only.
    """

    def __init__(
        self,
        cfg: Config,
        outbox: Outbox | None,
        ring_of: Callable[[str], FrameRing | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.engine: EventEngine | None = None
        self.prefix = cfg.mqtt.topic_prefix
        self.outbox = outbox
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
        self._index(cfg)

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
            self.engine = EventEngine(self.cfg, names, self._restored_counters())
            self._start(self.engine.counters)
        else:  # a restarted scheduler (perhaps a reloaded model): keep tracks, events and counters
            self.engine.names = names
        return []

    def reconfigure(self, cfg: Config) -> None:
        """Take a reloaded config; the result thread applies it before its next frame (the engine
        is that thread's alone)."""
        with self._lock:
            self._new_cfg = cfg

    def _apply_reload(self) -> None:
        with self._lock:
            cfg, self._new_cfg = self._new_cfg, None
        if cfg is None:
            return
        self.cfg = cfg
        self._index(cfg)
        if self.engine is None:
            return
        ended = self.engine.reconfigure(cfg)
        self._queue(ended)
        if self.outbox is not None:  # every state topic of the new config gets its value
            flags = [self._active(c, r, on) for c, r, on in self.engine.active_states()]
            counts = [self._counter(*key, value) for key, value in self.engine.counters.items()]
            self.outbox.add_many(flags + counts)
        with self._lock:
            self.counters = self.engine.counters

    def process(self, frame: FrameResult) -> list[TrackedObject] | None:
        """Track and evaluate one frame; its objects with track ids (None before `bind`)."""
        self._apply_reload()
        if self.engine is None:
            return None
        outcome = self.engine.process(frame)
        self._queue(outcome)
        if not frame.repeated:
            self._moving(frame, outcome.objects)
        return outcome.objects

    def _moving(self, frame: FrameResult, objects: list[TrackedObject]) -> None:
        """A track that moved keeps the camera's frames inferred for a while, motion score or not."""
        boxes = [(o.track_id, o.box) for o in objects]
        until = self.activity.update(frame.camera, boxes, frame.width, frame.height, frame.captured_mono)
        ring = self._ring_of(frame.camera) if until is not None else None
        if ring is not None:
            ring.header["active_until"] = until

    def tick(self, now_mono: float) -> None:
        """End events of cameras whose frames stopped coming."""
        self._apply_reload()
        if self.engine is not None:
            self._queue(self.engine.tick(now_mono))

    def _restored_counters(self) -> dict[CounterKey, int]:
        """The line counters as the last run left them (0 for lines that are new)."""
        out: dict[CounterKey, int] = {}
        for key in self._lines:
            value = self.outbox.get_state(COUNTER_KEY.format(*key)) if self.outbox else None
            out[key] = int(value) if value is not None else 0
        return out

    def _start(self, counters: dict[CounterKey, int]) -> None:
        """Close what a previous run left open, and give every state topic a value.

        Active flags start OFF (no event runs yet) and counters at their restored values, both
        retained, so a subscriber (or Home Assistant) that connects now sees the truth.
        """
        self.counters = dict(counters)
        if self.outbox is None:
            return
        messages: list[Message] = []
        state: dict[str, str | None] = {}
        now = round(self._clock(), 3)
        for key, text in self.outbox.states(OPEN_KEY.format("")).items():
            doc = json.loads(text) | {"type": "end", "ended_at": now, "reason": "restart"}
            messages += self._event_messages(doc)
            state[key] = None
        if messages:
            log.warning("ended %d event(s) left open by the previous run", len(state))
        for camera, rule in self._rules:
            messages.append(self._active(camera, rule, False))
        for (camera, line, direction), value in self.counters.items():
            messages.append(self._counter(camera, line, direction, value))
        self.outbox.add_many(messages, state=state)

    def _queue(self, outcome: FrameOutcome) -> None:
        """Queue what one frame (or a tick) caused, snapshots first, in one transaction."""
        for ev in outcome.events:
            if ev.type != "update":  # one line per event start and end; updates would flood
                log.info("camera %s: event %s: %s", ev.camera, ev.type, describe(ev),
                         extra={"camera": ev.camera, "rule": ev.rule, "event_id": ev.id})  # fmt: skip
        if self.outbox is None or not (outcome.events or outcome.active or outcome.counters):
            return
        messages: list[Message] = []
        state: dict[str, str | None] = {}
        for req in outcome.snapshots:
            snap = self._snapshot(req)
            if snap is not None:
                messages.append(snap)
        for ev in outcome.events:
            doc = self._payload(ev)
            messages += self._event_messages(doc)
            state[OPEN_KEY.format(ev.id)] = None if ev.type == "end" else json.dumps(doc)
            if ev.type == "end":
                self._no_snapshot.discard(ev.id)
        for camera, rule, on in outcome.active:
            messages.append(self._active(camera, rule, on))
        for camera, line, direction, value in outcome.counters:
            messages.append(self._counter(camera, line, direction, value))
            state[COUNTER_KEY.format(camera, line, direction)] = str(value)
        self.outbox.add_many(messages, state=state)
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

    def _payload(self, ev: Event) -> dict[str, Any]:
        """The event's JSON; `snapshot` is null when its start frame could not be rendered."""
        doc = ev.payload()
        if ev.id in self._no_snapshot:
            doc["snapshot"] = None  # the retained picture on that topic belongs to another event
        return doc

    def _snapshot(self, req: SnapshotRequest) -> Message | None:
        """The JPEG of the frame that started the event; None (and the event says so) when it is gone."""
        ring = self._ring_of(req.camera)
        jpeg = None
        if ring is not None:
            boxes = [(req.box, box_label(req.label or "", req.confidence))] if req.box is not None else []
            jpeg = snapshot_jpeg(ring, req.seq, boxes)
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
