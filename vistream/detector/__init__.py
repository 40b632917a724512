"""Model backends behind one small interface (`Detector`), chosen by `model.backend`.

One module per backend: `pytorch` (torch), `openvino`, `onnxruntime`, `tensorrt`, `triton` (a model
on a Triton Inference Server; `triton_export` writes its model repository entry); `ultralytics`
holds what they share (preprocessing, NMS, exports) and `export` the export cache. Importing this
package imports no runtime, nor torch: only the scheduler process, which owns the model, pays for it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vistream.detector.base import (
    FAULT_FILE_ENV,
    BackendUnavailable,
    Detector,
    FaultHook,
    ModelConfigError,
    ModelLoadError,
    Ticket,
)

if TYPE_CHECKING:
    from vistream.config.models import ModelConfig

__all__ = [
    "BackendUnavailable",
    "Detector",
    "ModelConfigError",
    "ModelLoadError",
    "Ticket",
    "load_detector",
    "resolve_backend",
]

log = logging.getLogger(__name__)

# backend -> (module in this package, class, the Python module it needs, the extra that installs it)
BACKENDS = {
    "torch": ("pytorch", "TorchDetector", "torch", None),
    "openvino": ("openvino", "OpenVinoDetector", "openvino", "openvino"),
    "onnxruntime": ("onnxruntime", "OnnxRuntimeDetector", "onnxruntime", "onnxruntime"),
    "tensorrt": ("tensorrt", "TensorRtDetector", "tensorrt", "tensorrt"),
    "triton": ("triton", "TritonDetector", "tritonclient", "triton"),
}
# The backend an exported model file can only run on.
FORMAT_BACKENDS = {
    "onnx": "onnxruntime",
    "openvino": "openvino",
    "engine": "tensorrt",
    "torchscript": "torch",
}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_backend(path: str, backend: str, device: str, cuda: bool, has=installed) -> str:
    """The backend `model.backend: auto` stands for (any other value is returned as it is).

    A Triton URL (grpc://, http://) runs on triton. An exported file runs on its own runtime. A .pt
    model: on CUDA, TensorRT when it is installed, else torch (fp16); on a CPU, OpenVINO when it is
    installed (1.7-3.5x torch on a 2-core x86, see docs/architecture.md), else torch.
    """
    from vistream.config.models import is_triton_url
    from vistream.detector.ultralytics import model_format

    if backend != "auto":
        return backend
    if is_triton_url(path):
        return "triton"
    fmt = model_format(path)
    if fmt != "pt":
        return FORMAT_BACKENDS[fmt]
    on_cuda = device.startswith("cuda") or (device == "auto" and cuda)
    if on_cuda:
        return "tensorrt" if has("tensorrt") else "torch"
    if device in ("auto", "cpu") and has("openvino"):
        return "openvino"
    return "torch"


def missing_runtime(backend: str) -> str | None:
    """One line naming the extra to install when the runtime of `backend` is not importable."""
    _, _, module, extra = BACKENDS[backend]
    if installed(module):
        return None
    from vistream.detector.ultralytics import runtime_missing

    return runtime_missing(backend, module, extra or module)


def load_detector(cfg: ModelConfig, max_batch: int) -> Detector:
    """Load the configured model, ready for batches of up to `max_batch` frames."""
    detector = _load_backend(cfg, max_batch)
    fault_file = os.environ.get(FAULT_FILE_ENV)
    if fault_file:  # tests only: batches hang or raise when this file says so
        log.warning("test hook: batches hang or raise as %s says (%s)", fault_file, FAULT_FILE_ENV)
        detector = FaultHook(detector, Path(fault_file))
    return detector


def _load_backend(cfg: ModelConfig, max_batch: int) -> Detector:
    from vistream.detector.export import BrokenExport
    from vistream.detector.ultralytics import quiet_ultralytics

    quiet_ultralytics()
    cuda = cfg.device != "cpu" and cfg.backend != "triton" and _cuda_available()
    backend = resolve_backend(cfg.path, cfg.backend, cfg.device, cuda)
    if problem := missing_runtime(backend):
        raise ModelLoadError(problem)
    cls = backend_class(backend)
    try:
        return cls(cfg, max_batch)
    except BrokenExport as exc:
        log.warning("%s; exporting the model again", exc)
        return cls(cfg, max_batch, rebuild=True)


def backend_class(backend: str) -> Any:
    module, cls_name, _, _ = BACKENDS[backend]
    return getattr(importlib.import_module(f"vistream.detector.{module}"), cls_name)


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())
