"""The live per-camera table `vistream demo` prints: plain text, fixed columns, fits the terminal.

Under the table, the most recent alert events, one line each.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

_ELLIPSIS = "…"
_MAX_NAME_WIDTH = 20
# (key, header, width) of the fixed columns between the name and the objects column.
_NUMERIC_COLUMNS = (
    ("status", "status", 7),
    ("fps_in", "fps in", 6),
    ("fps_inferred", "fps inf", 7),
    ("dropped_stale", "stale", 6),
    ("dropped_overwritten", "overwr", 6),
    ("events", "events", 6),
    ("crossings", "in/out", 7),  # one column, not two: an 80-column terminal keeps room for objects
)
_MAX_RULE_WIDTH = 24
RECENT_LINES = 5  # events shown under the table
# Footer items the daemon reports, in display order; other keys are shown after them as `key value`.
_TOTALS = (
    ("fps_inferred", "inferred {:.1f} fps"),
    ("mean_batch", "mean batch {:.2f}"),
    ("p50_latency_ms", "p50 latency {:.0f} ms"),
)


@dataclass(frozen=True)
class CameraRow:
    """One camera's line in the table: state and counters over the last reporting interval."""

    name: str
    online: bool
    fps_in: float  # frames decoded per second
    fps_inferred: float  # frames that went through the detector per second
    dropped_stale: int  # frames dropped because they were too old at batch time
    dropped_overwritten: int  # frames the reader overwrote in the ring before anyone took them
    objects: dict[str, int] = field(default_factory=dict)  # label -> count in the latest inferred frame
    events: int = 0  # alert events started, all rules
    line_in: int | None = None  # crossings `in` of the camera's lines, all lines; None: it has no line
    line_out: int | None = None


@dataclass(frozen=True)
class SeenEvent:
    """An event message (`Alerts.figures()` payload) and the Unix time the demo first saw it."""

    at: float
    payload: dict[str, Any]


def render(
    rows: list[CameraRow],
    *,
    elapsed_s: float,
    broker: str,
    totals: dict[str, float] | None = None,
    recent: list[SeenEvent] | None = None,
    width: int | None = None,
) -> str:
    """The table as text, no line longer than `width` (default: the terminal's width, else 100).

    With `recent` (a list, also an empty one) a "recent events" section follows, oldest first.
    """
    if width is None:
        width = shutil.get_terminal_size((100, 24)).columns
    name_width = min(max([len("camera"), *(len(r.name) for r in rows)]), _MAX_NAME_WIDTH)
    fixed = name_width + sum(w + 2 for _, _, w in _NUMERIC_COLUMNS) + 2  # + the gap before objects
    objects_width = max(width - fixed, 1)

    lines = [_clip(f"vistream demo  elapsed {_hms(elapsed_s)}  broker {broker}", width)]
    header = [f"{'camera':<{name_width}}"]
    header += [f"{title:>{w}}" for _, title, w in _NUMERIC_COLUMNS]
    header.append("objects")
    lines.append(_clip("  ".join(header), width))
    for row in rows:
        cells = [
            f"{_clip(row.name, name_width):<{name_width}}",
            f"{'online' if row.online else 'offline':>7}",
        ]
        cells += [f"{row.fps_in:>6.1f}", f"{row.fps_inferred:>7.1f}"]
        cells += [f"{row.dropped_stale:>6d}", f"{row.dropped_overwritten:>6d}", f"{row.events:>6d}"]
        cells.append(f"{_crossings(row):>7}")
        cells.append(format_objects(row.objects, objects_width))
        # Terminals narrower than the fixed columns get cut lines rather than wrapped ones, which
        # would break the in-place redraw.
        lines.append(_clip("  ".join(cells).rstrip(), width))
    if totals:
        lines.append(_clip(_format_totals(totals), width))
    if recent is not None:
        lines += _recent_lines(recent, name_width, width)
    return "\n".join(lines)


def _crossings(row: CameraRow) -> str:
    if row.line_in is None or row.line_out is None:
        return "-"
    return f"{row.line_in}/{row.line_out}"


def _recent_lines(recent: list[SeenEvent], name_width: int, width: int) -> list[str]:
    lines = ["recent events" if recent else "recent events: none yet"]
    rule_width = min(max([len("rule"), *(len(str(e.payload.get("rule"))) for e in recent)]), _MAX_RULE_WIDTH)
    for event in recent:
        doc = event.payload
        cells = [
            time.strftime("%H:%M:%S", time.localtime(event.at)),
            f"{_clip(str(doc.get('camera')), name_width):<{name_width}}",
            f"{_clip(str(doc.get('rule')), rule_width):<{rule_width}}",
            f"{doc.get('type')!s:<6}",
            describe_event(doc),
        ]
        lines.append(_clip("  " + "  ".join(cells), width))
    return lines


