"""The batch shape fitted to the cameras: 16:9, 4:3, portrait, mixed, explicit, and the same scale."""

from __future__ import annotations

import pytest

from vistream.scheduler.shape import ShapeFit, batch_shape, fitted_hw
from vistream.sources.letterbox import letterbox


@pytest.mark.parametrize(
    ("sizes", "imgsz", "want"),
    [
        ([(1920, 1080)], 640, (384, 640)),  # 16:9: 640x360 rounded up to the stride
        ([(1280, 720)], 640, (384, 640)),
        ([(640, 480)], 640, (480, 640)),  # 4:3 fills its shape exactly
        ([(1080, 1920)], 640, (640, 384)),  # portrait: the long side is the height
        ([(1920, 1080), (640, 480)], 640, (480, 640)),  # mixed: one shape holds both letterboxes
        ([(1920, 1080), (1080, 1920)], 640, (640, 640)),  # landscape and portrait: the square
        ([(1920, 1080)], 320, (192, 320)),  # 320x180 -> 192
        ([(704, 576)], 640, (544, 640)),  # D1 PAL: 640x523.6 -> 524 -> 544
        ([(100, 100)], 640, (640, 640)),  # small frames are scaled up, as by Ultralytics
        ([(4000, 100)], 640, (32, 640)),  # never less than one stride
    ],
)
def test_fitted_shape(sizes: list[tuple[int, int]], imgsz: int, want: tuple[int, int]) -> None:
    assert batch_shape(sizes, imgsz) == want


def test_explicit_shape_wins() -> None:
    assert batch_shape([(1920, 1080)], (640, 640)) == (640, 640)
    assert batch_shape([(640, 480)], (320, 640)) == (320, 640)
    assert batch_shape([], (320, 640)) == (320, 640)


def test_square_until_a_camera_reports_its_size() -> None:
    assert batch_shape([], 640) == (640, 640)
    assert batch_shape([(0, 0)], 640) == (640, 640)  # a camera that never connected
    assert batch_shape([(0, 0), (1920, 1080)], 640) == (384, 640)


SIZES = [(1920, 1080), (1280, 720), (640, 480), (1080, 1920), (704, 576), (2592, 1944)]


@pytest.mark.parametrize("size", SIZES)
def test_fitted_shape_scales_every_frame_as_the_square_does(size: tuple[int, int]) -> None:
    """The model sees the same pixels: the frame is resized to the same size at the same scale,
    only with less padding around it (so the boxes are the same)."""
    w, h = size
    fh, fw = fitted_hw(w, h, 640)
    square, fitted = letterbox(w, h, 640, 640), letterbox(w, h, fw, fh)
    assert (fitted.new_w, fitted.new_h, fitted.scale) == (square.new_w, square.new_h, square.scale)
    assert fh % 32 == 0 and fw % 32 == 0 and fh - fitted.new_h < 32 and fw - fitted.new_w < 32


LAND, PORT = (1280, 720), (720, 1280)
HOLD = 20.0


def test_a_camera_flipping_portrait_and_landscape_never_refits() -> None:
    """1. Cameras a (landscape) and b (landscape) start: 384x640 at once.
    2. b flips to portrait and back every 2 s for a minute: the square would be the better fit for
       2 s at a time, never for `hold_s`, so the shape stays (b is letterboxed into it meanwhile)."""
    fit = ShapeFit(640, HOLD)
    assert fit.decide(0.0, {"a": LAND, "b": LAND}) == (384, 640)
    for step in range(30):
        t = 2.0 + 2.0 * step
        b = PORT if step % 2 == 0 else LAND
        assert fit.decide(t, {"a": LAND, "b": b}) == (384, 640)
        assert fit.decide(t + 1.9, {"a": LAND, "b": b}) == (384, 640)


