"""Alert rules as state machines, one per (camera, rule): what holds in each frame -> events.

The machines are pure: the caller says what matched in a frame (objects of the rule's labels at
`min_confidence` or more, tracked, in the rule's zone or anywhere for a whole-frame rule; or the
crossings of the rule's line in its direction) and passes the frame's clocks. Durations use the
monotonic capture time; the wall capture time only goes into payloads.

Semantics (the events page of the docs repeats them):

- **Zone or whole-frame rule, `min_count` 1: one event per track.** An event starts when a track
  has held the rule (matching label, confidence >= `min_confidence`, bottom-centre in the zone) for
  `min_duration_s`. The dwell tolerates gaps of less than a second (or `end_after_s` if shorter):
  missed detections, not absences; a longer gap starts it again. Only tracked objects count (a new
  object gets its track id on its second frame). Events of different tracks run at the same time.
  An `update` goes out when the box moved or changed size materially (IoU with the last published
  box below 0.7) or `max_confidence` rose by 0.05 or more, at most one a second per event (a change
  held back goes out with the next frame that allows it). The event ends when the rule has not held
  for its track for `end_after_s` (track lost, left the zone, confidence too low). `count` is null.
- **Zone or whole-frame rule, `min_count` > 1: one count event per (camera, rule).** It starts when
  at least `min_count` matching tracks have been in the zone for `min_duration_s` (gaps as above);
  `track_id` is null, `count` the number of objects, `box` the union of their boxes, `label` theirs
  when they share one (else null). An update goes out when the count changes while the rule holds
  (at most one a second); the event ends when fewer than `min_count` were there for `end_after_s`.
- **Line rule: crossings.** Each crossing of the line by a matching track in the rule's direction
  (`both`: either) starts an event, or, while one runs, updates it (`count` = crossings since it
  started, `track_id`/`label`/`box` of the latest crossing; at most one update a second). It ends
  `end_after_s` after the last crossing. `min_duration_s` does not apply.
- **Cooldown.** After an event of a rule on a camera ends, no new event of that rule starts on that
  camera for `cooldown_s`. Events already running are not affected, and an object that would have
  started one during the cooldown starts it when the cooldown is over if it still holds.
- **Times.** `started_at` is the capture time of the frame that started the event (the snapshot's
  frame); `ended_at` that of the last frame in which the rule held, so it is earlier than the moment
  the end is published (`end_after_s` later). `max_confidence` is the highest confidence seen
  while the event ran.
- **Active.** A rule is active on a camera while any event of it runs there.
- **No frames.** `tick(now)` ends events when frames stop coming (camera offline): the same
  `end_after_s` counted on the monotonic clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from vistream.config.models import AlertRule
from vistream.events.geometry import Box, Direction, TrackKey

UPDATE_INTERVAL_S = 1.0  # at most one update a second per event
MOVED_IOU = 0.7  # a box overlapping the last published one less than this has moved materially
CONFIDENCE_STEP = 0.05  # max_confidence rising this much is worth an update
DWELL_GAP_S = 1.0  # a dwell survives missed detections shorter than this, not absences
# Capture times are floats (1.4 - 0.4 < 1.0): a duration within a microsecond of its bound has reached it.
EPSILON_S = 1e-6


def lasted(start: float, now: float, duration: float) -> bool:
    """Whether `duration` seconds have passed from `start` to `now`."""
    return now - start >= duration - EPSILON_S


EventType = Literal["start", "update", "end"]


def new_event_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Clock:
    """The frame a rule is evaluated on: its sequence number and capture times."""

    seq: int
    wall: float  # Unix time, for payloads
    mono: float  # monotonic time, for durations


@dataclass(frozen=True)
class Seen:
    """An object for which a rule holds in one frame (for a line rule: one crossing)."""

    track_id: int | None
    label: str
    confidence: float
    box: Box
    direction: Direction | None = None
    generation: int = 0  # of the tracker that numbered `track_id` (a rebuilt one starts from 1 again)

    @property
    def track(self) -> TrackKey | None:
        """The track, unique across trackers; None when untracked."""
        return None if self.track_id is None else (self.generation, self.track_id)


@dataclass(frozen=True)
class Event:
    """One event message; `seq` is the frame it was produced on (for a start: the snapshot's)."""

    type: EventType
    id: str
    camera: str
    rule: str
    label: str | None
    track_id: int | None
    zone: str | None
    line: str | None
    direction: str | None
    started_at: float
    ended_at: float | None
    max_confidence: float
    box: Box | None
    count: int | None
    snapshot: str | None
    seq: int

    def payload(self) -> dict[str, Any]:
        """The spec's JSON fields: `zone` for zone and whole-frame rules, `line` and `direction` else."""
        out: dict[str, Any] = {
            "type": self.type,
            "id": self.id,
            "camera": self.camera,
            "rule": self.rule,
            "label": self.label,
            "track_id": self.track_id,
        }
        if self.line is not None:
            out |= {"line": self.line, "direction": self.direction}
        else:
            out["zone"] = self.zone
        return out | {
            "started_at": round(self.started_at, 3),
            "ended_at": None if self.ended_at is None else round(self.ended_at, 3),
            "max_confidence": round(self.max_confidence, 3),
            "box": None if self.box is None else [round(v, 1) for v in self.box],
            "count": self.count,
            "snapshot": self.snapshot,
        }


def iou(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def union_box(boxes: Sequence[Box]) -> Box:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def accepts(rule: AlertRule, label: str, confidence: float) -> bool:
    """Whether an object's label and confidence satisfy a rule (its place is checked elsewhere)."""
    return confidence >= rule.min_confidence and (rule.labels is None or label in rule.labels)


@dataclass
class _Open:
    """A running event and what was last published of it."""

    id: str
    started_at: float
    label: str | None
    track_id: int | None
    box: Box | None
    max_confidence: float
    count: int | None
    last_mono: float  # the last frame the rule held
    last_wall: float
    last_seq: int
    published_mono: float
    published: dict[str, Any] = field(default_factory=dict)  # box, max_confidence, count


@dataclass
class _Dwell:
    """How long a rule has held (for a track or a count) before an event started."""

    since: float
    last: float


def _held(dwell: _Dwell | None, now: float, grace: float) -> _Dwell:
    """`dwell` continued at `now`, or a new one when there was none or the gap was `grace` or longer."""
    if dwell is None or lasted(dwell.last, now, grace):
        return _Dwell(now, now)
    dwell.last = now
    return dwell


class RuleMachine:
    """What the three kinds share: identity, cooldown, building messages, ending."""

    def __init__(
        self,
        camera: str,
        rule: AlertRule,
        snapshot: str | None = None,
        new_id: Callable[[], str] = new_event_id,
    ) -> None:
        self.camera, self.rule, self.snapshot = camera, rule, snapshot
        self._new_id = new_id
        self._open: dict[TrackKey | None, _Open] = {}  # by track (None: the count or line event)
        self._cool_until = float("-inf")

    @property
    def active(self) -> bool:
        return bool(self._open)

    def step(self, clock: Clock, seen: Sequence[Seen]) -> list[Event]:
        """Feed one frame: what matched in it. Returns the messages it causes, ends first."""
        return self.tick(clock.mono) + self._step(clock, seen)

    def tick(self, now_mono: float) -> list[Event]:
        """End the events whose rule has not held for `end_after_s` (also without frames)."""
        out: list[Event] = []
        for key, ev in list(self._open.items()):
            if lasted(ev.last_mono, now_mono, self.rule.end_after_s):
                del self._open[key]
                self._cool_until = max(self._cool_until, now_mono + self.rule.cooldown_s)
                out.append(self._message("end", ev, ev.last_wall, ev.last_seq))
        self._expire(now_mono)
        return out

    def last_seen(self) -> dict[str, float]:
        """Each running event's id and the capture time (Unix) of the last frame its rule held."""
        return {ev.id: ev.last_wall for ev in self._open.values()}

    def close(self) -> list[Event]:
        """End every running event now (the rule was changed or removed by a reload)."""
        out = [self._message("end", ev, ev.last_wall, ev.last_seq) for ev in self._open.values()]
        self._open.clear()
        return out

    def _step(self, clock: Clock, seen: Sequence[Seen]) -> list[Event]:
        raise NotImplementedError

    def _expire(self, now_mono: float) -> None:
        """Forget dwells that lapsed."""

    @property
    def dwell_gap(self) -> float:
        return min(DWELL_GAP_S, self.rule.end_after_s)

    def cooling(self, now_mono: float) -> bool:
        return not lasted(self._cool_until, now_mono, 0)

    def _start(self, key: TrackKey | None, clock: Clock, seen: Sequence[Seen], **fields: Any) -> Event:
        """Open an event keyed by `key` (a track, or None for the one count or line event).

        `seen` gives the defaults: the shared label, the union box, the highest confidence;
        `fields` (track_id, count, label, box) set or override them.
        """
        labels = {s.label for s in seen}
        ev = _Open(
            id=self._new_id(),
            started_at=clock.wall,
            label=labels.pop() if len(labels) == 1 else None,
            track_id=None,
            box=union_box([s.box for s in seen]),
            max_confidence=max(s.confidence for s in seen),
            count=None,
            last_mono=clock.mono,
            last_wall=clock.wall,
            last_seq=clock.seq,
            published_mono=clock.mono,
        )
        for name, value in fields.items():
            setattr(ev, name, value)
        self._open[key] = ev
        return self._message("start", ev, None, clock.seq)

    def _may_update(self, ev: _Open, clock: Clock) -> bool:
        return lasted(ev.published_mono, clock.mono, UPDATE_INTERVAL_S)

    def _message(self, kind: EventType, ev: _Open, ended_at: float | None, seq: int) -> Event:
        if kind != "end":
            ev.published = {"box": ev.box, "max_confidence": ev.max_confidence, "count": ev.count}
        rule = self.rule
        return Event(
            type=kind,
            id=ev.id,
            camera=self.camera,
            rule=rule.name,
            label=ev.label,
            track_id=ev.track_id,
            zone=rule.zone,
            line=rule.line,
            direction=rule.direction if rule.line is not None else None,
            started_at=ev.started_at,
            ended_at=ended_at,
            max_confidence=ev.max_confidence,
            box=ev.box,
            count=ev.count,
            snapshot=self.snapshot,
            seq=seq,
        )

    def _update(self, ev: _Open, clock: Clock) -> Event:
        ev.published_mono = clock.mono
        return self._message("update", ev, None, clock.seq)


class TrackRule(RuleMachine):
    """A zone or whole-frame rule with `min_count` 1: one event per track."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._dwells: dict[TrackKey, _Dwell] = {}

    def _step(self, clock: Clock, seen: Sequence[Seen]) -> list[Event]:
        out: list[Event] = []
        for s in seen:
            if s.track is None:
                continue
            ev = self._open.get(s.track)
            if ev is not None:
                out += self._hold(ev, s, clock)
            elif (started := self._dwell(s.track, s, clock)) is not None:
                out.append(started)
        return out

    def _dwell(self, track: TrackKey, s: Seen, clock: Clock) -> Event | None:
        dwell = self._dwells[track] = _held(self._dwells.get(track), clock.mono, self.dwell_gap)
        if not lasted(dwell.since, clock.mono, self.rule.min_duration_s) or self.cooling(clock.mono):
            return None
        del self._dwells[track]
        return self._start(track, clock, [s], track_id=s.track_id)

    def _hold(self, ev: _Open, s: Seen, clock: Clock) -> list[Event]:
        ev.last_mono, ev.last_wall, ev.last_seq, ev.box = clock.mono, clock.wall, clock.seq, s.box
        ev.max_confidence = max(ev.max_confidence, s.confidence)
        moved = iou(s.box, ev.published["box"]) < MOVED_IOU
        surer = ev.max_confidence >= ev.published["max_confidence"] + CONFIDENCE_STEP
        return [self._update(ev, clock)] if (moved or surer) and self._may_update(ev, clock) else []

    def _expire(self, now_mono: float) -> None:
        for track, dwell in list(self._dwells.items()):
            if lasted(dwell.last, now_mono, self.dwell_gap):
                del self._dwells[track]


class CountRule(RuleMachine):
    """A zone or whole-frame rule with `min_count` > 1: one event for the number of objects."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._dwell: _Dwell | None = None

    def _step(self, clock: Clock, seen: Sequence[Seen]) -> list[Event]:
        seen = [s for s in seen if s.track_id is not None]
        if len(seen) < self.rule.min_count:
            return []
        ev = self._open.get(None)
        if ev is None:
            return self._dwell_on(clock, seen)
        ev.last_mono, ev.last_wall, ev.last_seq = clock.mono, clock.wall, clock.seq
        ev.count, ev.box = len(seen), union_box([s.box for s in seen])
        ev.max_confidence = max(ev.max_confidence, *(s.confidence for s in seen))
        changed = ev.count != ev.published["count"]
        return [self._update(ev, clock)] if changed and self._may_update(ev, clock) else []

    def _dwell_on(self, clock: Clock, seen: Sequence[Seen]) -> list[Event]:
        dwell = self._dwell = _held(self._dwell, clock.mono, self.dwell_gap)
        if not lasted(dwell.since, clock.mono, self.rule.min_duration_s) or self.cooling(clock.mono):
            return []
        self._dwell = None
        return [self._start(None, clock, seen, count=len(seen))]

    def _expire(self, now_mono: float) -> None:
        if self._dwell is not None and lasted(self._dwell.last, now_mono, self.dwell_gap):
            self._dwell = None


class LineRule(RuleMachine):
    """A line rule: crossings in the rule's direction start or update one event."""

    def _step(self, clock: Clock, seen: Sequence[Seen]) -> list[Event]:
        wanted = self.rule.direction
        crossings = [s for s in seen if s.direction is not None and wanted in ("both", s.direction)]
        ev = self._open.get(None)
        if ev is None:
            if not crossings or self.cooling(clock.mono):
                return []
            first = crossings[0]  # the event shows the crossing that started it, not a union
            fields = {"track_id": first.track_id, "label": first.label, "box": first.box}
            return [self._start(None, clock, crossings, count=len(crossings), **fields)]
        if crossings:
            latest = crossings[-1]
            ev.last_mono, ev.last_wall, ev.last_seq = clock.mono, clock.wall, clock.seq
            ev.count = (ev.count or 0) + len(crossings)
            ev.track_id, ev.label, ev.box = latest.track_id, latest.label, latest.box
            ev.max_confidence = max(ev.max_confidence, *(s.confidence for s in crossings))
        changed = ev.count != ev.published["count"]
        return [self._update(ev, clock)] if changed and self._may_update(ev, clock) else []


def machine_for(
    camera: str, rule: AlertRule, snapshot: str | None = None, new_id: Callable[[], str] = new_event_id
) -> RuleMachine:
    """The state machine that implements `rule` on `camera`."""
    if rule.line is not None:
        return LineRule(camera, rule, snapshot, new_id)
    if rule.min_count > 1:
        return CountRule(camera, rule, snapshot, new_id)
    return TrackRule(camera, rule, snapshot, new_id)
