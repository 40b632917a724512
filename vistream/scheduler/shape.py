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


class ShapeFit:
    """Which batch shape to run now: `batch_shape` of the cameras, with hysteresis.

    A refit costs every camera: the batches in flight are drained, the model is reshaped and warmed
    up again (a second or more on a CPU), and the frames the readers letterboxed for the old shape
    are dropped (`reshape`). A camera whose stream alternates portrait and landscape would make the
    scheduler refit at every change and stall everyone's inference. So a new shape is adopted only
    once it has been the better fit for `hold_s` without a break; meanwhile every camera's frames are
    letterboxed into the current shape (which holds any frame, only smaller than it could be).

    Changes of the set of cameras with a known size (a camera added or removed, a camera's first
    frame) are applied at once: those are the operator's doing or start-up, not a stream's.
    """

    def __init__(self, imgsz: int | tuple[int, int], hold_s: float, stride: int = STRIDE) -> None:
        self.imgsz, self.hold_s, self.stride = imgsz, hold_s, stride
        self.current: tuple[int, int] | None = None
        self.pending: tuple[int, int] | None = None  # the better fit, waiting out `hold_s`
        self._since = 0.0  # since when `pending` has been the better fit
        self._known: frozenset[str] = frozenset()
        self._sizes: dict[str, tuple[int, int]] | None = None
        self._want: tuple[int, int] = (0, 0)

    def decide(self, now: float, sizes: dict[str, tuple[int, int]]) -> tuple[int, int]:
        """The (height, width) to run at `now`, for cameras of stream `sizes` (name -> (width, height),
        (0, 0) for one that has not reported its size yet)."""
        if sizes != self._sizes:
            self._sizes = dict(sizes)
            self._want = batch_shape(sizes.values(), self.imgsz, self.stride)
        want = self._want
        known = frozenset(name for name, (w, h) in sizes.items() if w > 0 and h > 0)
        if self.current is None or known != self._known:
            self._known = known
            self.current, self.pending = want, None
        elif want == self.current:
            self.pending = None
        else:
            if want != self.pending:
                self.pending, self._since = want, now
            if now - self._since >= self.hold_s:
                self.current, self.pending = want, None
        return self.current
