"""The configuration reference, generated from the models so it cannot drift from them.

`python -m vistream.config.docs` writes docs/config.md; `--check` only compares
(exit 1 when the file is out of date). A unit test does the same comparison.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from vistream.config.models import Config, Section, section_of

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "config.md"

_HEADER = """\
# Configuration reference

<!-- Generated from vistream/config/models.py by `python -m vistream.config.docs`; do not edit. -->

The config is one YAML file (`vistream run -c PATH`, `vistream check-config PATH`); see
`configs/example.yaml` for a commented one. Unknown keys are errors. Relative file paths
(camera files, `*_file` keys, a local model file) are taken from the config file's directory.
"""

_SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean", Path: "path"}

# Values (not keys) of planned capabilities; the keys come from each model's `planned_keys`.
_PLANNED_VALUES: list[tuple[str, str]] = []


def render() -> str:
    """The whole reference as Markdown."""
    parts = [_HEADER]
    for prefix, model in _sections(Config, ""):
        parts.append(_section(prefix, model))
    parts.append(_planned())
    return "\n".join(parts)


def _sections(model: type[Section], prefix: str) -> list[tuple[str, type[Section]]]:
    """Depth first, the model itself before the sections it holds, in field order."""
    found = [(prefix, model)]
    for name, field in model.model_fields.items():
        sub, many = section_of(field.annotation)
        if sub is not None:
            found += _sections(sub, f"{prefix}{name}{'[]' if many else ''}.")
    return found


def _section(prefix: str, model: type[Section]) -> str:
    title = f"`{prefix.rstrip('.')}`" if prefix else "Top level"
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        cells = (f"`{prefix}{name}`", _type(field), _default(field), field.description or "")
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    doc = (model.__doc__ or "").strip()
    return f"## {title}\n\n{doc}\n\n" + "\n".join(rows) + "\n"


def _type(field: FieldInfo) -> str:
    text = _type_name(field.annotation)
    limits = []
    for meta in field.metadata:
        for cls, attr, symbol in (
            (at.Gt, "gt", ">"),
            (at.Ge, "ge", ">="),
            (at.Lt, "lt", "<"),
            (at.Le, "le", "<="),
        ):
            if isinstance(meta, cls):
                limits.append(f"{symbol} {getattr(meta, attr)}")
        if isinstance(meta, at.MinLen) and meta.min_length:
            limits.append("not empty")
    return ", ".join([text, *limits])


def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is list:
        inner = _type_name(args[0])
        if inner == "section (below)":
            return "list of entries (below)"
        return f"list of ({inner})" if " or " in inner else f"list of {inner}"
    if origin is tuple:
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section (below)"
    return _SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "-"
    value = field.default
    if value is PydanticUndefined:
        return "**required**"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _planned() -> str:
    rows = ["| key | planned capability |", "|---|---|"]
    for prefix, model in _sections(Config, ""):
        for key, what in model.planned_keys.items():
            rows.append(f"| `{prefix}{key}` | {what} |")
    rows += [f"| `{key}` | {what} |" for key, what in _PLANNED_VALUES]
    if len(rows) == 2:  # nothing planned
        return ""
    return (
        "## Planned keys\n\n"
        "Keys of capabilities on the roadmap. This version rejects them with `not supported yet` rather\n"
        "than accepting and ignoring them.\n\n" + "\n".join(rows) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    check = "--check" in args
    paths = [a for a in args if a != "--check"]
    path = Path(paths[0]) if paths else DOC_PATH
    text = render()
    if check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{path} is out of date; run: python -m vistream.config.docs", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
