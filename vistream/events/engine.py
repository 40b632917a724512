"""The event engine: one call per inferred frame -> tracked objects, events, active flags, counters.

It runs in the main process, where results arrive in capture order per camera. Per camera it
keeps a `CameraTracker`, the camera's zones and lines, and one rule state machine per alert rule
that applies there. It is pure apart from the tracker: clocks come from the frames (`captured_mono`
for durations, `captured_at` for payloads) and from the caller (`tick`, with `time.monotonic()`,
the clock `captured_mono` is taken on). Not thread-safe: call `process` and `tick` from one thread.

A tracked object is placed (in zones, relative to lines) by its track's box, the Kalman estimate
ByteTrack has after matching the detection (`TrackedObject.place`); what is published is the
detection's own box.

Line counters `{camera}/{line}/{direction}` count every crossing, in and out, by a tracked object
whose label matches a rule on that line (the union of their labels; any label when one of them
names none or no rule uses the line). They start from the values given at construction (restored
from the state directory), so a counter never goes back to 0 because the daemon restarted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vistream.config.models import AlertRule, CameraConfig, Config
from vistream.events.geometry import XY, Box, Direction, Line, LineCrossings, TrackKey, Zone, anchor
from vistream.events.rules import Clock, Event, RuleMachine, Seen, accepts, machine_for, new_event_id
from vistream.scheduler.messages import FrameResult

CounterKey = tuple[str, str, str]  # camera, line, direction


@dataclass(frozen=True)
class TrackedObject:
    """One detection of a frame with the id of its track (None while no confirmed track holds it).

    `box` is the detection's, what the model found (the payload and snapshots show it);
    `track_box` its track's Kalman estimate after the match, when the tracker gave one: zones and
    lines place the object by that (`place`), it does not jitter with every detection."""

    label: str
    class_id: int
    confidence: float
    box: Box
    track_id: int | None
    track_box: Box | None = None

    @property
    def place(self) -> Box:
        """The box that says where the object is: its track's, else its own."""
        return self.track_box if self.track_box is not None else self.box

    def payload(self) -> dict[str, Any]:
        """The object as the detections payload shows it."""
        return {
            "label": self.label,
            "class_id": self.class_id,
            "confidence": round(self.confidence, 3),
            "box": [round(v, 1) for v in self.box],
            "track_id": self.track_id,
        }


@dataclass(frozen=True)
class SnapshotRequest:
    """Render frame `seq` of `camera` with this box and label: the picture of an event's start."""

    camera: str
    rule: str
    seq: int
    event_id: str
    box: Box | None
    label: str | None
    confidence: float


@dataclass
class FrameOutcome:
    """What one frame (or a tick) caused."""

    objects: list[TrackedObject] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    active: list[tuple[str, str, bool]] = field(default_factory=list)  # camera, rule, now active
    counters: list[tuple[str, str, str, int]] = field(default_factory=list)  # camera, line, dir, value
    snapshots: list[SnapshotRequest] = field(default_factory=list)
    tracker: int = 0  # the generation of the tracker that numbered the objects' track ids

    def add_events(self, machine: RuleMachine, events: list[Event], was_active: bool) -> None:
        self.events += events
        self.snapshots += [_snapshot(ev) for ev in events if ev.type == "start"]
        if machine.active != was_active:
            self.active.append((machine.camera, machine.rule.name, machine.active))


def _snapshot(ev: Event) -> SnapshotRequest:
    return SnapshotRequest(ev.camera, ev.rule, ev.seq, ev.id, ev.box, ev.label, ev.max_confidence)


@dataclass(frozen=True)
class _Tracks:
    """What tracking made of one frame's detections (see `_Camera.track`)."""

    ids: list[int | None]
    boxes: list[Box | None]
    removed: list[int]
    generation: int


