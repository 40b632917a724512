"""The COCO class names, read from the file Ultralytics ships, without importing Ultralytics.

Config checks (`vistream check-config`) must stay fast; importing Ultralytics pulls in torch.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import yaml


@functools.cache
def coco_names() -> list[str] | None:
    """COCO's 80 names in class-id order, or None when Ultralytics' dataset file cannot be found."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "cfg" / "datasets" / "coco.yaml"
    try:
        names = yaml.safe_load(path.read_text(encoding="utf-8"))["names"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)
