"""`model.precision` for the backends run through torch (torch, ONNX Runtime, TensorRT): what `auto`
means on each device, and the precisions they cannot honour, which stop the daemon (exit 2) instead
of running something else than the operator asked for."""

from __future__ import annotations

import pytest

from vistream.config.models import ModelConfig
from vistream.detector.base import ModelConfigError
from vistream.detector.ultralytics import half_precision


@pytest.mark.parametrize(
    ("precision", "cuda", "half"),
    [("auto", True, True), ("auto", False, False), ("fp32", True, False), ("fp32", False, False),
     ("fp16", True, True)],
)  # fmt: skip
def test_precision_on_torch_backends(precision: str, cuda: bool, half: bool) -> None:
    assert half_precision(ModelConfig(precision=precision), "torch", cuda) is half


@pytest.mark.parametrize(
    ("precision", "cuda", "says"),
    [
        ("fp16", False, "model.precision: fp16 needs CUDA with backend onnxruntime"),
        ("bf16", False, "model.precision: bf16 runs on backend openvino only"),
        ("bf16", True, "model.precision: bf16 runs on backend openvino only"),
    ],
)
def test_a_precision_the_backend_cannot_honour_is_a_config_error(
    precision: str, cuda: bool, says: str
) -> None:
    with pytest.raises(ModelConfigError, match=says):
        half_precision(ModelConfig(precision=precision), "onnxruntime", cuda)


@pytest.mark.parametrize(("half", "precision"), [(True, "fp16"), (False, "fp32"), (None, "auto")])
def test_half_is_the_older_spelling_of_precision(half: bool | None, precision: str) -> None:
    assert ModelConfig(half=half).precision == precision
