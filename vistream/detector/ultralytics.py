"""YOLO detection through Ultralytics' AutoBackend: .pt on torch, and exported formats.

The daemon does its own preprocessing (letterbox and colour conversion in the
reader processes), so only the model and NMS are taken from Ultralytics, not
its predictor with its per-call image handling.

Device path: the scheduler fills `input_buffer`, a view of a host tensor that
is pinned on CUDA. One non-blocking copy moves the uint8 batch to a
preallocated device tensor; the NHWC -> NCHW reorder, the cast to fp16/fp32
and the 1/255 scaling happen on the device into a second preallocated tensor,
so a batch allocates nothing and crosses PCIe at a quarter of the float size.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from vistream.config.models import ModelConfig
from vistream.detector.base import Detector, ModelConfigError, ModelLoadError

log = logging.getLogger(__name__)

# Which AutoBackend formats each `model.backend` value stands for.
BACKEND_FORMATS = {
    "torch": {"pt", "torchscript"},
    "onnxruntime": {"onnx"},
    "openvino": {"openvino"},
    "tensorrt": {"engine"},
}


def _import_ultralytics() -> tuple[Any, Any, Any]:
    # A daemon must not pip-install packages behind the operator's back, which
    # Ultralytics does by default when an export's runtime is missing.
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    import torch

    # AutoBackend and `ultralytics.utils.nms` (with its `end2end` argument) are what 8.4 offers;
    # pyproject.toml pins the 8.4 releases these were tested with.
    from ultralytics.nn.autobackend import AutoBackend
    from ultralytics.utils.nms import non_max_suppression

    return torch, AutoBackend, non_max_suppression


def select_device(requested: str, cuda_available: bool) -> str:
    """Resolve `model.device`: `auto` means the first GPU when there is one."""
    if requested == "auto":
        return "cuda:0" if cuda_available else "cpu"
    if requested.startswith("cuda") and not cuda_available:
        raise ModelLoadError(f"model.device: {requested!r} requested but CUDA is not available")
    return "cuda:0" if requested == "cuda" else requested


def class_ids(classes: list[str | int] | None, names: dict[int, str]) -> list[int] | None:
    """Translate `model.classes` (names or ids) into class ids of this model."""
    if classes is None:
        return None
    by_name = {v: k for k, v in names.items()}
    ids = []
    for i, c in enumerate(classes):
        if isinstance(c, int) and c in names:
            ids.append(c)
        elif isinstance(c, str) and c in by_name:
            ids.append(by_name[c])
        else:
            raise ModelConfigError(f"model.classes[{i}]: unknown class {c!r} for this model")
    return ids


class UltralyticsDetector(Detector):
    def __init__(self, cfg: ModelConfig, max_batch: int) -> None:
        torch, AutoBackend, self._nms = _import_ultralytics()
        self._torch = torch
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.device = select_device(cfg.device, torch.cuda.is_available())
        dev = torch.device(self.device)
        cuda = dev.type == "cuda"
        self.half = cuda if cfg.half is None else cfg.half and cuda

        try:
            self.model = AutoBackend(cfg.path, device=dev, fp16=self.half, fuse=True, verbose=False)
        except Exception as exc:  # Ultralytics raises anything from FileNotFoundError to download errors
            raise ModelLoadError(f"model.path: cannot load {cfg.path!r}: {exc}") from exc
        # The format AutoBackend chose, from its public `format` attribute (8.4), not from the
        # private `_model_type` helper: checked after loading, which a wrong backend costs once.
        fmt = str(self.model.format)
        if cfg.backend != "auto" and fmt not in BACKEND_FORMATS[cfg.backend]:
            raise ModelConfigError(
                f"model.backend: {cfg.backend!r} cannot run {Path(cfg.path).name!r} ({fmt} format)"
            )
        self.model.eval()
        self.half = bool(self.model.fp16)
        self.names = dict(self.model.names)
        self._classes = class_ids(cfg.classes, self.names)
        self._end2end = bool(getattr(self.model, "end2end", False))

        h, w = cfg.input_hw
        dtype = torch.float16 if self.half else torch.float32
        host = torch.empty((max_batch, h, w, 3), dtype=torch.uint8)
        if cuda:
            host = host.pin_memory()
            self._staging = torch.empty((max_batch, h, w, 3), dtype=torch.uint8, device=dev)
        else:
            self._staging = host
        # On the CPU, NCHW in channels-last memory: the reorder from NHWC is then a
        # straight copy, and it is the layout AutoBackend gives the model on x86 CPUs.
        # On CUDA the model keeps the default layout, and so does its input.
        layout = torch.contiguous_format if cuda else torch.channels_last
        self._input = torch.empty((max_batch, 3, h, w), dtype=dtype, device=dev, memory_format=layout)
        self._host = host
        self.input_buffer = host.numpy()
        self._cuda = cuda
        log.info(
            "model %s loaded: format %s, device %s%s, %d classes, input %dx%d, batches up to %d",
            cfg.path, fmt, self.device, " fp16" if self.half else "", len(self.names), w, h, max_batch,
        )  # fmt: skip

    def infer(self, n: int) -> list[np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            if self._cuda:
                self._staging[:n].copy_(self._host[:n], non_blocking=True)
            x = self._input[:n]
            x.copy_(self._staging[:n].permute(0, 3, 1, 2))
            x.mul_(1 / 255)
            preds = self.model(x)
            out = self._nms(
                preds,
                self.cfg.conf,
                self.cfg.iou,
                self._classes,
                max_det=self.cfg.max_det,
                end2end=self._end2end,
            )
            return [o.float().cpu().numpy() for o in out]

    def close(self) -> None:
        del self.model
        if self._cuda:
            self._torch.cuda.empty_cache()
