"""The Triton backend's pure parts: the config keys, the model config's metadata, export-triton's entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from vistream.cli import main as cli_main
from vistream.config.models import ModelConfig
from vistream.detector import ModelLoadError, resolve_backend
from vistream.detector import triton_export as tx
from vistream.detector.triton import parse_model_config, parse_url

NAMES = {0: "person", 1: "bicycle", 2: "car"}
META = {"stride": 32, "task": "detect", "imgsz": [640, 640], "names": NAMES, "batch": 8}


@pytest.mark.parametrize(
    ("path", "backend"),
    [
        ("grpc://triton:8001/yolov8n", "triton"),
        ("http://10.0.0.9:8000/yolov8n", "triton"),
        ("yolov8n.pt", "torch"),
        ("model.onnx", "onnxruntime"),
        ("https://example.com/weights/yolov8n.pt", "torch"),  # a download, not a server
    ],
)
def test_backend_auto_follows_the_scheme(path: str, backend: str) -> None:
    assert ModelConfig(path=path).path == path
    assert resolve_backend(path, "auto", "cpu", False, has=lambda m: False) == backend


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("grpc://triton/yolov8n", "needs a host and a port"),
        ("grpc://triton:8001/", "names one model"),
        ("grpc://triton:8001/a/b", "names one model"),
        ("grpc://user:pw@triton:8001/yolov8n", "nothing else"),
        ("https://triton:8000/yolov8n", "grpc:// or http://"),
    ],
)
def test_unusable_triton_urls_are_config_errors(path: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        ModelConfig(path=path)


def test_triton_backend_and_url_go_together() -> None:
    """`backend: triton` needs a URL, and a URL runs on nothing but triton (or auto)."""
    assert ModelConfig(path="grpc://t:8001/m", backend="triton").backend == "triton"
    with pytest.raises(ValidationError, match="backend triton needs a grpc"):
        ModelConfig(path="yolov8n.pt", backend="triton")
    with pytest.raises(ValidationError, match="'openvino' cannot run a Triton URL"):
        ModelConfig(path="grpc://t:8001/m", backend="openvino")


@pytest.mark.parametrize(("value", "ok"), [(1, True), (2, True), (64, True), (0, False), (65, False)])
def test_max_inflight_bounds(value: int, ok: bool) -> None:
    assert ModelConfig().max_inflight == 2
    if ok:
        assert ModelConfig(max_inflight=value).max_inflight == value
    else:
        with pytest.raises(ValidationError, match="max_inflight"):
            ModelConfig(max_inflight=value)


def test_parse_url() -> None:
    assert parse_url("grpc://triton:8001/yolov8n") == ("grpc", "triton:8001", "yolov8n")
    assert parse_url("http://127.0.0.1:8000/m-1") == ("http", "127.0.0.1:8000", "m-1")


# -- the model config and its metadata ------------------------------------------------------------


def model_config(meta: Any = META, dims: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A model config as tritonclient returns it (JSON: int64 dims are strings)."""
    cfg: dict[str, Any] = {
        "name": "yolov8n",
        "max_batch_size": 8,
        "input": [{"name": "images", "data_type": "TYPE_FP32", "dims": dims or ["3", "-1", "-1"]}],
        "output": [{"name": "output0", "data_type": "TYPE_FP32", "dims": ["84", "-1"]}],
    }
    if meta is not None:
        cfg["parameters"] = {"metadata": {"string_value": str(meta)}}
    return cfg | extra


def test_metadata_gives_names_size_and_stride() -> None:
    info = parse_model_config(model_config(), "m")
    assert info.names == NAMES and info.stride == 32 and info.imgsz == (640, 640)
    assert (info.input_name, info.output_name, info.input_type) == ("images", "output0", "FP32")
    assert info.fixed_hw is None and info.max_batch_size == 8


def test_metadata_as_ultralytics_stores_it_in_onnx_is_read_too() -> None:
    """Values that are themselves literals in strings (as ONNX metadata_props hold them)."""
    meta = {"stride": "32", "task": "detect", "imgsz": "[384, 640]", "names": str(NAMES)}
    info = parse_model_config(model_config(meta), "m")
    assert info.names == NAMES and info.imgsz == (384, 640)


