"""What every backend shares, taken from Ultralytics: preprocessing on torch tensors, NMS, exports.

The daemon does its own letterboxing (in the reader processes), so only the model, NMS and the
exporter are taken from Ultralytics, not its predictor with its per-call image handling. Each
backend module (`pytorch`, `openvino`, `onnxruntime`, `tensorrt`) only loads a model and runs a
float NCHW batch through it; `YoloDetector` does the rest the same way for all of them.

Device path: the scheduler fills `input_buffer`, a view of a host tensor that is pinned on CUDA.
One non-blocking copy moves the uint8 batch to a preallocated device tensor; the NHWC -> NCHW
reorder, the cast to fp16/fp32 and the 1/255 scaling happen on the device into a second
preallocated tensor, so a batch allocates nothing and crosses PCIe at a quarter of the float size.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import warnings
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from vistream.config.models import ModelConfig
from vistream.detector.base import Detector, ModelConfigError, ModelLoadError
from vistream.detector.export import ExportCache, ExportSpec, default_cache_dir, file_sha256

log = logging.getLogger(__name__)

# Which AutoBackend formats each `model.backend` value stands for.
BACKEND_FORMATS = {
    "torch": {"pt", "torchscript"},
    "onnxruntime": {"onnx"},
    "openvino": {"openvino"},
    "tensorrt": {"engine"},
}
# The Ultralytics export format each backend runs when `model.path` is a .pt file.
EXPORT_FORMATS = {"onnxruntime": "onnx", "openvino": "openvino", "tensorrt": "engine"}


def runtime_missing(backend: str, module: str, extra: str) -> str:
    """The one line a daemon without the runtime of `backend` stops with."""
    return (
        f"model.backend: {backend!r} needs the {module} runtime, which is not installed: "
        f"pip install vistream[{extra}]"
    )


def import_runtime(backend: str, module: str, extra: str | None = None) -> Any:
    """Import a backend's runtime; one that is missing or broken is a ModelLoadError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelLoadError(f"{runtime_missing(backend, module, extra or module)} ({exc})") from exc


def quiet_ultralytics() -> None:
    # A daemon must not pip-install packages behind the operator's back, which
    # Ultralytics does by default when an export's runtime is missing.
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "false")


@contextmanager
def ultralytics_import() -> Iterator[None]:
    """Import Ultralytics modules inside this, and its import leaves the process's threads alone.

    `import ultralytics` sets OMP_NUM_THREADS=1 when it is unset ("for reduced CPU utilization
    during training", ultralytics/__init__.py). torch imported after that, and every process
    started after it (a scheduler spawned by the demo, the daemon a benchmark starts), would run
    its model on one thread: the scheduler stayed at one core of two in `vistream bench`. So torch
    is imported first (its OpenMP pool sizes itself from the environment as the operator left
    it), and the variable goes again when Ultralytics set it.
    """
    quiet_ultralytics()
    unset = "OMP_NUM_THREADS" not in os.environ
    import torch  # noqa: F401  (before Ultralytics: see above)

    try:
        yield
    finally:
        if unset:
            os.environ.pop("OMP_NUM_THREADS", None)


def _import_ultralytics() -> tuple[Any, Any, Any]:
    with ultralytics_import():
        import torch

        # AutoBackend and `ultralytics.utils.nms` (with its `end2end` argument) are what 8.4
        # offers; pyproject.toml pins the 8.4 releases these were tested with.
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


def half_precision(cfg: ModelConfig, backend: str, cuda: bool) -> bool:
    """Whether a torch-run backend (torch, ONNX Runtime, TensorRT) runs fp16 for `model.precision`:
    `auto` is fp16 on CUDA and fp32 on a CPU. A precision it cannot honour is a config error, never a
    silent fallback: the operator asked for it."""
    precision = cfg.precision
    if precision == "bf16":
        raise ModelConfigError(
            f"model.precision: bf16 runs on backend openvino only (backend {backend} takes fp32 or fp16)"
        )
    if precision == "fp16" and not cuda:
        raise ModelConfigError(
            f"model.precision: fp16 needs CUDA with backend {backend} (on a CPU: fp32, or bf16 on openvino)"
        )
    return cuda if precision == "auto" else precision == "fp16"


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


def model_format(path: str) -> str:
    """The AutoBackend format a model path is in, from its name: pt, torchscript, onnx, openvino, engine."""
    name = path.rstrip("/").lower()
    if name.endswith("_openvino_model") or name.endswith(".xml"):
        return "openvino"
    for suffix, fmt in ((".onnx", "onnx"), (".engine", "engine"), (".torchscript", "torchscript")):
        if name.endswith(suffix):
            return fmt
    return "pt"


def wrong_format(backend: str, path: str, fmt: str) -> ModelConfigError:
    return ModelConfigError(f"model.backend: {backend!r} cannot run {Path(path).name!r} ({fmt} format)")