class _Camera:
    """One camera's tracker, geometry and rules."""

    def __init__(
        self, cam: CameraConfig, machines: list[RuleMachine], line_labels: dict[str, set[str] | None]
    ):
        self.name = cam.name
        self.tracker: Any = None  # made on first use: frames tracked in the scheduler need none
        self.zones = {name: Zone(name, points) for name, points in cam.zones.items()}
        self.lines = {name: LineCrossings(Line(name, p1, p2)) for name, (p1, p2) in cam.lines.items()}
        self.line_labels = line_labels
        self.machines = machines
        self.config = cam

    def track(self, frame: FrameResult) -> _Tracks:
        """Track ids and boxes of the frame's detections, the tracks given up and the generation
        of the tracker that numbered them: the scheduler's when it tracked the frame, else this
        camera's own tracker's (Ultralytics' ByteTrack, imported only then: it brings torch along)."""
        if frame.track_ids is not None:
            boxes = frame.track_boxes or (None,) * len(frame.detections)
            return _Tracks(list(frame.track_ids), list(boxes), list(frame.removed_tracks), frame.tracker)
        if self.tracker is None:
            from vistream.events.tracking import CameraTracker

            self.tracker = CameraTracker(self.config.detect_fps)
        ids = self.tracker.update(frame.detections, frame.captured_mono)
        return _Tracks(ids, list(self.tracker.boxes), self.tracker.removed, self.tracker.generation)

    def take_over(self, old: _Camera) -> None:
        """Keep the tracker, line states and rule machines of the same camera that did not change."""
        same_tracks = old.config.detect_fps == self.config.detect_fps
        if same_tracks:
            self.tracker = old.tracker
        for name in self.lines:
            if old.config.lines.get(name) == self.config.lines[name]:
                self.lines[name] = old.lines[name]
        if not same_tracks or old.config.zones != self.config.zones:
            return  # a rule's running events need the same tracks in the same zones
        previous = {m.rule.name: m for m in old.machines}
        for i, machine in enumerate(self.machines):
            kept, line = previous.get(machine.rule.name), machine.rule.line
            same_line = line is None or self.lines[line] is old.lines.get(line)
            if kept is not None and kept.rule == machine.rule and same_line:
                self.machines[i] = kept


