"""Zones and lines in normalised image coordinates (vistream/events/geometry.py)."""

from __future__ import annotations

import pytest

from vistream.events.geometry import XY, Line, LineCrossings, Zone, anchor

SQUARE = [(0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8)]
# An L: the square's top-right quarter is cut out, so (0.7, 0.3) lies in its convex hull but outside.
ELL = [(0.2, 0.2), (0.5, 0.2), (0.5, 0.5), (0.8, 0.5), (0.8, 0.8), (0.2, 0.8)]


@pytest.mark.parametrize(
    ("points", "point", "inside"),
    [
        (SQUARE, (0.5, 0.5), True),  # interior
        (SQUARE, (0.5, 0.2), True),  # on the top edge
        (SQUARE, (0.8, 0.5), True),  # on the right edge
        (SQUARE, (0.2, 0.2), True),  # a vertex
        (SQUARE, (0.8, 0.8), True),  # another vertex
        (SQUARE, (0.1, 0.5), False),  # left of it
        (SQUARE, (0.5, 0.81), False),  # just below it
        (ELL, (0.3, 0.3), True),  # in the L's upright
        (ELL, (0.7, 0.7), True),  # in the L's foot
        (ELL, (0.7, 0.3), False),  # in the notch: inside the hull, outside the zone
        (ELL, (0.5, 0.35), True),  # on the notch's inner vertical edge
        (ELL, (0.5, 0.5), True),  # the reflex vertex
        (ELL, (0.65, 0.5), True),  # on the notch's inner horizontal edge
    ],
)
def test_point_in_zone(points: list[XY], point: XY, inside: bool) -> None:
    """A zone covers its interior, its edges and vertices, and nothing of a concave polygon's notch."""
    assert Zone("z", points).covers(point) is inside


def test_anchor_is_the_bottom_centre_normalised() -> None:
    """An object's position is the middle of its box's bottom edge, as fractions of the frame."""
    assert anchor((100.0, 50.0, 300.0, 540.0), 1920, 1080) == pytest.approx((200 / 1920, 0.5))


def test_zone_keeps_its_answer_across_a_resolution_change() -> None:
    """The same scene at 1920x1080 and at 640x360 (boxes scaled by 1/3) is in or out of a zone alike.

    1. A box whose bottom-centre lies on the zone's edge in 1080p, one inside, one outside.
    2. The same boxes in the 360p substream give the same answers.
    """
    zone = Zone("lower_half", [(0, 0.5), (1, 0.5), (1, 1), (0, 1)])
    boxes = {
        (900.0, 300.0, 1020.0, 540.0): True,  # on the edge
        (0.0, 700.0, 90.0, 1000.0): True,
        (10.0, 10.0, 90.0, 539.0): False,
    }
    for box, inside in boxes.items():
        small = (box[0] / 3, box[1] / 3, box[2] / 3, box[3] / 3)
        assert zone.covers(anchor(box, 1920, 1080)) is inside
        assert zone.covers(anchor(small, 640, 360)) is inside


# The gate runs left to right across the middle: its left is the upper half of the image.
GATE = ((0.2, 0.5), (0.8, 0.5))


@pytest.mark.parametrize(
    ("line", "path", "expected"),
    [
        (GATE, [(0.5, 0.4), (0.5, 0.6)], ["in"]),  # down the image: left -> right
        (GATE, [(0.5, 0.6), (0.5, 0.4)], ["out"]),  # up the image
        ((GATE[1], GATE[0]), [(0.5, 0.4), (0.5, 0.6)], ["out"]),  # the line drawn the other way round
        (((0.5, 0.0), (0.5, 1.0)), [(0.6, 0.5), (0.4, 0.5)], ["in"]),  # top-to-bottom line, right -> left
        (((0.5, 0.0), (0.5, 1.0)), [(0.4, 0.5), (0.6, 0.5)], ["out"]),
        (GATE, [(0.3, 0.3), (0.7, 0.7)], ["in"]),  # diagonal through the middle
        (GATE, [(0.5, 0.4), (0.5, 0.5)], []),  # ends exactly on the line: touching is no crossing
        (GATE, [(0.5, 0.4), (0.5, 0.5), (0.5, 0.4)], []),  # touches and turns back
        (GATE, [(0.5, 0.4), (0.5, 0.5), (0.5, 0.5), (0.6, 0.6)], ["in"]),  # touches, then goes on
        (GATE, [(0.5, 0.5), (0.5, 0.6)], []),  # starts on the line: no side to come from
        (GATE, [(0.1, 0.4), (0.1, 0.6)], []),  # passes beyond p1's end
        (GATE, [(0.9, 0.4), (0.9, 0.6)], []),  # passes beyond p2's end
        (GATE, [(0.15, 0.4), (0.35, 0.6)], ["in"]),  # a slanted move that meets the segment inside it
        (GATE, [(0.0, 0.45), (0.4, 0.65)], []),  # a slanted move that meets the line left of p1
        (GATE, [(0.2, 0.4), (0.2, 0.6)], ["in"]),  # through the end point p1 itself
        (GATE, [(0.5, 0.4), (0.5, 0.45), (0.5, 0.3)], []),  # stays on one side
        (GATE, [(0.5, 0.4), (0.5, 0.6), (0.5, 0.4)], ["in", "out"]),  # crosses twice
        (GATE, [(0.5, 0.4), (0.5, 0.6), (0.5, 0.4), (0.5, 0.6)], ["in", "out", "in"]),
        (GATE, [(0.1, 0.4), (0.1, 0.6), (0.5, 0.6), (0.5, 0.4)], ["out"]),  # around the end, back across
    ],
)
def test_line_crossing(line: tuple[XY, XY], path: list[XY], expected: list[str]) -> None:
    """A track's bottom-centre moving along `path` crosses the line in these directions."""
    crossings = LineCrossings(Line("gate", *line))
    got = [d for i, p in enumerate(path) if (d := crossings.update((0, 7), p, i / 10)) is not None]
    assert got == expected


