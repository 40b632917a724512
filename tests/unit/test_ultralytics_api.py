"""The Ultralytics surface the detector relies on: public names only, in the version range pinned."""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import json
import os
import subprocess
import sys
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


PROBE = """
import json, os
from vistream.detector.ultralytics import _import_ultralytics
import vistream.events.tracking
torch, _, _ = _import_ultralytics()
print(json.dumps([os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()]))
"""


def probe(code: str, env: dict[str, str]) -> object:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_ultralytics_leaves_the_thread_count_alone() -> None:
    """`import ultralytics` sets OMP_NUM_THREADS=1 when it is unset. In a fresh process:
    1. torch alone: its natural thread count;
    2. the detector's and the tracker's Ultralytics imports: torch keeps that count, and the
       variable is gone again, so processes started afterwards (a spawned scheduler) keep theirs;
    3. an OMP_NUM_THREADS the operator set is kept, and torch follows it."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    natural = probe("import json, torch; print(json.dumps(torch.get_num_threads()))", env)
    assert probe(PROBE, env) == [None, natural]
    assert probe(PROBE, env | {"OMP_NUM_THREADS": "1"}) == ["1", 1]