class EventEngine:
    """Tracks objects and evaluates the alert rules of every enabled camera, frame by frame."""

    def __init__(
        self,
        cfg: Config,
        names: dict[int, str],
        counters: Mapping[CounterKey, int] | None = None,
        new_id: Callable[[], str] = new_event_id,
    ) -> None:
        self.names = names
        self._new_id = new_id
        self._counters: dict[CounterKey, int] = {}
        self._cameras: dict[str, _Camera] = {}
        self._build(cfg, counters or {}, {})

    def _build(self, cfg: Config, counters: Mapping[CounterKey, int], old: dict[str, _Camera]) -> None:
        """Cameras, rules and counters of `cfg`, taking over what `old` has that did not change."""
        prefix = cfg.mqtt.topic_prefix
        self._cameras, self._counters = {}, {}
        for cam in cfg.enabled_cameras:
            rules = [r for r in cfg.alerts if cam.name in cfg.rule_cameras(r)]
            machines = [
                machine_for(cam.name, r, f"{prefix}/{cam.name}/{r.name}/snapshot", self._new_id)
                for r in rules
            ]
            labels = {line: _line_labels(line, rules) for line in cam.lines}
            self._cameras[cam.name] = _Camera(cam, machines, labels)
            if cam.name in old:
                self._cameras[cam.name].take_over(old[cam.name])
            for line in cam.lines:
                for direction in ("in", "out"):
                    key = (cam.name, line, direction)
                    self._counters[key] = counters.get(key, 0)

    def reconfigure(self, cfg: Config, stored: Mapping[CounterKey, int] | None = None) -> FrameOutcome:
        """Apply a reloaded config without losing what did not change.

        Trackers of cameras whose rate is the same keep their tracks, unchanged lines keep where
        each track was, and rule machines whose rule, camera and geometry are the same keep their
        running events; the events of rules that changed or went away end now. Counters go on;
        those of lines new to the engine start from `stored` (their values from before), else 0.
        """
        old, counters = self._cameras, {**(stored or {}), **self._counters}
        self._build(cfg, counters, old)
        kept = {id(m) for c in self._cameras.values() for m in c.machines}
        out = FrameOutcome()
        for cam in old.values():
            for machine in cam.machines:
                if id(machine) not in kept:
                    was_active = machine.active
                    out.add_events(machine, machine.close(), was_active)
        return out

    @property
    def counters(self) -> dict[CounterKey, int]:
        """Every line counter of the enabled cameras, (camera, line, direction) -> crossings."""
        return dict(self._counters)

    def last_seen(self) -> dict[str, float]:
        """Every running event's id and the capture time (Unix) of the last frame its rule held."""
        return {i: t for c in self._cameras.values() for m in c.machines for i, t in m.last_seen().items()}

    def active_states(self) -> list[tuple[str, str, bool]]:
        """(camera, rule, active) for every rule on every camera, e.g. to publish at start."""
        return [(c.name, m.rule.name, m.active) for c in self._cameras.values() for m in c.machines]

    def process(self, frame: FrameResult) -> FrameOutcome:
        """Track the frame's detections and run the camera's rules on them."""
        cam = self._cameras.get(frame.camera)
        if cam is None:  # not an enabled camera of this config: objects without tracks, nothing else
            untracked = [None] * len(frame.detections)
            return FrameOutcome(objects=self._objects(frame, untracked, untracked))
        tracks = cam.track(frame)
        generation = tracks.generation
        out = FrameOutcome(objects=self._objects(frame, tracks.ids, tracks.boxes), tracker=generation)
        points = {
            i: anchor(o.place, frame.width, frame.height)
            for i, o in enumerate(out.objects)
            if o.track_id is not None
        }
        gone = [(generation, track_id) for track_id in tracks.removed]
        crossings = self._cross(cam, out, points, gone, (generation, frame.captured_mono))
        clock = Clock(frame.seq, frame.captured_at, frame.captured_mono)
        for machine in cam.machines:
            seen = _seen(cam, machine.rule, out.objects, points, crossings, generation)
            was_active = machine.active
            out.add_events(machine, machine.step(clock, seen), was_active)
        return out

    def tick(self, now_mono: float) -> FrameOutcome:
        """End the events of cameras whose frames stopped coming (call it about once a second)."""
        out = FrameOutcome()
        for cam in self._cameras.values():
            for machine in cam.machines:
                was_active = machine.active
                out.add_events(machine, machine.tick(now_mono), was_active)
        return out

    def _objects(
        self, frame: FrameResult, track_ids: Sequence[int | None], track_boxes: Sequence[Box | None]
    ) -> list[TrackedObject]:
        return [
            TrackedObject(self.names.get(cls, str(cls)), cls, conf, (x1, y1, x2, y2), track_id, track_box)
            for (cls, conf, x1, y1, x2, y2), track_id, track_box in zip(
                frame.detections, track_ids, track_boxes, strict=True
            )
        ]

    def _cross(
        self,
        cam: _Camera,
        out: FrameOutcome,
        points: dict[int, XY],
        removed: list[TrackKey],
        when: tuple[int, float],
    ) -> dict[str, list[Seen]]:
        """The crossings of each line in this frame (tracker generation, capture time); counts them."""
        generation, now = when
        crossings: dict[str, list[Seen]] = {}
        changed: dict[CounterKey, int] = {}
        for name, line in cam.lines.items():
            line.forget(removed)
            crossings[name] = []
            for i, point in points.items():
                obj = out.objects[i]
                assert obj.track_id is not None
                direction = line.update((generation, obj.track_id), point, now)
                if direction is None:
                    continue
                crossings[name].append(_as_seen(obj, generation, direction))
                labels = cam.line_labels[name]
                if labels is None or obj.label in labels:
                    key = (cam.name, name, direction)
                    changed[key] = self._counters[key] = self._counters[key] + 1
        out.counters += [(*key, value) for key, value in changed.items()]
        return crossings


def _as_seen(obj: TrackedObject, generation: int, direction: Direction | None = None) -> Seen:
    return Seen(obj.track_id, obj.label, obj.confidence, obj.box, direction, generation)


def _seen(
    cam: _Camera,
    rule: AlertRule,
    objects: list[TrackedObject],
    points: dict[int, XY],
    crossings: dict[str, list[Seen]],
    generation: int,
) -> list[Seen]:
    """What holds for `rule` in this frame: tracked objects it accepts where it looks, or crossings."""
    if rule.line is not None:
        return [s for s in crossings[rule.line] if accepts(rule, s.label, s.confidence)]
    zone = cam.zones[rule.zone] if rule.zone is not None else None
    return [
        _as_seen(objects[i], generation)
        for i, point in points.items()
        if accepts(rule, objects[i].label, objects[i].confidence) and (zone is None or zone.covers(point))
    ]


def _line_labels(line: str, rules: list[AlertRule]) -> set[str] | None:
    """The labels a line's counters count: those of its rules; None (any) when one takes any label."""
    using = [r for r in rules if r.line == line]
    if not using or any(r.labels is None for r in using):
        return None
    return {label for r in using for label in r.labels or []}
