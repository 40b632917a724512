"""What a reload changes (vistream/ops/reload.py): cameras started, stopped, restarted; the scheduler;
the rules; and what only a restart of the service applies."""

from __future__ import annotations

from typing import Any

import pytest

from vistream.config.models import Config
from vistream.ops.reload import diff

CAMS = [
    {"name": "a", "url": "rtsp://h/a"},
    {"name": "b", "url": "rtsp://h/b", "detect_fps": 5},
    {"name": "c", "url": "rtsp://h/c", "zones": {"z": [[0, 0], [1, 0], [1, 1]]}},
]


def cfg(cameras: list[dict[str, Any]] | None = None, **top: Any) -> Config:
    return Config.model_validate({"cameras": cameras or CAMS, **top})


def test_cameras_added_removed_changed_and_unchanged() -> None:
    """a unchanged, b's detect_fps changed (restart b only), c removed, d added, e disabled (not started)."""
    new = [
        CAMS[0],
        {**CAMS[1], "detect_fps": 10},
        {"name": "d", "url": "rtsp://h/d"},
        {"name": "e", "url": "rtsp://h/e", "enabled": False},
    ]
    d = diff(cfg(), cfg(new))
    assert [c.name for c in d.added] == ["d"]
    assert d.removed == ["c"]
    assert d.restarted == {"b": ["detect_fps"]}
    assert not d.scheduler and not d.needs_restart
    assert d.rules  # trackers of new cameras, rules of those gone
    assert d.describe() == "started d; stopped c; restarted b (detect_fps); rebuilt the event engine"


def test_zones_lines_and_rules_restart_nothing() -> None:
    """A zone moved and a rule added: no reader, no scheduler; the rules are rebuilt."""
    moved = [CAMS[0], CAMS[1], {**CAMS[2], "zones": {"z": [[0, 0], [0.5, 0], [0.5, 1]]}}]
    d = diff(cfg(), cfg(moved, alerts=[{"name": "r", "zone": "z"}]))
    assert d.rules and not d.added and not d.removed and not d.restarted and not d.scheduler
    assert d.describe() == "rebuilt zones, lines and rules"


@pytest.mark.parametrize(
    ("top", "scheduler"),
    [
        ({"model": {"conf": 0.5}}, ["model.conf"]),
        ({"batching": {"max_batch": 2}}, ["batching.max_batch"]),
        ({"model": {"iou": 0.6}, "batching": {"max_wait_ms": 5}}, ["model.iou", "batching.max_wait_ms"]),
    ],
)
def test_model_or_batching_restart_the_scheduler_only(top: dict[str, Any], scheduler: list[str]) -> None:
    d = diff(cfg(), cfg(**top))
    assert d.scheduler == scheduler and not d.restarted and not d.added and not d.removed


def test_what_only_a_restart_applies_is_reported() -> None:
    d = diff(cfg(), cfg(mqtt={"host": "other"}, metrics={"port": 9200}))
    assert d.needs_restart == ["mqtt", "metrics"] and d.empty


def test_same_config_changes_nothing() -> None:
    d = diff(cfg(), cfg())
    assert d.empty and d.describe() == "nothing changed"


def test_a_new_model_input_size_needs_a_restart() -> None:
    """The rings hold frames letterboxed to the model's input: a new imgsz is not applied by a reload."""
    d = diff(cfg(), cfg(model={"imgsz": 320, "conf": 0.5}))
    assert d.needs_restart == ["model.imgsz"] and d.scheduler == []
