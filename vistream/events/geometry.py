"""Zones and lines in normalised image coordinates, and where an object is relative to them.

Coordinates are fractions of the frame, (x, y) in 0..1 with x to the right and y **down** (image
coordinates), so a zone drawn on a 1080p still means the same on the 720p substream. An object's
position is the bottom-centre of its box (where it stands on the ground), normalised by the frame's
width and height of the frame it was found in. For a tracked object that box is its track's (the
Kalman estimate after the match, `vistream.events.tracking`), which jitters less than the detection's.

Shapely (prepared geometry) answers the set questions: a polygon's `covers` includes its edges and
vertices and is right for concave polygons; a line's crossing test asks whether the movement
intersects the segment. Which side of a line a point is on is a cross product.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import shapely
from shapely.geometry import LineString, Point, Polygon

XY = tuple[float, float]
Box = tuple[float, float, float, float]
Direction = Literal["in", "out"]
# A track as a tracker numbers it: (the tracker's generation, its track id). Ids alone are not
# unique: a tracker made again (a scheduler restart, a new detect_fps) numbers its tracks from 1.
TrackKey = tuple[int, int]

# A track not seen for this long (capture time) is gone: ByteTrack gives a lost track up after
# 2 s (TrackerSettings.track_buffer_s), and its id never comes back.
FORGET_AFTER_S = 10.0


def anchor(box: Box, width: int, height: int) -> XY:
    """The bottom-centre of a box in camera pixels, normalised by the frame's width and height."""
    x1, _, x2, y2 = box
    return ((x1 + x2) / 2 / width, y2 / height)


class Zone:
    """A named polygon; a point is in it when the closed polygon (edges included) covers it."""

    def __init__(self, name: str, points: Sequence[XY]) -> None:
        self.name = name
        self.polygon = Polygon(points)
        shapely.prepare(self.polygon)

    def covers(self, point: XY) -> bool:
        return bool(self.polygon.covers(Point(point)))


class Line:
    """A named segment p1 -> p2 with a side: left (-1), on it (0) or right (+1).

    Left and right are as a person looking at the image sees them when standing on p1 facing p2.
    Because y grows downwards, that is the opposite sign of the textbook (y up) cross product:
    a point is on the right when `(p2 - p1) x (point - p1) > 0` computed with image y.

    Worked example: the line `[[0, 0.5], [1, 0.5]]` runs left to right across the middle of the
    image. Standing on its left end facing right, your left hand points up the image: the upper
    half (y < 0.5) is its left, the lower half its right. A person walking down the image, from
    y = 0.4 to y = 0.6 (typically towards the camera) crosses it `in`; walking up, `out`.
    Drawn the other way round, `[[1, 0.5], [0, 0.5]]`, the same walk is `out`. For a vertical line
    `[[0.5, 0], [0.5, 1]]` (top to bottom) the left is the right half of the image (x > 0.5):
    walking from right to left across it is `in`.
    """

    def __init__(self, name: str, p1: XY, p2: XY) -> None:
        self.name = name
        self.p1, self.p2 = p1, p2
        self.segment = LineString([p1, p2])
        shapely.prepare(self.segment)

    def side(self, point: XY) -> int:
        (x1, y1), (x2, y2) = self.p1, self.p2
        cross = (x2 - x1) * (point[1] - y1) - (y2 - y1) * (point[0] - x1)
        return (cross > 0) - (cross < 0)

    def crossing(self, before: XY, after: XY) -> Direction | None:
        """The direction of a move from `before` to `after` across the segment, or None.

        Both points must be strictly on a side (the caller keeps the last strictly-sided position,
        see `LineCrossings`). A move that passes the infinite line beyond the segment's ends is no
        crossing; one through an end point is.
        """
        a, b = self.side(before), self.side(after)
        if a == 0 or b == 0 or a == b:
            return None
        if not self.segment.intersects(LineString([before, after])):
            return None
        return "in" if a < 0 else "out"


class LineCrossings:
    """Crossings of one line by tracks: the last strictly-sided position of each track.

    A track that ends exactly on the line has not crossed it yet: its last position off the line is
    kept, so it crosses when it goes on to the other side and does not when it turns back. A track
    crossing twice gives two crossings (in then out, or out then in).

    Tracks are keyed by `TrackKey` (the tracker's generation and its id): a rebuilt tracker numbers
    its tracks from 1 again, and its track 3 must not cross from where the old track 3 was. A track
    is forgotten when the tracker says it removed it, and also once it was not seen for
    `forget_after_s` of capture time: removal notices are lost with the results that carried them
    (a full results queue) and Ultralytics drops duplicate tracks without one.
    """

    def __init__(self, line: Line, forget_after_s: float = FORGET_AFTER_S) -> None:
        self.line = line
        self.forget_after_s = forget_after_s
        self._last: dict[TrackKey, tuple[XY, float]] = {}  # track -> last sided position, last seen
        self._swept = float("-inf")

    def update(self, track: TrackKey, point: XY, now: float) -> Direction | None:
        """Where `track` is at capture time `now` (monotonic): the direction it crossed, or None."""
        self._expire(now)
        before = self._last.get(track)
        if self.line.side(point) == 0:  # on the line: keep where it came from, it is still seen
            if before is not None:
                self._last[track] = (before[0], now)
            return None
        self._last[track] = (point, now)
        return None if before is None else self.line.crossing(before[0], point)

    def forget(self, tracks: Iterable[TrackKey]) -> None:
        """Drop tracks the tracker removed (their ids never come back from that tracker)."""
        for track in tracks:
            self._last.pop(track, None)

    def _expire(self, now: float) -> None:
        """Drop tracks unseen for `forget_after_s`; one sweep per half of that, so amortised O(1)."""
        if now - self._swept < self.forget_after_s / 2:
            return
        self._swept = now
        old = [t for t, (_, seen) in self._last.items() if now - seen > self.forget_after_s]
        for track in old:
            del self._last[track]

    def __len__(self) -> int:
        return len(self._last)
