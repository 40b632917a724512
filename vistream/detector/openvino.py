"""`backend: openvino`: the model on Intel's OpenVINO runtime, on the CPU.

A .pt model is exported once into the export cache (dynamic batch and input size); an existing
`*_openvino_model/` directory, its .xml, or an .onnx file (which OpenVINO reads directly) are run
as they are. The model is compiled with `INFERENCE_NUM_THREADS` from `model.threads`, so the
inference pool leaves the readers the cores it is told to, and the LATENCY hint: one synchronous
request uses every thread it has on one batch. (Splitting a batch over asynchronous requests in
THROUGHPUT streams measured 6% faster at batch 4 on 2 cores, not enough for its risk: see `STREAMS`.)

The model takes the batch as the scheduler fills it: uint8 RGB rows, NHWC. OpenVINO's
`PrePostProcessor` compiles the conversion to float, the 1/255 scale and the reorder to NCHW into
the model (`uint8_input`), where they run on the inference threads fused with the first layer, and
the batch is read in place (`share_inputs`): no float copy of it is made in Python or torch.
"""

from __future__ import annotations

import ast
import importlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vistream.config.models import ModelConfig
from vistream.detector.base import ModelConfigError, ModelLoadError
from vistream.detector.export import BrokenExport
from vistream.detector.ultralytics import (
    YoloDetector,
    import_runtime,
    model_file,
)

log = logging.getLogger(__name__)


def model_xml(path: Path) -> Path:
    if path.is_dir():
        found = sorted(path.glob("*.xml"))
        if not found:
            raise ModelLoadError(f"model.path: no .xml model in {path}")
        return found[0]
    return path


def read_names(xml: Path) -> dict[int, str] | None:
    """Class names from the metadata.yaml Ultralytics writes beside an OpenVINO export."""
    meta = xml.parent / "metadata.yaml"
    if not meta.is_file():
        return None
    names = (yaml.safe_load(meta.read_text()) or {}).get("names")
    if isinstance(names, str):
        names = ast.literal_eval(names)
    return {int(k): str(v) for k, v in names.items()} if isinstance(names, dict) else None


def check_input(shape: Any, max_batch: int, hw: tuple[int, int], name: str) -> None:
    """A static dimension of the model input that does not fit the daemon's batches is a config error."""
    want = (max_batch, 3, *hw)
    for dim, need in zip(shape, want, strict=True):
        if dim is not None and dim != need:
            raise ModelConfigError(
                f"model.path: {name} has a fixed input {shape}, the daemon needs batches up to "
                f"{max_batch} at {hw[0]}x{hw[1]}: export it with dynamic=True (or give the .pt file)"
            )


# Asynchronous streams a batch is spread over (see `OpenVinoDetector`); 1: one synchronous request
# per batch. Measured on 2 cores (benchmarks/openvino_streams.py): 2 async streams did 70 img/s at
# batch 4 against 66 synchronously, the same at batch 1. Not worth it: Ultralytics went back to
# synchronous requests after AsyncInferQueue hung on Intel and AMD CPUs
# (https://github.com/ultralytics/ultralytics/issues/25923), and a daemon that hangs loses more.
STREAMS = 1


# `model.precision` -> INFERENCE_PRECISION_HINT, and back for what the compiled model reports.
OV_PRECISION = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}


def auto_precision(core: Any, device: str) -> str:
    """What `model.precision: auto` asks OpenVINO for: bf16 where the CPU plugin defaults to it (CPUs
    with AMX), fp32 everywhere else (also on ARM, where the plugin's default is f16). On a 2-core
    Xeon with AMX bf16 ran the model 2.27x as fast as fp32 and found every person torch fp32 found
    (docs/performance.md, Precision)."""
    default = core.get_property(device, "INFERENCE_PRECISION_HINT").get_type_name()
    return "bf16" if default == "bf16" else "fp32"


def runs_at(compiled: Any, hint: str) -> str:
    """The precision a compiled model computes in, as `model.precision` spells it; a warning when the
    plugin did not take the hint (bf16 or fp16 on a CPU without the units falls back to fp32)."""
    got = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    precision = {v: k for k, v in OV_PRECISION.items()}.get(got, got)
    if got != hint:
        asked = {v: k for k, v in OV_PRECISION.items()}[hint]
        log.warning(
            "model.precision: OpenVINO runs %s on this CPU, not %s (it lacks the units)", precision, asked
        )
    return precision


def uint8_input(ov: Any, model: Any) -> Any:
    """`model` taking uint8 NHWC RGB batches: the float conversion, the 1/255 scale and NCHW are
    compiled into it (what `YoloDetector._preprocess` does in torch for the other backends)."""
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    port = ppp.input()
    port.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    port.model().set_layout(ov.Layout("NCHW"))  # the reorder follows from the two layouts
    port.preprocess().convert_element_type(ov.Type.f32).scale(255.0)
    return ppp.build()