def test_a_new_shape_is_adopted_once_it_held() -> None:
    """1. b turns portrait at t=10: the square is pending, not adopted, up to t=10+hold.
    2. At t=10+hold it is adopted.
    3. b back to landscape at t=100: 384x640 again only at t=100+hold.
    4. A flip back before the hold ends starts the wait over."""
    fit = ShapeFit(640, HOLD)
    fit.decide(0.0, {"a": LAND, "b": LAND})
    assert fit.decide(10.0, {"a": LAND, "b": PORT}) == (384, 640) and fit.pending == (640, 640)
    assert fit.decide(10.0 + HOLD - 0.1, {"a": LAND, "b": PORT}) == (384, 640)
    assert fit.decide(10.0 + HOLD, {"a": LAND, "b": PORT}) == (640, 640) and fit.pending is None
    assert fit.decide(100.0, {"a": LAND, "b": LAND}) == (640, 640)
    assert fit.decide(100.0 + HOLD, {"a": LAND, "b": LAND}) == (384, 640)
    fit.decide(200.0, {"a": LAND, "b": PORT})
    fit.decide(205.0, {"a": LAND, "b": LAND})  # back to the current fit: the wait is over
    assert fit.decide(215.0, {"a": LAND, "b": PORT}) == (384, 640)
    assert fit.decide(215.0 + HOLD - 1, {"a": LAND, "b": PORT}) == (384, 640)


@pytest.mark.parametrize(
    ("before", "after", "want"),
    [
        ({"a": LAND}, {"a": LAND, "b": PORT}, (640, 640)),  # a camera added
        ({"a": LAND, "b": PORT}, {"a": LAND}, (384, 640)),  # a camera removed
        ({"a": LAND, "b": (0, 0)}, {"a": LAND, "b": PORT}, (640, 640)),  # b's first frame
        ({"a": (0, 0)}, {"a": (640, 480)}, (480, 640)),  # the square until the first frame
    ],
)
def test_changes_of_the_cameras_refit_at_once(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], want: tuple[int, int]
) -> None:
    fit = ShapeFit(640, HOLD)
    fit.decide(0.0, before)
    assert fit.decide(0.1, after) == want


def test_no_hold_refits_at_once_and_an_explicit_shape_never_moves() -> None:
    fit = ShapeFit(640, 0.0)
    fit.decide(0.0, {"a": LAND})
    assert fit.decide(0.0, {"a": PORT}) == (640, 384)
    explicit = ShapeFit((320, 640), HOLD)
    assert explicit.decide(0.0, {"a": PORT}) == (320, 640)
    assert explicit.decide(99.0, {"a": LAND}) == (320, 640)


def test_the_scheduler_keeps_its_shape_while_a_camera_flips() -> None:
    """The scheduler with a fake model, fake clock and real rings (test_scheduler's Rig):
    1. Cameras a and b report 1280x720: the model is warmed at 96x128 (IMGSZ 128).
    2. b flips to 720x1280 and back every 2 s for 40 s while both cameras write frames: no second
       warm-up, every frame of a is inferred, none dropped as `reshape`.
    3. b stays portrait: after `reshape_after_s` the square is adopted, once."""
    from unit.test_scheduler import IMGSZ, Rig

    rig = Rig()
    try:
        s = rig.start()
        for cam in ("a", "b"):
            rig.rings[cam].header["stream_width"], rig.rings[cam].header["stream_height"] = LAND
        s.fit_shape()
        assert rig.detector.input_hw == (96, 128) and rig.detector.warmups == [(96, 128)]
        hold = rig.spec.batching.reshape_after_s
        for step in range(20):
            rig.clock.t += 2.0
            hdr = rig.rings["b"].header
            hdr["stream_width"], hdr["stream_height"] = PORT if step % 2 == 0 else LAND
            s.fit_shape()
            rig.write("a"), rig.write("b")
            s.step()
        assert rig.detector.warmups == [(96, 128)] and s.stats.reshapes == 1
        assert rig.counts("a").inferred == 20 and rig.counts("a").reshape == 0
        rig.rings["b"].header["stream_width"], rig.rings["b"].header["stream_height"] = PORT
        rig.clock.t += 1.0
        s.fit_shape()
        rig.clock.t += hold - 0.5
        s.fit_shape()
        assert rig.detector.input_hw == (96, 128)
        rig.clock.t += 0.5
        s.fit_shape()
        assert rig.detector.input_hw == (IMGSZ, IMGSZ) and s.stats.reshapes == 2
    finally:
        rig.close()