def test_line_sides_follow_the_image() -> None:
    """Left of p1 -> p2 is the viewer's left when standing on p1 facing p2 on the image (y down)."""
    gate = Line("gate", *GATE)
    assert gate.side((0.5, 0.1)) == -1  # upper half: left
    assert gate.side((0.5, 0.9)) == 1
    assert gate.side((0.9, 0.5)) == 0  # on the infinite line, even beyond the segment


def test_tracks_are_followed_separately_and_forgotten() -> None:
    """Two tracks on the two sides of a line: each has its own last position; a forgotten track restarts.

    1. Track 1 above, track 2 below; then both cross: 1 goes in, 2 goes out.
    2. Track 1 is forgotten (the tracker removed it): its next position has nothing to cross from.
    """
    crossings = LineCrossings(Line("gate", *GATE))
    assert crossings.update((0, 1), (0.5, 0.4), 0.0) is None
    assert crossings.update((0, 2), (0.5, 0.6), 0.0) is None
    assert crossings.update((0, 1), (0.5, 0.6), 0.1) == "in"
    assert crossings.update((0, 2), (0.5, 0.4), 0.1) == "out"
    crossings.forget([(0, 1)])
    assert len(crossings) == 1
    assert crossings.update((0, 1), (0.5, 0.4), 0.2) is None


def test_the_same_id_from_a_new_tracker_is_another_track() -> None:
    """1. Track 3 of tracker generation 1 is above the line.
    2. The tracker is rebuilt (generation 2) and numbers a new object 3, below the line.
    3. That is no crossing: the new track 3 has no position before this one."""
    crossings = LineCrossings(Line("gate", *GATE))
    assert crossings.update((1, 3), (0.5, 0.4), 0.0) is None
    assert crossings.update((2, 3), (0.5, 0.6), 0.1) is None
    assert crossings.update((2, 3), (0.5, 0.4), 0.2) == "out"


def test_a_track_unseen_for_forget_after_s_is_forgotten_without_a_removal_notice() -> None:
    """1. Track 1 is above the line at t = 0, then its removal notice is lost.
    2. Track 2 goes on being seen; by 1.5 x forget_after_s of capture time track 1 is gone (the
       sweeps run every half of it), track 2 kept, and track 3, standing on the line since t = 5,
       is kept too: it is still seen.
    3. Track 1 seen again below the line then is no crossing (what it was is forgotten); track 3
       stepping off the line on the other side is."""
    crossings = LineCrossings(Line("gate", *GATE), forget_after_s=10.0)
    crossings.update((0, 1), (0.5, 0.4), 0.0)
    crossings.update((0, 3), (0.5, 0.4), 0.0)
    for i in range(1, 160):
        crossings.update((0, 2), (0.5, 0.6), i / 10)
        if i >= 50:
            crossings.update((0, 3), (0.5, 0.5), i / 10)  # on the line
    assert len(crossings) == 2
    assert crossings.update((0, 1), (0.5, 0.6), 16.0) is None
    assert crossings.update((0, 3), (0.5, 0.6), 16.0) == "in"


def test_crossing_keeps_its_answer_across_a_resolution_change() -> None:
    """A walk recorded at 1920x1080 and the same walk at 1280x720 give the same crossings."""
    gate = ((0.2, 0.5), (0.8, 0.5))
    boxes = [(900.0, 300.0, 1000.0, 500.0), (900.0, 340.0, 1000.0, 540.0), (900.0, 400.0, 1000.0, 600.0)]
    for width, height, scale in ((1920, 1080, 1.0), (1280, 720, 2 / 3)):
        crossings = LineCrossings(Line("gate", *gate))
        got = []
        for box in boxes:
            scaled = (box[0] * scale, box[1] * scale, box[2] * scale, box[3] * scale)
            got.append(crossings.update((0, 3), anchor(scaled, width, height), 0.0))
        assert got == [None, None, "in"], (width, height)
