"""Reading a YAML config file into a `Config`, and turning every problem into one human line.

Each problem reads `<key path>: <message> (line N)`, e.g.
`cameras[2].detect_fps: must be > 0 (line 14)`. All problems are collected
before anything is reported, and no traceback ever reaches the user.
"""

from __future__ import annotations

import difflib
import os
import sys
from datetime import date
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from vistream.config.models import (
    Config,
    ConfigError,
    KeyProblems,
    Loc,
    Section,
    key_path,
    not_yet,
    section_of,
)
from vistream.config.secrets import redact_text

Lines = dict[Loc, int]
Problem = tuple[Loc, int | None, str]  # key path, YAML line, message

__all__ = ["ConfigError", "check_config", "load_config", "validate_config"]


def load_config(path: str | Path) -> Config:
    """Read and validate the YAML file at `path`; relative paths in it are taken from its directory."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not a UTF-8 text file"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror or exc})"]) from None
    data, lines, duplicates = _parse_yaml(text, str(path))
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {_kind(data)}"
        raise ConfigError([f"{path}: the top level must be a mapping of sections (got {got})"])
    return _validate(data, Path(os.path.abspath(path)).parent, lines, duplicates)


def validate_config(data: Any, base_dir: str | Path | None = None) -> Config:
    """Validate an already parsed config (a dict); with `base_dir`, file paths are resolved and checked."""
    return _validate(data, Path(base_dir) if base_dir is not None else None, {}, [])


def check_config(path: str | Path, out: TextIO | None = None) -> int:
    """`vistream check-config`: print OK or one line per problem; return the exit code (0 or 2)."""
    out = out or sys.stdout
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        print(str(exc), file=out)
        return 2
    n = len(cfg.cameras)
    print(f"{path}: OK ({n} camera{'s' if n != 1 else ''})", file=out)
    return 0


def _parse_yaml(text: str, source: str) -> tuple[Any, Lines, list[Problem]]:
    """The data, the line of every key and list item, and duplicate-key problems."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: Lines = {}
        duplicates: list[Problem] = []
        if node is not None:
            _walk(node, (), lines, duplicates, set())
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {_yaml_problem(exc)}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: invalid YAML: nested too deeply"]) from None
    finally:
        loader.dispose()
    return data, lines, duplicates


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    text = exc.problem or exc.context or "cannot parse"
    notes = [f"line {exc.problem_mark.line + 1}"] if exc.problem_mark else []
    if exc.problem and exc.context and exc.context_mark:
        # Where the unclosed bracket or the broken key began, often far above where parsing gave up.
        notes.append(f"{exc.context} on line {exc.context_mark.line + 1}")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def _walk(node: yaml.Node, loc: Loc, lines: Lines, duplicates: list[Problem], seen: set[int]) -> None:
    # Aliases share node objects: visiting each node once keeps an alias bomb from exploding here.
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if (*loc, key) in lines:
                # PyYAML keeps the last value without a word; a repeated key is almost always a mistake.
                first = lines[(*loc, key)]
                duplicates.append(((*loc, key), line, f"duplicate key (first on line {first})"))
            else:
                lines[(*loc, key)] = line
            _walk(value_node, (*loc, key), lines, duplicates, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*loc, i)] = item.start_mark.line + 1
            _walk(item, (*loc, i), lines, duplicates, seen)


def _validate(data: Any, base_dir: Path | None, lines: Lines, duplicates: list[Problem]) -> Config:
    context = {"base_dir": base_dir} if base_dir is not None else None
    try:
        cfg = Config.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(_lines_of(duplicates + _describe(exc, data, lines))) from None
    if duplicates:
        raise ConfigError(_lines_of(duplicates))
    return cfg


def _lines_of(problems: list[Problem]) -> list[str]:
    """In file order, so the list reads top to bottom like the file; problems without a line last.

    Messages quote the offending value, which may be a URL with a password in it.
    """
    ordered = sorted(problems, key=lambda p: p[1] or sys.maxsize)
    return [
        redact_text(f"{key_path(loc) or '.'}: {msg}" + (f" (line {line})" if line else ""))
        for loc, line, msg in ordered
    ]