def test_a_model_with_a_fixed_input_size_is_that_size_only() -> None:
    info = parse_model_config(model_config(dims=["3", "640", "640"]), "m")
    assert info.fixed_hw == (640, 640) and not info.raw_bytes


def uint8_config(dims: list[str]) -> dict[str, Any]:
    return model_config(input=[{"name": "images", "data_type": "TYPE_UINT8", "dims": dims}])


def test_a_uint8_model_takes_the_batch_as_the_rings_hold_it() -> None:
    """An `--input uint8` entry: bytes, height x width x 3, any size or a fixed one."""
    info = parse_model_config(uint8_config(["-1", "-1", "3"]), "m")
    assert info.raw_bytes and info.input_type == "UINT8" and info.fixed_hw is None
    assert parse_model_config(uint8_config(["384", "640", "3"]), "m").fixed_hw == (384, 640)


@pytest.mark.parametrize(
    ("cfg", "problem"),
    [
        (model_config(meta=None), "has no `metadata` parameter in its Triton config"),
        (model_config(meta=[1, 2]), "metadata is not a dict (got list)"),
        (model_config(meta="{'names': "), "not a Python literal"),
        (model_config(meta={**META, "task": "segment"}), "is a 'segment' model"),
        (model_config(meta={"stride": 32}), "carries no class names"),
        (model_config(dims=["3", "-1"]), "are not [3, height, width]"),
        (model_config(input=[]), "has 0 inputs"),
        (
            model_config(input=[{"name": "images", "data_type": "TYPE_INT8", "dims": ["3", "-1", "-1"]}]),
            "TYPE_INT8, not TYPE_FP32/FP16 (or TYPE_UINT8)",
        ),
        (
            model_config(input=[{"name": "images", "data_type": "TYPE_UINT8", "dims": ["3", "-1", "-1"]}]),
            "TYPE_UINT8 input dims [3, -1, -1] are not [height, width, 3]",
        ),
    ],
    ids=[
        "absent",
        "not-a-dict",
        "unparsable",
        "segment",
        "no-names",
        "dims",
        "no-input",
        "int8",
        "uint8-nchw",
    ],
)
def test_unusable_metadata_is_one_clear_load_error(cfg: dict[str, Any], problem: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        parse_model_config(cfg, "Triton model 'yolov8n' at grpc://t:8001")
    assert problem in str(info.value) and "Triton model 'yolov8n' at grpc://t:8001" in str(info.value)


# -- export-triton --------------------------------------------------------------------------------


def parse_pbtxt(text: str) -> dict[str, Any]:
    """The config as Triton parses it (its own model_config proto), as JSON like the gRPC client's."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    msg = text_format.Parse(text, model_config_pb2.ModelConfig())
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def test_config_pbtxt_is_valid_and_carries_what_the_backend_reads() -> None:
    """The config parses as Triton's ModelConfig; it sets max_batch_size, dynamic batching with
    preferred sizes and a queue delay, one instance, and metadata the backend reads back."""
    meta = {**META, "description": 'a "quoted" \\ name'}
    cfg = parse_pbtxt(tx.config_pbtxt("yolov8n", "onnx", 8, meta))
    assert cfg["platform"] == "onnxruntime_onnx" and cfg["max_batch_size"] == 8
    assert cfg["dynamic_batching"] == {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": "2000"}
    assert cfg["instance_group"] == [{"count": 1}]  # kind KIND_AUTO: the default, left out of JSON
    assert cfg["output"][0]["dims"] == ["7", "-1"]
    info = parse_model_config(cfg, "m")
    assert info.names == NAMES and info.stride == 32
    plan = parse_pbtxt(tx.config_pbtxt("m", "engine", 1, META))
    assert plan["platform"] == "tensorrt_plan" and plan["instance_group"][0]["kind"] == "KIND_GPU"
    assert plan["dynamic_batching"]["preferred_batch_size"] == [1]


def fake_onnx(path: Path, meta: dict[str, Any]) -> Path:
    """A tiny ONNX file with Ultralytics-style metadata (each value as str(v))."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["output0"])],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["b", 3, "h", "w"])],
    )
    model = helper.make_model(graph)
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=str(v))
    onnx.save(model, str(path))
    return path


