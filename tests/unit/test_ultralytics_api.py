"""The Ultralytics surface the detector relies on: public names only, in the version range pinned."""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

import vistream.detector.ultralytics as detector

REPO = Path(__file__).resolve().parents[2]


def test_detector_uses_no_private_ultralytics_attribute() -> None:
    """No `AutoBackend._something` (or any `_name` of an Ultralytics object) in the detector:
    private helpers change between releases without notice."""
    tree = ast.parse(Path(detector.__file__).read_text())
    private = [
        f"{ast.unparse(node)} (line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and ast.unparse(node.value) in {"AutoBackend", "self.model", "ultralytics"}
    ]
    assert private == []


def test_installed_ultralytics_is_in_the_pinned_range() -> None:
    """pyproject.toml pins the Ultralytics releases the detector was tested with (8.4: AutoBackend's
    `format` and `ultralytics.utils.nms` with `end2end`), and what is installed is one of them."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (req,) = [Requirement(d) for d in deps if Requirement(d).name == "ultralytics-opencv-headless"]
    assert req.specifier.contains("8.4.190") and not req.specifier.contains("8.3.0")
    assert req.specifier.contains(importlib.metadata.version("ultralytics-opencv-headless"))
    from ultralytics.nn.autobackend import AutoBackend
    from ultralytics.utils.nms import non_max_suppression

    assert "end2end" in non_max_suppression.__code__.co_varnames
    assert "self.format = " in inspect.getsource(AutoBackend)
