"""Letterbox geometry: fit a camera frame into the model input, keep the aspect ratio.

Same arithmetic as Ultralytics' LetterBox (centred, grey 114 padding), so a
frame prepared here gives the model what its own predictor would. The
geometry is kept with the frame to map boxes back to camera pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    src_w: int
    src_h: int
    dst_w: int
    dst_h: int
    new_w: int  # size of the resized frame inside the model input
    new_h: int
    left: int  # padding, model pixels
    top: int
    scale: float  # model pixels per camera pixel

    def fill_padding(self, img: np.ndarray) -> None:
        """Paint the bands around the resized frame (they may hold an older frame's pixels)."""
        if self.top:
            img[: self.top] = PAD_VALUE
        if self.top + self.new_h < self.dst_h:
            img[self.top + self.new_h :] = PAD_VALUE
        if self.left:
            img[:, : self.left] = PAD_VALUE
        if self.left + self.new_w < self.dst_w:
            img[:, self.left + self.new_w :] = PAD_VALUE

    def inner(self, img: np.ndarray) -> np.ndarray:
        """The view of `img` the resized frame goes into."""
        return img[self.top : self.top + self.new_h, self.left : self.left + self.new_w]


@lru_cache(maxsize=64)
def letterbox(src_w: int, src_h: int, dst_w: int, dst_h: int) -> Letterbox:
    """The geometry of a src_w x src_h frame in a dst_w x dst_h input. The resized frame is at least
    1 px on each side: an extreme aspect ratio (8000x2, or 16x4000 in a landscape batch shape)
    rounds a side to 0, which swscale refuses, and a camera would never get a frame through."""
    if src_w <= 0 or src_h <= 0 or dst_w <= 0 or dst_h <= 0:
        raise ValueError(f"cannot letterbox {src_w}x{src_h} into {dst_w}x{dst_h}")
    scale = min(dst_w / src_w, dst_h / src_h)
    new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
    dw, dh = (dst_w - new_w) / 2, (dst_h - new_h) / 2
    return Letterbox(src_w, src_h, dst_w, dst_h, new_w, new_h, round(dw - 0.1), round(dh - 0.1), scale)


def boxes_to_camera(
    boxes: np.ndarray, scale: float, pad_x: float, pad_y: float, width: int, height: int
) -> np.ndarray:
    """Map (k, 4+) x1,y1,x2,y2 boxes from model-input pixels to camera pixels, clipped to the frame."""
    out = boxes[:, :4].astype(np.float32, copy=True)
    out[:, [0, 2]] = ((out[:, [0, 2]] - pad_x) / scale).clip(0, width)
    out[:, [1, 3]] = ((out[:, [1, 3]] - pad_y) / scale).clip(0, height)
    return out
