"""`vistream export-triton`: a Triton model repository entry for a YOLO .pt model.

Writes `OUT/NAME/config.pbtxt` and `OUT/NAME/1/model.onnx` (ONNX Runtime backend) or
`OUT/NAME/1/model.plan` (TensorRT backend). The export is the daemon's own (the export cache,
`detector/ultralytics.py`): Ultralytics with a dynamic batch of up to `--max-batch`. The config
sets `max_batch_size`, dynamic batching (preferred sizes, a short queue delay), one instance, and
the `metadata` parameter as Ultralytics' Triton guide writes it (the exporter's metadata dict as a
Python literal), from which both vistream's Triton backend and Ultralytics' `TritonRemoteModel`
take the class names, input size and stride.

`--input uint8` (ONNX only) puts the preprocessing into the model: its input is the batch as the
daemon's rings hold it, uint8 NHWC, and three nodes ahead of Ultralytics' graph reorder it to NCHW,
cast it to float and scale it by 1/255, the same operations in the same order as the daemon does
in-process. A request is then a quarter of the float32 one, which is what the network between the
daemons and the server carries. Ultralytics' own Triton client sends float32 NCHW: it needs the
default entry.

An Ultralytics .engine starts with its metadata (a 4-byte length and JSON) before the TensorRT
plan; Triton's TensorRT backend wants the bare plan, so `model.plan` is the file without it.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vistream.config.models import ModelConfig
from vistream.detector.base import ModelLoadError
from vistream.detector.ultralytics import cached_export, import_runtime

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")  # fullmatch: "$" would let a trailing newline through
PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "engine": ("tensorrt_plan", "model.plan")}
QUEUE_DELAY_US = 2000  # how long Triton may hold a request to batch it with others
INPUTS = ("float32", "uint8")  # what a request carries: float32 NCHW (Ultralytics' client), uint8 NHWC


class ExportError(Exception):
    """The entry cannot be written; the message is the one line the command prints (exit 2)."""


def preferred_sizes(max_batch: int) -> list[int]:
    """The batch sizes Triton's dynamic batcher should prefer: half the maximum and the maximum."""
    return sorted({max(1, max_batch // 2), max_batch})


def pbtxt_string(text: str) -> str:
    """`text` as a protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def metadata_literal(metadata: dict[str, Any]) -> str:
    """The metadata parameter's value: the dict as a Python literal, as Ultralytics writes it."""
    return str(metadata)


def config_pbtxt(
    name: str,
    fmt: str,
    max_batch: int,
    metadata: dict[str, Any],
    input_name: str = "images",
    output_name: str = "output0",
    num_outputs: int | None = None,
    input_type: str = "float32",
) -> str:
    """The model's Triton config. Input: 3 x H x W float (or H x W x 3 bytes with `input_type`
    uint8), any H and W (the daemon fits the batch shape to its cameras); output: the raw YOLO
    head, (4 + classes) x anchors."""
    platform, _ = PLATFORMS[fmt]
    data_type, dims = ("TYPE_UINT8", "-1, -1, 3") if input_type == "uint8" else ("TYPE_FP32", "3, -1, -1")
    rows = num_outputs if num_outputs is not None else 4 + len(metadata.get("names", {}))
    kind = "KIND_GPU" if fmt == "engine" else "KIND_AUTO"  # ONNX also runs on a CPU-only server
    sizes = ", ".join(str(s) for s in preferred_sizes(max_batch))
    return f"""\
# Written by `vistream export-triton`. Serve with:
#   tritonserver --model-repository=<the folder holding {name}/>
name: {pbtxt_string(name)}
platform: "{platform}"
max_batch_size: {max_batch}
input [
  {{
    name: {pbtxt_string(input_name)}
    data_type: {data_type}
    dims: [ {dims} ]
  }}
]
output [
  {{
    name: {pbtxt_string(output_name)}
    data_type: TYPE_FP32
    dims: [ {rows}, -1 ]
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {sizes} ]
  max_queue_delay_microseconds: {QUEUE_DELAY_US}
}}
instance_group [
  {{
    count: 1
    kind: {kind}
  }}
]
# Class names, input size, stride and task, as Ultralytics' exporter writes them (a Python literal):
# vistream's Triton backend and Ultralytics' TritonRemoteModel read them from here.
parameters {{
  key: "metadata"
  value {{
    string_value: {pbtxt_string(metadata_literal(metadata))}
  }}
}}
"""


def onnx_metadata(path: Path) -> tuple[dict[str, Any], str, str]:
    """The metadata Ultralytics stored in an ONNX export (each value as `str(v)`: literals are read
    back), and its input and output names."""
    onnx = import_runtime("onnxruntime", "onnx", "onnxruntime")
    model = onnx.load(str(path), load_external_data=False)
    meta: dict[str, Any] = {}
    for prop in model.metadata_props:
        try:
            meta[prop.key] = ast.literal_eval(prop.value)
        except (ValueError, SyntaxError):
            meta[prop.key] = prop.value
    return meta, model.graph.input[0].name, model.graph.output[0].name


def uint8_input(src: Path, dst: Path) -> None:
    """Write the ONNX model `src` to `dst` with a uint8 NHWC input of the same name, turned into
    the float NCHW the graph takes by Transpose, Cast and Mul(1/255) nodes ahead of it."""
    onnx = import_runtime("onnxruntime", "onnx", "onnxruntime")
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    graph = model.graph
    old = graph.input[0]
    name, inner = old.name, f"{old.name}_nchw_float"
    for node in graph.node:
        node.input[:] = [inner if i == name else i for i in node.input]
    graph.input.remove(old)
    graph.input.insert(
        0, helper.make_tensor_value_info(name, TensorProto.UINT8, ["batch", "height", "width", 3])
    )
    graph.initializer.append(helper.make_tensor(f"{name}_scale", TensorProto.FLOAT, [], [1 / 255]))
    prologue = [
        helper.make_node("Transpose", [name], [f"{name}_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", [f"{name}_nchw"], [f"{name}_nchw_cast"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{name}_nchw_cast", f"{name}_scale"], [inner]),
    ]
    for node in reversed(prologue):
        graph.node.insert(0, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def split_engine(path: Path) -> tuple[dict[str, Any], bytes]:
    """An Ultralytics .engine: (its metadata, the bare TensorRT plan after it)."""
    data = path.read_bytes()
    size = int.from_bytes(data[:4], "little", signed=True)
    try:
        meta = json.loads(data[4 : 4 + size].decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ExportError(f"{path}: no Ultralytics metadata before the TensorRT plan ({exc})") from exc
    return meta, data[4 + size :]


def export_triton(
    model: str,
    out: Path,
    name: str | None = None,
    imgsz: int = 640,
    max_batch: int = 8,
    fmt: str = "onnx",
    cache_dir: Path | None = None,
    input_type: str = "float32",
) -> Path:
    """Write the entry `out/name` and return its path. Raises ExportError with one line."""
    if fmt not in PLATFORMS:
        raise ExportError(f"--format: {fmt!r} is not one of {', '.join(PLATFORMS)}")
    if input_type not in INPUTS:
        raise ExportError(f"--input: {input_type!r} is not one of {', '.join(INPUTS)}")
    if input_type == "uint8" and fmt != "onnx":
        raise ExportError(
            "--input uint8 needs --format onnx (a TensorRT plan keeps Ultralytics' float input)"
        )
    name = name or Path(model).stem
    if not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise ExportError(f"--name: {name!r}: letters, digits, '_', '.', '-' only")
    if max_batch < 1 or max_batch > 256:
        raise ExportError(f"--max-batch: {max_batch} is not between 1 and 256")
    if imgsz < 32 or imgsz > 4096 or imgsz % 32:
        raise ExportError(f"--imgsz: {imgsz} is not a multiple of 32 between 32 and 4096")
    if not model.endswith(".pt"):
        raise ExportError(f"--model: {model!r} is not a .pt model (Ultralytics weights)")
    cfg = ModelConfig(path=model, imgsz=imgsz, cache_dir=cache_dir)
    half, device = (True, "cuda:0") if fmt == "engine" else (False, "cpu")
    try:
        artifact = cached_export(cfg, fmt, max_batch, half, device)
    except ModelLoadError as exc:
        raise ExportError(str(exc)) from exc
    _, filename = PLATFORMS[fmt]
    if fmt == "onnx":
        meta, in_name, out_name = onnx_metadata(artifact)
    else:
        meta, plan = split_engine(artifact)
        in_name, out_name = "images", "output0"
    if meta.get("task", "detect") != "detect":
        task = meta.get("task")
        raise ExportError(f"--model: {model!r} is a {task!r} model; vistream runs detection models")
    meta["batch"] = max_batch
    text = config_pbtxt(name, fmt, max_batch, meta, in_name, out_name, input_type=input_type)

    # Built beside the entry and renamed into place: a server polling the repository never sees
    # half of it; an entry already there is replaced.
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    try:
        (tmp / "1").mkdir()
        if input_type == "uint8":
            uint8_input(artifact, tmp / "1" / filename)
        elif fmt == "onnx":
            shutil.copyfile(artifact, tmp / "1" / filename)
        else:
            (tmp / "1" / filename).write_bytes(plan)
        (tmp / "config.pbtxt").write_text(text)
        os.chmod(tmp, 0o755)
        entry = out / name
        if entry.exists():
            aside = out / f".{name}.old-{os.getpid()}"
            entry.rename(aside)
            tmp.rename(entry)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            tmp.rename(entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %s (%s, %s input, max batch %d)", entry, filename, input_type, max_batch)
    return entry


def main(args: Any) -> int:
    """`vistream export-triton`: 0 when the entry is written, 2 with one line when not."""
    import sys

    try:
        entry = export_triton(
            args.model,
            Path(args.out),
            args.name,
            args.imgsz,
            args.max_batch,
            args.format,
            input_type=args.input,
        )
    except ExportError as exc:
        print(f"vistream export-triton: {exc}", file=sys.stderr)
        return 2
    print(entry)
    return 0