class OpenVinoDetector(YoloDetector):
    backend = "openvino"

    def __init__(
        self, cfg: ModelConfig, max_batch: int, *, rebuild: bool = False, streams: int = STREAMS
    ) -> None:
        ov = import_runtime("openvino", "openvino")
        path, exported = model_file(
            cfg, "openvino", "openvino", ("openvino", "onnx"), max_batch, False, "cpu", rebuild=rebuild
        )
        device = {"auto": "CPU", "cpu": "CPU"}.get(cfg.device)
        if device is None:
            raise ModelConfigError(f"model.device: {cfg.device!r} is not an OpenVINO device here (use cpu)")
        core = ov.Core()
        xml = model_xml(path)
        error = BrokenExport if exported else ModelLoadError  # a cached export is built again
        try:
            model = core.read_model(str(xml))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise error(f"model.path: OpenVINO cannot read {xml}: {exc}") from exc
        shape = [d.get_length() if d.is_static else None for d in model.input().get_partial_shape()]
        check_input(shape, max_batch, cfg.input_hw, xml.name)
        fixed_hw = shape[2:] != [None, None]  # an export with a static input size takes that one only
        names = read_names(xml) if xml.suffix == ".xml" else None
        if names is None:
            names = onnx_names(xml) if xml.suffix == ".onnx" else None
        if names is None:
            raise ModelLoadError(f"model.path: {xml} carries no class names (export it with Ultralytics)")
        model = uint8_input(ov, model)
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if cfg.threads is not None:
            config["INFERENCE_NUM_THREADS"] = cfg.threads
        # Always stated, `auto` included, so that the precision is a choice this code made and reports.
        precision = auto_precision(core, device) if cfg.precision == "auto" else cfg.precision
        config["INFERENCE_PRECISION_HINT"] = OV_PRECISION[precision]
        try:
            self._compiled = core.compile_model(model, device, config)
        except Exception as exc:
            raise error(f"model.path: OpenVINO cannot compile {xml}: {exc}") from exc
        self._request = self._compiled.create_infer_request()
        self._static_batch = shape[0]
        self._setup(cfg, max_batch, names, device="cpu")
        self.fixed_input = cfg.input_hw if fixed_hw else None
        self.threads = int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
        self.precision = runs_at(self._compiled, config["INFERENCE_PRECISION_HINT"])
        # Batches of 2 or more: one asynchronous request per image, on `streams` streams of
        # threads/streams threads each, so the cores work on different images instead of
        # splitting each layer of one. A lone frame keeps the LATENCY request and every thread.
        self._queue: Any = None
        self._out: np.ndarray | None = None
        if streams > 1 and self._static_batch is None and self.threads >= streams:
            config |= {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams}
            config["INFERENCE_NUM_THREADS"] = self.threads
            self._queue = ov.AsyncInferQueue(core.compile_model(model, device, config), streams)
            self._queue.set_callback(self._collect)
        mode = f", {streams} async streams for batches" if self._queue is not None else ""
        port = self._compiled.input(0)  # what the compiled model takes, as it says: u8 [N,H,W,C]
        takes = f"{port.get_element_type().get_type_name()} {ov.layout_helpers.get_layout(port)}"
        version = ov.get_version().split("-")[0]
        self.describe(f"openvino {version}, {self.threads} threads{mode}, takes {takes}", str(xml))

    def reshape(self, height: int, width: int) -> None:
        super().reshape(height, width)
        self._out = None  # the output's size follows the input's

    def _collect(self, request: Any, row: int) -> None:
        assert self._out is not None
        self._out[row] = request.get_output_tensor(0).data[0]

    def _preprocess(self, n: int) -> np.ndarray:
        """The first `n` rows of `input_buffer` as they are: the model converts them (`uint8_input`)."""
        return self.input_buffer[:n]

    def _forward(self, arr: np.ndarray) -> np.ndarray:
        n = len(arr)
        if self._queue is not None and n > 1:
            return self._forward_async(arr)
        if self._static_batch is not None and n < self._static_batch:
            arr = self.input_buffer  # a fixed batch (= max_batch): rows past n are left over, dropped after
        # share_inputs: OpenVINO reads the batch where the scheduler wrote it, no copy.
        self._request.infer({0: arr}, share_inputs=True)
        return self._request.get_output_tensor(0).data[:n]

    def _forward_async(self, arr: np.ndarray) -> np.ndarray:
        if self._out is None:  # the output's shape (classes + 4, anchors) from one image, once
            self._request.infer({0: arr[:1]}, share_inputs=True)
            one = self._request.get_output_tensor(0).data[0]
            self._out = np.empty((len(self.input_buffer), *one.shape), one.dtype)
        for row in range(len(arr)):
            self._queue.start_async({0: arr[row : row + 1]}, row, share_inputs=True)
        self._queue.wait_all()
        return self._out[: len(arr)]

    def close(self) -> None:
        del self._request, self._compiled, self._queue


def onnx_names(path: Path) -> dict[int, str] | None:
    """Class names from the metadata Ultralytics stores in an ONNX file (`names`: a dict's repr)."""
    try:
        onnx = importlib.import_module("onnx")
    except ImportError:
        return None
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if "names" not in props:
        return None
    return {int(k): str(v) for k, v in ast.literal_eval(props["names"]).items()}
