"""The alert side of the config: rules, the outbox's bounds, and the checks that tie rules to cameras."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from vistream.config.base import KeyProblems, Loc, Section, checked_name

if TYPE_CHECKING:
    from vistream.config.models import CameraConfig


class AlertRule(Section):
    """An alert rule: when it holds on a camera, an event starts; when it stops holding, the event ends."""

    name: str = Field(description="Unique name, `[a-z0-9_-]+`; used in topics.")
    cameras: list[str] | None = Field(
        default=None,
        description="Cameras it applies to; default: every camera that has its `zone` or `line` "
        "(every camera when it names neither).",
    )
    labels: list[str] | None = Field(
        default=None, description="Object labels it applies to (model class names); default: any."
    )
    zone: str | None = Field(
        default=None,
        description="A zone of the cameras: objects must be in it. Neither zone nor line: the whole frame.",
    )
    line: str | None = Field(default=None, description="A line of the cameras: objects must cross it.")
    direction: Literal["in", "out", "both"] = Field(
        default="both", description="With `line`: which crossings count."
    )
    min_confidence: float = Field(default=0.5, gt=0, le=1, description="Ignore weaker detections.")
    min_duration_s: float = Field(
        default=0, ge=0, description="How long it must hold (an object in the zone) before an event starts."
    )
    min_count: int = Field(
        default=1,
        ge=1,
        description="Objects needed at once. 1: one event per object (track); more: one event for the "
        "count on the camera.",
    )
    cooldown_s: float = Field(
        default=30,
        ge=0,
        description="After an event of this rule on a camera ends, no new one starts there for this long.",
    )
    end_after_s: float = Field(
        default=3, gt=0, description="An event ends when the rule has not held for this long."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return checked_name(v)

    @field_validator("cameras", "labels")
    @classmethod
    def _not_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("must not be empty (leave it out for all)")
        return v

    @model_validator(mode="after")
    def _zone_or_line(self) -> AlertRule:
        if self.zone is not None and self.line is not None:
            raise KeyProblems([(("line",), "a rule has a zone or a line, not both")])
        if "direction" in self.model_fields_set and self.line is None:
            raise KeyProblems([(("direction",), "only meaningful with `line`")])
        if self.line is not None and self.min_count > 1:
            raise KeyProblems([(("min_count",), "counts objects in a zone; a line rule counts crossings")])
        return self


class OutboxConfig(Section):
    """The durable outbox of events, counters and snapshots in `state_dir`."""

    max_rows: int = Field(
        default=100_000, gt=0, description="Most undelivered messages kept; the oldest go first (counted)."
    )
    max_age_s: float = Field(
        default=7 * 24 * 3600, gt=0, description="Undelivered messages older than this are dropped (counted)."
    )


def rule_applies(rule: AlertRule, cam: CameraConfig) -> bool:
    if rule.cameras is not None:
        return cam.name in rule.cameras
    if rule.zone is not None:
        return rule.zone in cam.zones
    if rule.line is not None:
        return rule.line in cam.lines
    return True


def rule_problems(
    rule: AlertRule, cameras: dict[str, CameraConfig], known_labels: list[str] | None
) -> list[tuple[Loc, str]]:
    """A rule's references to cameras, zones, lines and labels that do not exist."""
    problems: list[tuple[Loc, str]] = []
    for j, name in enumerate(rule.cameras or []):
        if name not in cameras:
            problems.append((("cameras", j), f"no camera named {name!r} (cameras: {', '.join(cameras)})"))
    for key, shape in (("zone", rule.zone), ("line", rule.line)):
        if shape is None:
            continue
        plural = key + "s"
        named = [cameras[n] for n in rule.cameras or [] if n in cameras]
        if rule.cameras is None and not any(shape in getattr(c, plural) for c in cameras.values()):
            problems.append(((key,), f"no camera has a {key} named {shape!r}"))
        for cam in named:
            if shape not in getattr(cam, plural):
                have = ", ".join(getattr(cam, plural)) or "none"
                problems.append(((key,), f"camera {cam.name!r} has no {key} {shape!r} ({plural}: {have})"))
    if known_labels is not None:
        for j, label in enumerate(rule.labels or []):
            if label not in known_labels:
                problems.append((("labels", j), unknown_label(label, known_labels)))
    return problems


def unknown_label(label: str, known: list[str]) -> str:
    close = difflib.get_close_matches(label, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{label!r} is not a class the model reports{hint}"
