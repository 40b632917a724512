"""`backend: tensorrt`: a TensorRT engine on CUDA, run by Ultralytics' AutoBackend.

A .pt model is exported once (through the ONNX Ultralytics builds it from) into the export
cache, for the configured input shape and a dynamic batch of up to `batching.max_batch`, in fp16
unless `model.precision: fp32`; a .engine file is run as it is. Engines are tied to the GPU, TensorRT
and CUDA versions they were built with: the cache key holds the Ultralytics version, and an engine
that no longer loads is rebuilt (see `load_detector`).
"""

from __future__ import annotations

from vistream.config.models import ModelConfig
from vistream.detector.base import ModelLoadError
from vistream.detector.export import BrokenExport
from vistream.detector.ultralytics import (
    AutoBackendDetector,
    _import_ultralytics,
    half_precision,
    model_file,
)


class TensorRtDetector(AutoBackendDetector):
    backend = "tensorrt"

    def __init__(self, cfg: ModelConfig, max_batch: int, *, rebuild: bool = False) -> None:
        torch, _, _ = _import_ultralytics()
        if cfg.device == "cpu" or not torch.cuda.is_available():
            raise ModelLoadError("model.backend: 'tensorrt' needs a CUDA GPU (none is available)")
        device = "cuda:0" if cfg.device in ("auto", "cuda") else cfg.device
        half = half_precision(cfg, "tensorrt", cuda=True)
        path, exported = model_file(
            cfg, "tensorrt", "engine", ("engine",), max_batch, half, device, rebuild=rebuild
        )
        try:
            self.model = self._load_autobackend(str(path), device, half)
        except ModelLoadError as exc:
            if exported:  # a cached engine is built again
                raise BrokenExport(str(exc)) from exc
            raise
        self._setup_loaded(cfg, max_batch, device)
        # An engine built without a dynamic profile runs the one input size it was built for.
        backend = getattr(self.model, "backend", self.model)
        if not (getattr(backend, "dynamic", False) or self.model.metadata.get("dynamic")):
            self.fixed_input = cfg.input_hw
        self.describe("engine", str(path))
