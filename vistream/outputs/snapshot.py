"""Snapshots: the JPEG of the very frame a result came from, with its boxes drawn.

The frame comes from the camera's ring (its snapshot plane, I420, at most
1280x720), held there by the scheduler until the main process has handled the
frame's result; no full frame travels through a queue. BGR is made here, only
for the frames that get a snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from vistream.ring.shm import FrameRing

MAX_WIDTH = 1280
JPEG_QUALITY = 85
COLOURS = ((0, 200, 255), (255, 160, 0), (80, 220, 80), (200, 80, 255), (60, 60, 255))  # BGR

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in camera pixels


def box_label(name: str, confidence: float) -> str:
    return f"{name} {confidence:.0%}"


def i420_to_bgr(plane: np.ndarray) -> np.ndarray:
    """A packed I420 (h*3/2, w) array, as the ring keeps it, to an (h, w, 3) BGR image."""
    return cv2.cvtColor(plane, cv2.COLOR_YUV2BGR_I420)


def read_snapshot(ring: FrameRing, seq: int) -> tuple[np.ndarray, int, int] | None:
    """(BGR image, camera width, camera height) of frame `seq`, or None when the ring lost it
    (counted in the ring's `snapshots_lost`). The frame's hold is left to the caller to release."""
    got = ring.read_plane(seq)
    if got is None:
        return None
    plane, meta = got
    return i420_to_bgr(plane), meta.width, meta.height


def snapshot_jpeg(
    ring: FrameRing, seq: int, boxes: Sequence[tuple[Box, str]], quality: int = JPEG_QUALITY
) -> bytes | None:
    """The JPEG of frame `seq` with `boxes` drawn, or None when the ring no longer has the frame."""
    got = read_snapshot(ring, seq)
    if got is None:
        return None
    return render_snapshot(*got, boxes=boxes, quality=quality)


def render_snapshot(
    image_bgr: np.ndarray,
    camera_w: int,
    camera_h: int,
    boxes: Sequence[tuple[Box, str]] = (),
    *,
    quality: int = JPEG_QUALITY,
    max_width: int = MAX_WIDTH,
) -> bytes:
    """Draw boxes (camera pixels, scaled to the image) with their labels; JPEG, at most `max_width` wide.

    The caller's image is left as it is."""
    h, w = image_bgr.shape[:2]
    if w > max_width:
        h, w = max(1, round(h * max_width / w)), max_width
        img = cv2.resize(image_bgr, (w, h), interpolation=cv2.INTER_AREA)
    else:
        img = image_bgr.copy()
    sx, sy = w / camera_w, h / camera_h
    thick = max(2, round(w / 640))
    for k, ((x1, y1, x2, y2), text) in enumerate(boxes):
        colour = COLOURS[k % len(COLOURS)]
        p1, p2 = (round(x1 * sx), round(y1 * sy)), (round(x2 * sx), round(y2 * sy))
        cv2.rectangle(img, p1, p2, colour, thick)
        if text:
            _label(img, text, p1, colour, thick)
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return jpeg.tobytes()


def _label(
    img: np.ndarray, text: str, corner: tuple[int, int], colour: tuple[int, int, int], thick: int
) -> None:
    """Text on a filled band above the box's top-left corner (inside the box when there is no room)."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, img.shape[1] / 1600
    weight = max(1, thick // 2)
    (tw, th), base = cv2.getTextSize(text, font, scale, weight)
    x = min(max(0, corner[0]), max(0, img.shape[1] - tw - 4))
    top = corner[1] - th - base - 4
    if top < 0:
        top = max(0, corner[1])
    cv2.rectangle(img, (x, top), (x + tw + 4, top + th + base + 4), colour, cv2.FILLED)
    cv2.putText(img, text, (x + 2, top + th + 2), font, scale, (0, 0, 0), weight, cv2.LINE_AA)
