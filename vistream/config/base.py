"""What every config section shares: the base model, key paths, problems, names, file checks.

Validation context: `Config.model_validate(data, context={"base_dir": DIR})`
resolves relative file paths (camera files, `*_file` keys, a local model file)
against DIR, stores them absolute and checks that the files exist. The loader
passes the config file's directory; code that builds a Config without a
context gets every other check but paths are taken as they are.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo

# Camera and daemon names end up as MQTT topic levels, metric label values and
# shared-memory segment names, so they are restricted to a safe alphabet. Checked with `fullmatch`:
# `match` with "$" accepts a trailing newline ("front\n").
NAME_RE = re.compile(r"[a-z0-9_-]+")
CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_.-]+")
DEVICE_RE = re.compile(r"auto|cpu|cuda|cuda:\d+|mps")
SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Ultralytics' COCO-trained release detection models and their exports.
RELEASE_RE = re.compile(r"yolo(v[358]|v?1[0-2])[nsmlx]u?(\.pt|\.onnx|\.engine|_openvino_model/?)")


def not_yet(what: str) -> str:
    """The message for a key or value of a capability on the roadmap."""
    return f"not supported yet in this version (planned: {what}; see 'Planned keys' in docs/config.md)"


Loc = tuple[str | int, ...]


def key_path(loc: Loc) -> str:
    """`("cameras", 2, "detect_fps")` -> `cameras[2].detect_fps`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class ConfigError(Exception):
    """The config cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class KeyProblems(ValueError):
    """Problems found by a check on a whole model that belong to keys below it.

    A validator on a model only has the model's own location, but the user needs
    the exact key (and its YAML line): the loader appends each relative `loc` to
    the validator's location. The text still names the keys for code that reads
    pydantic's message directly.
    """

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key_path(loc) or '.'}: {msg}" for loc, msg in problems))


def _base_dir(info: ValidationInfo) -> Path | None:
    base = (info.context or {}).get("base_dir")
    return Path(base) if base is not None else None


def _existing_file(value: Path, info: ValidationInfo) -> Path:
    base = _base_dir(info)
    if base is None:
        return value
    path = value if value.is_absolute() else Path(os.path.normpath(base / value))
    if not path.exists():
        raise ValueError(f"no such file: {path}")
    if not path.is_file():
        raise ValueError(f"not a file: {path}")
    return path


class Section(BaseModel):
    """Base of every section: unknown keys are errors, never silently ignored."""

    # NaN fails every bound with a misleading message and .inf turns a timeout into "never";
    # rejecting both up front says what is wrong.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # Keys of capabilities on the roadmap: rejected with a pointer to the plan
    # instead of "unknown key", so a config written for a later version explains itself.
    planned_keys: ClassVar[dict[str, str]] = {}


def section_of(annotation: Any) -> tuple[type[Section] | None, bool]:
    """The section model a field holds, and whether it holds a list of them (for the loader and docs)."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation, False
    if get_origin(annotation) is list:
        return section_of(get_args(annotation)[0])[0], True
    return None, False


Point = tuple[float, float]


def checked_name(name: object) -> str:
    """A camera, rule, zone or line name: it becomes an MQTT topic level and a metric label value."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or len(name) > 64:
        raise ValueError(f"must be 1-64 characters of a-z 0-9 _ - (got {name!r})")
    return name


def shape_problems(name: Any, points: Any, kind: str | None) -> list[tuple[Loc, str]]:
    """Problems of one zone (a polygon) or line (two points), by key path below the shape's name."""
    try:
        checked_name(name)
    except ValueError as exc:
        return [((), f"the name {exc}")]
    if not isinstance(points, list):
        return [((), f"must be a list of [x, y] points (got {type(points).__name__})")]
    problems: list[tuple[Loc, str]] = []
    for i, p in enumerate(points):
        ok = isinstance(p, list) and len(p) == 2
        ok = ok and all(isinstance(c, int | float) and not isinstance(c, bool) for c in p)
        if not ok:
            problems.append(((i,), f"must be a point [x, y] (got {p!r})"))
        elif not all(0 <= c <= 1 for c in p):
            problems.append(((i,), f"coordinates are normalised: each must be within 0..1 (got {p!r})"))
    if problems:
        return problems
    if kind == "lines":
        if len(points) != 2:
            return [((), f"a line is exactly 2 points, p1 -> p2 (got {len(points)})")]
        if points[0] == points[1]:
            return [((), "the two points of a line must differ")]
        return []
    if len(points) < 3:
        return [((), f"a zone needs at least 3 points (got {len(points)})")]
    from shapely.geometry import Polygon  # imported here: only configs with zones pay for it

    polygon = Polygon(points)
    if polygon.is_valid and polygon.area > 0:
        return []
    if polygon.area == 0 and polygon.length > 0 and Polygon(points).convex_hull.area == 0:
        return [((), "the points enclose no area (all on one line?)")]
    return [((), "the polygon crosses itself: list the points in order around its edge")]
