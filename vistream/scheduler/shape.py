"""The batch shape: one model input (height, width) fitted to the cameras' frame sizes.

A YOLO model takes any input whose sides are multiples of its stride (32), and its cost grows with
the area. Letterboxing every frame into an `imgsz` square pads a 16:9 frame with 44% grey: at
imgsz 640 a 1920x1080 camera fills 640x360 of the 640x640 input. The smallest input that holds each
camera's letterbox at `imgsz` on its long side is that size rounded up to the stride (384x640 for
16:9, 480x640 for 4:3), and one shape that holds every camera's is the largest of those on each
side (480x640 for a mix of both). Every frame is scaled exactly as in the square, so the model sees
the same pixels and finds the same boxes, on less padding.

Ultralytics' predictor does the same (`LetterBox(auto=True)`), but only when every image of a batch
has the same size; a mix of cameras falls back to the square there. Here the shape is derived from
the cameras, so every batch of every mix gets it.

One shape for all cameras rather than one per group of cameras of the same aspect: a group shape
would split batches, and batching across cameras is what the scheduler is for. benchmarks/batch_shape.py
measures both (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Iterable

STRIDE = 32


def fitted_hw(width: int, height: int, imgsz: int, stride: int = STRIDE) -> tuple[int, int]:
    """(height, width) of the smallest input holding a width x height frame letterboxed with its
    long side scaled to `imgsz` (as `vistream.sources.letterbox` scales it): rounded up to `stride`."""
    scale = min(imgsz / width, imgsz / height)
    new_w, new_h = round(width * scale), round(height * scale)
    return _round_up(new_h, stride, imgsz), _round_up(new_w, stride, imgsz)


def batch_shape(
    sizes: Iterable[tuple[int, int]], imgsz: int | tuple[int, int], stride: int = STRIDE
) -> tuple[int, int]:
    """The (height, width) batches are letterboxed to, for cameras of frame `sizes` ((width, height)).

    `imgsz` as [height, width] is an explicit shape and wins; as one number it is the long side,
    and the shape is fitted to the cameras: the square while none has reported its size yet.
    """
    if not isinstance(imgsz, int):
        return imgsz[0], imgsz[1]
    fitted = [fitted_hw(w, h, imgsz, stride) for w, h in sizes if w > 0 and h > 0]
    if not fitted:
        return imgsz, imgsz
    return max(h for h, _ in fitted), max(w for _, w in fitted)


def _round_up(side: int, stride: int, limit: int) -> int:
    return min(limit, max(stride, -(-side // stride) * stride))