def model_file(
    cfg: ModelConfig,
    backend: str,
    export: str,
    runs: tuple[str, ...],
    batch: int,
    half: bool,
    device: str,
    *,
    rebuild: bool = False,
) -> tuple[Path, bool]:
    """The file a backend runs, and whether it is a cached export (which is built again when the
    runtime cannot load it): the `export` of a .pt model, or `model.path` itself when it is already
    in one of the formats the backend `runs`."""
    fmt = model_format(cfg.path)
    if fmt == "pt":
        return cached_export(cfg, export, batch, half, device, rebuild=rebuild), True
    if fmt in runs:
        return Path(cfg.path), False
    raise wrong_format(backend, cfg.path, fmt)


def ultralytics_version() -> str:
    return metadata.version("ultralytics-opencv-headless")


def local_model(path: str) -> Path:
    """The .pt file to export: `path`, or a release model (`yolov8n.pt`) that Ultralytics downloads."""
    if Path(path).is_file():
        return Path(path)
    with ultralytics_import():
        from ultralytics.utils.downloads import attempt_download_asset

    try:
        local = Path(attempt_download_asset(path))
    except Exception as exc:  # no network, an unknown name: Ultralytics raises what its downloader hit
        raise ModelLoadError(f"model.path: cannot load {path!r}: {exc}") from exc
    if not local.is_file():
        raise ModelLoadError(f"model.path: cannot load {path!r}: no such file")
    return local


def cached_export(
    cfg: ModelConfig, fmt: str, batch: int, half: bool, device: str, *, rebuild: bool = False
) -> Path:
    """The `fmt` export of the .pt at `model.path`, from the export cache or made now and kept there.

    `rebuild` builds it again even when the entry checks out (the runtime could not load it).
    """
    model = local_model(cfg.path)
    spec = ExportSpec(
        model_sha256=file_sha256(model),
        model_stem=model.stem,
        format=fmt,
        imgsz=cfg.input_hw,
        batch=batch,
        half=half,
        ultralytics=ultralytics_version(),
    )
    cache = ExportCache(cfg.cache_dir or default_cache_dir())

    def build(into: Path) -> Path:
        log.info("exporting %s to %s (batch %d, %dx%d); cached for the next start", model, fmt, batch,
                 *cfg.input_hw[::-1])  # fmt: skip
        return export_with_ultralytics(model, into, fmt, cfg.input_hw, batch, half, device)

    try:
        artifact = cache.rebuild(spec, build) if rebuild else cache.get(spec, build)[0]
    except OSError as exc:
        raise ModelLoadError(f"model.cache_dir: cannot keep exports in {cache.root}: {exc}") from exc
    return artifact


def export_with_ultralytics(
    model: Path, into: Path, fmt: str, imgsz: tuple[int, int], batch: int, half: bool, device: str
) -> Path:
    """`YOLO(model).export(...)` with a dynamic batch of up to `batch`, written into `into`.

    Ultralytics writes next to the model file, so the model is copied into `into` first and the
    copy (and any intermediate file, e.g. the ONNX a TensorRT engine is built from) removed after.
    """
    with ultralytics_import():
        from ultralytics import YOLO

    src = into / model.name
    shutil.copyfile(model, src)
    try:
        with warnings.catch_warnings():
            # torch.jit.trace's and torch.onnx's deprecation notices, once per export, are
            # Ultralytics' to act on, not the operator's.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            out = YOLO(str(src)).export(
                format=fmt,
                dynamic=True,
                batch=batch,
                imgsz=list(imgsz),
                quantize=16 if half else None,
                device="cpu" if device == "cpu" else device.replace("cuda:", ""),
            )
    except Exception as exc:  # Ultralytics raises anything from AssertionError to its own export errors
        raise ModelLoadError(
            f"model.path: cannot load {str(model)!r}: exporting it to {fmt} failed: {exc}"
        ) from exc
    artifact = Path(out)
    for p in into.iterdir():
        if p != artifact:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return artifact


