"""The batch shape fitted to the cameras: 16:9, 4:3, portrait, mixed, explicit, and the same scale."""

from __future__ import annotations

import pytest

from vistream.scheduler.shape import batch_shape, fitted_hw
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
