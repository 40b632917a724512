"""`backend: torch`: the .pt model on PyTorch, through Ultralytics' AutoBackend."""

from __future__ import annotations

from vistream.config.models import ModelConfig
from vistream.detector.ultralytics import (
    BACKEND_FORMATS,
    AutoBackendDetector,
    _import_ultralytics,
    half_precision,
    select_device,
    wrong_format,
)


class TorchDetector(AutoBackendDetector):
    backend = "torch"

    def __init__(self, cfg: ModelConfig, max_batch: int) -> None:
        torch, _, _ = _import_ultralytics()
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        device = select_device(cfg.device, torch.cuda.is_available())
        cuda = device.startswith("cuda")
        half = half_precision(cfg, "torch", cuda)
        self.model = self._load_autobackend(cfg.path, device, half)
        # The format AutoBackend chose, from its public `format` attribute (8.4), not from the
        # private `_model_type` helper: checked after loading, which a wrong backend costs once.
        fmt = str(self.model.format)
        if fmt not in BACKEND_FORMATS["torch"]:
            raise wrong_format("torch", cfg.path, fmt)
        # On the CPU, NCHW in channels-last memory: the reorder from NHWC is then a straight copy,
        # and it is the layout AutoBackend gives the model on x86 CPUs. On CUDA the model keeps the
        # default layout, and so does its input.
        self._setup_loaded(cfg, max_batch, device, channels_last=not cuda)
        if fmt == "torchscript":  # traced at its export size
            self.fixed_input = cfg.input_hw
        self.describe(fmt, cfg.path)