def _describe(exc: ValidationError, data: Any, lines: Lines) -> list[Problem]:
    found: dict[Loc, Problem] = {}
    for err in exc.errors():
        for loc, message in _split(err, data):
            # Union members each report the same key; the first message is the one to show.
            found.setdefault(loc, (loc, _line(loc, lines), message))
    return list(found.values())


def _split(err: Any, data: Any) -> list[tuple[Loc, str]]:
    loc = tuple(err["loc"])
    if err["type"] == "invalid_key":
        # A key YAML read as a number (`1: x`): no section has such a key, so it is an unknown one.
        loc, err = (*loc[:-1], str(loc[-1])), {**err, "type": "extra_forbidden"}
    loc = _trim(loc, data)
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, KeyProblems):
        return [((*loc, *sub), msg) for sub, msg in cause.problems]
    return [(loc, _message(err, loc))]


def _trim(loc: Loc, data: Any) -> Loc:
    """Drop what pydantic appends beyond the user's keys (union member tags such as `int`)."""
    kept: list[str | int] = []
    for part in loc:
        if isinstance(data, dict):
            kept.append(part)
            if part not in data:
                break  # a missing or unknown key: it is the last part
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            kept.append(part)
            data = data[part]
        else:
            break
    return tuple(kept)


def _line(loc: Loc, lines: Lines) -> int | None:
    # A missing key has no line of its own; the nearest enclosing key or item that exists does.
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


_TYPES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "tuple": "a list",
    "dict": "a mapping",
    "model": "a mapping",
    "model_attributes": "a mapping",
    "path": "a file path",
}

# pydantic error type -> (symbol, key of the bound in the error's ctx)
_LIMITS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def _message(err: Any, loc: Loc) -> str:
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind in _LIMITS:
        symbol, key = _LIMITS[kind]
        bound = ctx[key]
        # pydantic hands float fields' bounds back as floats: show `> 0`, not `> 0.0`.
        return f"must be {symbol} {bound:g}" if isinstance(bound, float) else f"must be {symbol} {bound}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind == "literal_error":
        return f"must be one of {ctx['expected'].replace(chr(39), '')} (got {_show(value)})"
    if kind == "too_short":
        if loc == ("cameras",):
            return "at least one camera is required"
        return "must not be empty"
    if kind == "string_too_short":
        return "must not be empty"
    if kind in ("string_too_long", "too_long"):
        return f"too long (at most {ctx.get('max_length')})"
    if kind == "string_type" and isinstance(value, bool | int | float | date):
        # YAML reads `no`, `2024-01-01` and `007` as a boolean, a date and a number: quoting keeps the text.
        return f"must be a string (YAML read {_show(value)}; put the value in quotes)"
    if kind == "finite_number":
        return f"must be a finite number (got {_show(value)})"
    if kind == "int_from_float":
        return f"must be a whole number (got {_show(value)})"
    base = kind.removesuffix("_type").removesuffix("_parsing")
    if base in _TYPES:
        return f"must be {_TYPES[base]} (got {_show(value)})"
    return err["msg"]


def _unknown_key(loc: Loc) -> str:
    key = str(loc[-1])
    model = _model_at(loc[:-1])
    if model is None:
        return f"unknown key {key!r}"
    if key in model.planned_keys:
        return not_yet(model.planned_keys[key])
    close = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6)
    return f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _model_at(loc: Loc) -> type[Section] | None:
    """The section model that the keys at `loc` belong to, following the schema's field types."""
    model: type[Section] | None = Config
    for part in loc:
        if isinstance(part, int):
            continue  # list items: the element model was already taken from the list type
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        model = section_of(field.annotation)[0]
    return model


def _kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict | list):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    text = str(value) if isinstance(value, date) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
