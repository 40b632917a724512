"""`backend: onnxruntime`: the model as ONNX on ONNX Runtime (CPU; CUDA with onnxruntime-gpu).

A .pt model is exported once into the export cache (dynamic batch and input size); an .onnx file
is run as it is. `model.threads` sets the intra-op pool (one inter-op thread: a YOLO graph is a
chain), so inference leaves the readers the cores it is told to.
"""

from __future__ import annotations

import ast
from typing import Any

import numpy as np

from vistream.config.models import ModelConfig
from vistream.detector.base import ModelLoadError
from vistream.detector.export import BrokenExport
from vistream.detector.openvino import check_input
from vistream.detector.ultralytics import (
    YoloDetector,
    _import_ultralytics,
    half_precision,
    import_runtime,
    model_file,
)


class OnnxRuntimeDetector(YoloDetector):
    backend = "onnxruntime"

    def __init__(self, cfg: ModelConfig, max_batch: int, *, rebuild: bool = False) -> None:
        ort = import_runtime("onnxruntime", "onnxruntime")
        torch, _, _ = _import_ultralytics()
        cuda = cfg.device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers()
        cuda = cuda and torch.cuda.is_available()
        if cfg.device.startswith("cuda") and not cuda:
            raise ModelLoadError(f"model.device: {cfg.device!r} needs CUDA and onnxruntime-gpu")
        device = ("cuda:0" if cfg.device in ("auto", "cuda") else cfg.device) if cuda else "cpu"
        half = half_precision(cfg, "onnxruntime", cuda)
        path, exported = model_file(
            cfg, "onnxruntime", "onnx", ("onnx",), max_batch, half, device, rebuild=rebuild
        )
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        if cfg.threads is not None:
            options.intra_op_num_threads = cfg.threads
        providers: list[Any] = ["CPUExecutionProvider"]
        if cuda:
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(device.partition(":")[2] or 0)}))
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            error = BrokenExport if exported else ModelLoadError  # a cached export is built again
            raise error(f"model.path: ONNX Runtime cannot load {path}: {exc}") from exc
        meta = self._session.get_modelmeta().custom_metadata_map
        if "names" not in meta:
            raise ModelLoadError(f"model.path: {path} carries no class names (export it with Ultralytics)")
        names = {int(k): str(v) for k, v in ast.literal_eval(meta["names"]).items()}
        inp = self._session.get_inputs()[0]
        shape = [d if isinstance(d, int) else None for d in inp.shape]
        check_input(shape, max_batch, cfg.input_hw, path.name)
        fixed_hw = shape[2:] != [None, None]  # an export with a static input size takes that one only
        self._static_batch = shape[0]
        self._in_name = inp.name
        self._fp16_input = inp.type == "tensor(float16)"
        self._setup(cfg, max_batch, names, device=device, half=self._fp16_input)
        self.fixed_input = cfg.input_hw if fixed_hw else None
        self.describe(f"onnx, onnxruntime {ort.__version__}, {self._session.get_providers()[0]}", str(path))

    def _forward(self, x: Any) -> np.ndarray:
        n = len(x)
        if self._static_batch is not None and n < self._static_batch:
            x = self._input  # a fixed batch (= max_batch): rows past n are left over, dropped after
        arr = x.cpu().numpy()  # a view on the CPU; one copy from a GPU
        return self._session.run(None, {self._in_name: arr})[0][:n]

    def close(self) -> None:
        del self._session