class YoloDetector(Detector):
    """The part of a YOLO detector that does not depend on the runtime: buffers, preprocessing, NMS.

    A backend loads its model, then calls `_setup`, and implements `_forward` (a float NCHW batch
    in, the raw YOLO output out, as a torch tensor or numpy array).
    """

    backend: str
    stride = 32  # batch shapes are multiples of it

    def _setup(
        self,
        cfg: ModelConfig,
        max_batch: int,
        names: dict[int, str],
        *,
        device: str = "cpu",
        half: bool = False,
        channels_last: bool = False,
        end2end: bool = False,
    ) -> None:
        self._torch, _, self._nms = _import_ultralytics()
        torch = self._torch
        if self.backend != "torch" and torch.device(device).type == "cpu":
            # torch only reorders and scales the batch and runs NMS here, light work for one
            # thread; its OpenMP threads would spin between those steps on the cores the
            # backend's own threads run the model on (OpenVINO, `vistream bench`, 4 cameras on
            # 2 cores: 48.8 frames/s with one torch thread, 40.7 with two).
            torch.set_num_threads(1)
        self.cfg = cfg
        self.device, self.half, self.names = device, half, names
        self.precision = "fp16" if half else "fp32"  # OpenVINO states its own after compiling
        self._classes = class_ids(cfg.classes, names)
        self._end2end = end2end
        self._dev = dev = torch.device(device)
        self._cuda = dev.type == "cuda"
        self._max_batch = max_batch
        self._max_hw = h, w = cfg.input_hw
        # Flat, at the largest shape: a batch shape is a view of the first bytes, so a reshape
        # pins and allocates nothing on the host, and the device copy stays one block.
        host = torch.empty(max_batch * h * w * 3, dtype=torch.uint8)
        if self._cuda:
            host = host.pin_memory()
            self._staging_flat = torch.empty(max_batch * h * w * 3, dtype=torch.uint8, device=dev)
        else:
            self._staging_flat = host
        self._host_flat = host
        self._dtype = torch.float16 if half else torch.float32
        self._layout = torch.channels_last if channels_last else torch.contiguous_format
        self._views(h, w)

    def _views(self, h: int, w: int) -> None:
        """Buffers for batches of h x w: views of the flat uint8 ones, and a float input tensor."""
        shape = (self._max_batch, h, w, 3)
        size = self._max_batch * h * w * 3
        self._host = self._host_flat[:size].view(shape)
        self._staging = self._staging_flat[:size].view(shape)
        self._input = self._torch.empty(
            (self._max_batch, 3, h, w), dtype=self._dtype, device=self._dev, memory_format=self._layout
        )
        self.input_buffer = self._host.numpy()

    def reshape(self, height: int, width: int) -> None:
        if (height, width) == self.input_hw:
            return
        if self.fixed_input is not None:
            super().reshape(height, width)  # raises: the model takes one shape only
        max_h, max_w = self._max_hw
        stride = self.stride
        if not (0 < height <= max_h and 0 < width <= max_w) or height % stride or width % stride:
            raise ValueError(
                f"a {height}x{width} batch does not fit model.imgsz {max_h}x{max_w} (stride {stride})"
            )
        self._views(height, width)

    @abstractmethod
    def _forward(self, x: Any) -> Any:
        """The raw model output for the float NCHW batch `x` (a torch tensor)."""

    def infer(self, n: int) -> list[np.ndarray]:
        with self._torch.inference_mode():
            return self._postprocess(self._forward(self._preprocess(n)))

    def _preprocess(self, n: int) -> Any:
        """The first `n` rows of `input_buffer` as the float NCHW batch the model takes (a view of a
        preallocated tensor, on the model's device): reordered, cast and scaled by 1/255."""
        if self._cuda:
            self._staging[:n].copy_(self._host[:n], non_blocking=True)
        x = self._input[:n]
        x.copy_(self._staging[:n].permute(0, 3, 1, 2))
        x.mul_(1 / 255)
        return x

    def _postprocess(self, preds: Any) -> list[np.ndarray]:
        """Ultralytics' NMS over the raw model output: one (k, 6) float32 array per frame."""
        if isinstance(preds, np.ndarray):
            preds = self._torch.from_numpy(preds)
        out = self._nms(
            preds,
            self.cfg.conf,
            self.cfg.iou,
            self._classes,
            max_det=self.cfg.max_det,
            end2end=self._end2end,
        )
        return [o.float().cpu().numpy() for o in out]

    def describe(self, fmt: str, source: str) -> None:
        h, w = self.cfg.input_hw
        log.info(
            "model %s loaded: backend %s (%s), device %s, precision %s, %d classes, input %dx%d, "
            "batches up to %d",
            source, self.backend, fmt, self.device, self.precision, len(self.names), w, h,
            len(self.input_buffer),
        )  # fmt: skip


class AutoBackendDetector(YoloDetector):
    """A model run by Ultralytics' AutoBackend: .pt on torch, and .engine files on TensorRT."""

    model: Any

    def _load_autobackend(self, path: str, device: str, half: bool) -> Any:
        torch, AutoBackend, _ = _import_ultralytics()
        try:
            model = AutoBackend(path, device=torch.device(device), fp16=half, fuse=True, verbose=False)
        except Exception as exc:  # Ultralytics raises anything from FileNotFoundError to download errors
            raise ModelLoadError(f"model.path: cannot load {path!r}: {exc}") from exc
        model.eval()
        return model

    def _setup_loaded(
        self, cfg: ModelConfig, max_batch: int, device: str, *, channels_last: bool = False
    ) -> None:
        """Buffers and preprocessing for the model AutoBackend loaded: its names, precision, head."""
        self._setup(
            cfg,
            max_batch,
            dict(self.model.names),
            device=device,
            half=bool(self.model.fp16),
            channels_last=channels_last,
            end2end=bool(getattr(self.model, "end2end", False)),
        )

    def _forward(self, x: Any) -> Any:
        return self.model(x)

    def close(self) -> None:
        del self.model
        if self._cuda:
            self._torch.cuda.empty_cache()
