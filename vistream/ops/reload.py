"""What a reload (SIGHUP) changes: the difference between the running config and the new one.

Pure, so the decisions are unit-tested: which cameras to start, stop or restart, whether the
scheduler must be restarted (model or batching changed), whether the rules must be rebuilt (zones,
lines, alerts), and which changes need a full restart of the service to take effect (MQTT,
metrics, the state directory), which a reload reports instead of applying half of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vistream.config.models import CameraConfig, Config

# What only the event engine uses: changing these never restarts a reader.
EVENT_KEYS = frozenset({"zones", "lines"})
# Sections a running daemon cannot swap (the connection, the listening socket, the open outbox).
RESTART_KEYS = ("mqtt", "metrics", "state_dir", "outbox", "log_level")


@dataclass
class ConfigDiff:
    added: list[CameraConfig] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    restarted: dict[str, list[str]] = field(default_factory=dict)  # camera -> the keys that changed
    scheduler: list[str] = field(default_factory=list)  # model / batching keys that changed
    rules: bool = False  # alerts, zones, lines or cameras changed: rebuild the event engine
    needs_restart: list[str] = field(default_factory=list)  # changed, but only a restart applies them

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.restarted or self.scheduler or self.rules)

    def describe(self) -> str:
        """One log line: what the reload does."""
        parts = []
        if self.added:
            parts.append("started " + ", ".join(c.name for c in self.added))
        if self.removed:
            parts.append("stopped " + ", ".join(self.removed))
        for name, keys in self.restarted.items():
            parts.append(f"restarted {name} ({', '.join(keys)})")
        if self.scheduler:
            parts.append(f"restarted the scheduler ({', '.join(self.scheduler)})")
        if self.rules and not (self.added or self.removed or self.restarted):
            parts.append("rebuilt zones, lines and rules")
        elif self.rules:
            parts.append("rebuilt the event engine")
        return "; ".join(parts) or "nothing changed"


def diff(old: Config, new: Config) -> ConfigDiff:
    out = ConfigDiff()
    before = {c.name: c for c in old.enabled_cameras}
    after = {c.name: c for c in new.enabled_cameras}
    out.added = [c for name, c in after.items() if name not in before]
    out.removed = [name for name in before if name not in after]
    for name, cam in after.items():
        if name in before:
            keys = _changed(before[name], cam, exclude=EVENT_KEYS)
            if keys:
                out.restarted[name] = keys
    out.scheduler = [f"model.{k}" for k in _changed(old.model, new.model)]
    out.scheduler += [f"batching.{k}" for k in _changed(old.batching, new.batching)]
    if old.model.input_hw != new.model.input_hw:
        # The rings hold frames at the model's input size: a new size means new rings and readers.
        out.needs_restart.append("model.imgsz")
        out.scheduler = [k for k in out.scheduler if not k.startswith("model.")]
    geometry = any(
        (before[n].zones, before[n].lines) != (after[n].zones, after[n].lines) for n in after if n in before
    )
    # Cameras coming or going, or changing rate, change trackers and the cameras rules apply to.
    out.rules = old.alerts != new.alerts or geometry or bool(out.added or out.removed or out.restarted)
    out.needs_restart += [key for key in RESTART_KEYS if getattr(old, key) != getattr(new, key)]
    return out


def _changed(a: object, b: object, exclude: frozenset[str] = frozenset()) -> list[str]:
    fields = type(a).model_fields  # type: ignore[attr-defined]
    return [k for k in fields if k not in exclude and getattr(a, k) != getattr(b, k)]
