"""How many of one run's boxes another run finds: for checking that a faster setting detects the same."""

from __future__ import annotations

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every x1,y1,x2,y2 box of `a` (k, 4+) with every one of `b` (m, 4+): (k, m)."""
    a, b = a[:, None, :4], b[None, :, :4]
    w = (np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])).clip(0)
    h = (np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])).clip(0)
    inter = w * h
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def matched(reference: np.ndarray, candidate: np.ndarray, min_iou: float = 0.5) -> int:
    """How many reference boxes have a candidate box of IoU >= `min_iou`, each candidate used once
    (greedy, best pairs first, as detection benchmarks match)."""
    if not len(reference) or not len(candidate):
        return 0
    iou = iou_matrix(reference, candidate)
    used_r: set[int] = set()
    used_c: set[int] = set()
    for r, c in zip(*np.unravel_index(np.argsort(-iou, axis=None), iou.shape), strict=True):
        if iou[r, c] < min_iou:
            break
        if r not in used_r and c not in used_c:
            used_r.add(int(r))
            used_c.add(int(c))
    return len(used_r)
