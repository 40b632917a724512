"""Letterbox geometry and mapping boxes back to camera pixels."""

from __future__ import annotations

import av
import numpy as np
import pytest

from vistream.sources.letterbox import PAD_VALUE, boxes_to_camera, letterbox


@pytest.mark.parametrize(
    ("src", "dst", "inner", "pad"),
    [
        ((1920, 1080), (640, 640), (640, 360), (0, 140)),
        ((640, 480), (640, 640), (640, 480), (0, 80)),
        ((810, 1080), (640, 640), (480, 640), (80, 0)),
        ((1280, 720), (640, 384), (640, 360), (0, 12)),
        ((640, 640), (640, 640), (640, 640), (0, 0)),
    ],
)
def test_geometry_matches_ultralytics(src, dst, inner, pad) -> None:  # type: ignore[no-untyped-def]
    """Same scale, inner size and centred padding as Ultralytics' LetterBox(auto=False)."""
    g = letterbox(*src, *dst)
    assert (g.new_w, g.new_h) == inner
    assert (g.left, g.top) == pad


def test_fill_padding_paints_only_the_bands() -> None:
    g = letterbox(1920, 1080, 640, 640)
    img = np.zeros((640, 640, 3), np.uint8)
    g.fill_padding(img)
    assert (img[:140] == PAD_VALUE).all() and (img[500:] == PAD_VALUE).all()
    assert (g.inner(img) == 0).all()


def test_boxes_map_back_to_camera_pixels_and_are_clipped() -> None:
    """A box drawn in the model input comes back in the camera's own pixels, clipped to its frame."""
    g = letterbox(1920, 1080, 640, 640)
    model_boxes = np.array([[100, 140 + 30, 200, 140 + 90, 0.9, 0], [600, 100, 700, 600, 0.5, 2]], np.float32)
    cam = boxes_to_camera(model_boxes, g.scale, g.left, g.top, 1920, 1080)
    np.testing.assert_allclose(cam[0], [300, 90, 600, 270], atol=0.01)
    assert cam[1, 0] == pytest.approx(1800) and cam[1, 2] == 1920 and cam[1, 1] == 0 and cam[1, 3] == 1080


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ((8000, 2), (640, 640)),  # 640 x 0.16
        ((16, 4000), (640, 32)),  # a portrait sliver in the flattest batch shape: 0.128 x 32
        ((4000, 2), (640, 384)),
        ((2, 8000), (384, 640)),
        ((4000, 16), (640, 384)),
    ],
)
def test_an_extreme_aspect_ratio_never_gives_an_empty_letterbox(src, dst) -> None:  # type: ignore[no-untyped-def]
    """The resized frame keeps at least 1 px a side (swscale refuses 0) and stays inside the input;
    the reader's scaler then fills it."""
    from vistream.sources.reader import FrameScaler, _rgb_view

    g = letterbox(*src, *dst)
    assert 1 <= g.new_w <= dst[0] and 1 <= g.new_h <= dst[1]
    img = np.zeros((dst[1], dst[0], 3), np.uint8)
    frame = av.VideoFrame(*src, "yuv420p")
    g.inner(img)[...] = _rgb_view(FrameScaler().model(frame, g.new_w, g.new_h))
    g.fill_padding(img)


def test_an_empty_frame_or_input_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot letterbox"):
        letterbox(0, 10, 640, 640)