def test_export_triton_writes_a_repository_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1. `vistream export-triton` on a .pt (its export cache stubbed with a small ONNX file).
    2. OUT/NAME/1/model.onnx is that file; OUT/NAME/config.pbtxt names it, with the requested
       max batch and the metadata (the export's, batch set to --max-batch).
    3. Run again: the entry is replaced whole, nothing else is left in OUT.
    4. Usage problems are one line and exit 2."""
    onnx_file = fake_onnx(tmp_path / "yolov8n.onnx", {**META, "batch": 1})
    calls = []

    def cached(cfg: ModelConfig, fmt: str, batch: int, half: bool, device: str) -> Path:
        calls.append((cfg.path, cfg.input_hw, fmt, batch, half, device))
        return onnx_file

    monkeypatch.setattr(tx, "cached_export", cached)
    out = tmp_path / "repo"
    for _ in range(2):
        argv = [
            "export-triton",
            "--model",
            "w/yolov8n.pt",
            "--out",
            str(out),
            "--name",
            "det",
            "--max-batch",
            "4",
        ]
        assert cli_main([*argv, "--imgsz", "320"]) == 0
    assert calls[0] == ("w/yolov8n.pt", (320, 320), "onnx", 4, False, "cpu")
    assert sorted(p.name for p in out.iterdir()) == ["det"]
    assert (out / "det" / "1" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    cfg = parse_pbtxt((out / "det" / "config.pbtxt").read_text())
    assert cfg["name"] == "det" and cfg["max_batch_size"] == 4
    assert cfg["input"][0]["name"] == "images" and cfg["output"][0]["name"] == "output0"
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [2, 4]
    meta = parse_model_config(cfg, "det")
    assert meta.names == NAMES and meta.imgsz == (640, 640)


def test_a_uint8_entry_does_the_daemons_preprocessing_in_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. `export-triton --input uint8` of a model whose graph passes its input through.
    2. The config's input is TYPE_UINT8 [-1, -1, 3], which the backend reads as bytes, NHWC.
    3. Run on ONNX Runtime, the entry's model turns a uint8 NHWC batch into exactly the float NCHW
       batch the daemon's in-process preprocessing makes of it (reorder, cast, 1/255)."""
    import onnxruntime as ort
    import torch

    onnx_file = fake_onnx(tmp_path / "yolov8n.onnx", {**META, "batch": 1})
    monkeypatch.setattr(tx, "cached_export", lambda *args: onnx_file)
    argv = ["export-triton", "--model", "yolov8n.pt", "--out", str(tmp_path / "repo"), "--input", "uint8"]
    assert cli_main(argv) == 0
    entry = tmp_path / "repo" / "yolov8n"
    cfg = parse_pbtxt((entry / "config.pbtxt").read_text())
    assert cfg["input"][0] == {"name": "images", "data_type": "TYPE_UINT8", "dims": ["-1", "-1", "3"]}
    assert parse_model_config(cfg, "m").raw_bytes
    session = ort.InferenceSession(str(entry / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    (served,) = session.run(None, {"images": batch})
    in_process = torch.from_numpy(batch).permute(0, 3, 1, 2).float().mul_(1 / 255)  # YoloDetector._preprocess
    assert served.dtype == np.float32 and served.shape == (2, 3, 64, 96)
    np.testing.assert_array_equal(served, in_process.numpy())


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--model", "m.pt", "--input", "uint8", "--format", "engine"], "--input uint8 needs --format onnx"),
        (["--model", "m.onnx"], "is not a .pt model"),
        (["--model", "m.pt", "--name", "a/b"], "--name: 'a/b'"),
        (["--model", "m.pt", "--imgsz", "100"], "--imgsz: 100"),
        (["--model", "m.pt", "--max-batch", "0"], "--max-batch: 0"),
    ],
)
def test_export_triton_usage_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], problem: str
) -> None:
    assert cli_main(["export-triton", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert problem in err and len(err.strip().splitlines()) == 1