def describe_event(doc: dict[str, Any]) -> str:
    """What an event is about, from its payload: `person #7 in yard`, `3 person in yard`,
    `person #7 crossed gate` (`... (4 crossings)` once a line event counts more than one)."""
    label, track, count = doc.get("label"), doc.get("track_id"), doc.get("count")
    if "line" in doc:
        who = label or "object"
        who += f" #{track}" if track is not None else ""
        more = f" ({count} crossings)" if isinstance(count, int) and count > 1 else ""
        return f"{who} crossed {doc['line']}{more}"
    if count is not None:  # a count event: min_count objects or more, no single track
        who = f"{count} {label or 'objects'}"
    else:
        who = (label or "object") + (f" #{track}" if track is not None else "")
    zone = doc.get("zone")
    return f"{who} in {zone}" if zone else who


class RecentEvents:
    """The last few events with the time the demo first saw each.

    `Alerts.figures()` hands over its whole list of recent payloads (at most 50, oldest first) on
    every tick, and a payload carries no time of its own when it is an update. So each call lines
    the new list up with the previous one: the longest tail of the previous list that the new one
    starts with is old, whatever follows it is new and gets `clock()`.
    """

    def __init__(self, keep: int = RECENT_LINES, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._previous: list[dict[str, Any]] = []
        self._shown: deque[SeenEvent] = deque(maxlen=keep)

    def update(self, recent: list[dict[str, Any]]) -> list[SeenEvent]:
        """Take the daemon's current list of recent payloads; return the last `keep`, oldest first."""
        fresh = recent[_overlap(self._previous, recent) :]
        if fresh:
            now = self._clock()
            self._shown.extend(SeenEvent(now, doc) for doc in fresh)
        self._previous = recent
        return list(self._shown)


def _overlap(previous: list[dict[str, Any]], current: list[dict[str, Any]]) -> int:
    """How many entries `current` starts with that end `previous` (the ones seen before)."""
    for m in range(min(len(previous), len(current)), 0, -1):
        if current[:m] == previous[-m:]:
            return m
    return 0


def format_objects(objects: dict[str, int], width: int) -> str:
    """`person×3 bus×1`: most frequent first; when too long, cut after a whole item and end in `…`."""
    items = [f"{label}×{count}" for label, count in sorted(objects.items(), key=lambda kv: (-kv[1], kv[0]))]
    text = " ".join(items)
    if len(text) <= width:
        return text
    kept = ""
    for item in items:
        candidate = f"{kept} {item}" if kept else item
        if len(candidate) + len(" " + _ELLIPSIS) > width:
            break
        kept = candidate
    if not kept:  # not even one item fits whole with the ellipsis: cut the text
        return _clip(text, width)
    return f"{kept} {_ELLIPSIS}"


def _format_totals(totals: dict[str, float]) -> str:
    known = dict(_TOTALS)
    parts = [fmt.format(totals[key]) for key, fmt in _TOTALS if key in totals]
    parts += [f"{key} {value:g}" for key, value in totals.items() if key not in known]
    return "total  " + "  ".join(parts)


def _clip(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + _ELLIPSIS if width > 0 else ""


def _hms(seconds: float) -> str:
    total = max(int(seconds), 0)
    return f"{total // 3600}:{total // 60 % 60:02d}:{total % 60:02d}"


class LiveTable:
    """Shows successive renders of the table on `stream`.

    On a terminal each update redraws the previous table in place. On anything else (a pipe, a
    file, a CI log) cursor codes would be garbage, so it appends the table at most once every
    `interval_s` seconds; `force=True` prints regardless, e.g. for the final table at exit.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval_s: float = 5.0,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.interval_s = interval_s
        self.tty = _isatty(self.stream) if tty is None else tty
        self._clock = clock
        self._drawn_lines = 0  # lines of the previous draw, to move back over on a terminal
        self._last_print: float | None = None

    def update(self, text: str, *, force: bool = False) -> None:
        """Show `text` (one rendered table): redraw in place on a TTY, else append when due."""
        lines = text.splitlines()
        if self.tty:
            out = [f"\x1b[{self._drawn_lines}F"] if self._drawn_lines else []
            # Overwrite line by line and clear each tail instead of clearing the screen first:
            # no flicker. `\x1b[J` then removes lines left over from a taller previous table.
            out += [f"{line}\x1b[K\n" for line in lines]
            out.append("\x1b[J")
            self._write("".join(out))
            self._drawn_lines = len(lines)
            return
        now = self._clock()
        if not force and self._last_print is not None and now - self._last_print < self.interval_s:
            return
        self._last_print = now
        self._write(("\n" if self._drawn_lines else "") + "\n".join(lines) + "\n")
        self._drawn_lines = len(lines)

    def _write(self, data: str) -> None:
        try:
            self.stream.write(data)
        except UnicodeEncodeError:  # a stream in ASCII or Latin-1 cannot show × and …
            encoding = getattr(self.stream, "encoding", None) or "ascii"
            self.stream.write(data.encode(encoding, "replace").decode(encoding))
        self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or already closed
        return False
