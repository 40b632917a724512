"""What a reload (SIGHUP) changes, and applying it.

`diff` is pure, so the decisions are unit-tested: which cameras to start, stop or restart, whether the
scheduler must be restarted (model or batching changed), whether the rules must be rebuilt (zones,
lines, alerts), and which changes need a full restart of the service to take effect (MQTT,
metrics, the state directory), which a reload reports instead of applying half of them.
`Reloader` applies a diff: each change goes to the part that owns it (the cameras, the scheduler,
the event engine through `reconfigure`, the outbox's runtime).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from vistream.config.models import CameraConfig, Config
from vistream.ops.logs import camera
from vistream.scheduler.messages import AddCamera, RemoveCamera

if TYPE_CHECKING:
    from vistream.ops.cameras import Cameras
    from vistream.ops.process import StopFlag
    from vistream.ops.scheduler import SchedulerRuntime
    from vistream.ops.shard import Shard
    from vistream.outputs.delivery import Link
    from vistream.outputs.outbox import Outbox
    from vistream.outputs.outbox_runtime import OutboxRuntime

log = logging.getLogger(__name__)

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
            if before[name].password_digest != cam.password_digest and "password_file" not in keys:
                keys.append("password_file (its content)")  # read again at the reader's start
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


# -- applying a diff ------------------------------------------------------------------------------


class CameraLink(Protocol):
    """What a reload tells MQTT about cameras (vistream.outputs.mqtt.MqttPublisher)."""

    def camera_status(self, name: str, online: bool) -> None: ...
    def forget_camera(self, name: str) -> None: ...


class Rules(Protocol):
    def reconfigure(self, cfg: Config, outbox: Outbox | None = None) -> None: ...


class Discovery(Protocol):
    def update(self, cfg: Config) -> None: ...


class Reloader:
    """Applies a reload's diff to the running parts, each change by the part that owns it, and
    starts the cameras that failed for want of /dev/shm once their ring fits (at a reload, or
    every `Cameras.retry_s` from the main loop). Main thread only.

    Readers that go or are replaced stop together, within one deadline that a SIGTERM (`stop`)
    cuts short, and so does the wait for a scheduler being replaced: a daemon told to stop mid-
    reload stops, the rest of the reload would be undone anyway.
    """

    def __init__(
        self,
        shard: Shard,
        cameras: Cameras,
        scheduler: SchedulerRuntime,
        mqtt: CameraLink,
        stop: StopFlag,
        *,
        rules: Rules,
        outbox: OutboxRuntime,
        link: Link,
        discovery: Discovery | None = None,
        reader_stop_s: float = 2.0,
        scheduler_stop_s: float = 3.0,
    ) -> None:
        self.shard, self.cameras, self.scheduler, self.mqtt, self.stop = shard, cameras, scheduler, mqtt, stop
        self.rules, self.outbox, self.link, self.discovery = rules, outbox, link, discovery
        self.reader_stop_s, self.scheduler_stop_s = reader_stop_s, scheduler_stop_s

    def plan(self, full: Config, cfg: Config, full_cfg: Config) -> tuple[ConfigDiff, Config, Config]:
        """What `full` (the whole new config) changes in the running `cfg` (this shard's) and
        `full_cfg`, and the two configs to run from now on: the daemon takes them before `apply`
        (a new scheduler is made from them). Sections only a restart applies stay as they run, so
        the running config keeps describing the daemon."""
        new = self.shard.view(full)
        change = diff(cfg, new)
        if change.needs_restart:
            log.warning(
                "reload: %s changed; a restart of the service applies that", ", ".join(change.needs_restart)
            )
        log.info("reload: %s", change.describe())
        kept = {key.split(".")[0] for key in change.needs_restart}
        cfg = new.model_copy(update={k: getattr(cfg, k) for k in kept})
        full_cfg = full.model_copy(update={k: getattr(full_cfg, k) for k in kept})
        return change, cfg, full_cfg

    def apply(self, change: ConfigDiff, cfg: Config, full_cfg: Config) -> None:
        """Apply `change`; `cfg` and `full_cfg` are the configs `plan` returned, running already."""
        # Every reader that goes or is replaced stops at once, together: one deadline, not one each.
        self.cameras.stop([*change.removed, *change.restarted], self.reader_stop_s, self.stop)
        if self.stop:  # SIGTERM during the reload: stop now
            return
        for name in change.removed:
            self.remove(name)
        cams = {c.name: c for c in cfg.enabled_cameras}
        rings = self.cameras.ring_names()
        for name, keys in change.restarted.items():
            self.cameras.start(cams[name])  # one that failed to start takes the new config for its retry
            if "detect_fps" in keys and name in rings:  # its tracker steps at the new rate
                self.scheduler.send(AddCamera(name, rings[name], cams[name].detect_fps))
        for cam in change.added:
            self.add(cam)
        self.retry_failed(time.monotonic(), force=True)
        if change.scheduler:  # a new model or batching; readers and rings stay as they are
            self.scheduler.replace(self.scheduler_stop_s, self.stop)
        if change.rules:
            self.outbox.reload(cfg, self.rules, self.link)  # the first rules or lines: open the outbox
            self.rules.reconfigure(cfg)
            if self.discovery is not None:
                self.discovery.update(full_cfg)  # into the outbox: Delivery sends it

    def add(self, cam: CameraConfig) -> bool:
        """Make the camera's ring and start its reader; a ring that does not fit marks it failed."""
        before = self.cameras.failed.get(cam.name)
        shortage = self.cameras.add(cam)
        if shortage is None:
            if before is not None:
                log.warning("camera %s: started, its ring fits now", cam.name, extra=camera(cam.name))
            self.scheduler.send(AddCamera(cam.name, self.cameras.ring_names()[cam.name], cam.detect_fps))
        elif shortage != before:  # once per cause, not at every retry
            log.error("camera %s not started, retrying every %.0fs and at reloads: %s", cam.name,
                      self.cameras.retry_s, shortage, extra=camera(cam.name))  # fmt: skip
            self.mqtt.camera_status(cam.name, False)
        return shortage is None

    def retry_failed(self, now: float, *, force: bool = False) -> None:
        """Start the cameras whose ring did not fit once there is room: at a reload, or now and then."""
        for cam in self.cameras.retry_due(now, force=force):
            if not self.add(cam):
                return  # no room for this one: none for the next either

    def remove(self, name: str) -> None:
        """Its reader is stopped already; tell the scheduler and MQTT, retire its ring."""
        self.scheduler.send(RemoveCamera(name))
        log.info("camera %s: removed, offline", name, extra=camera(name))
        self.mqtt.camera_status(name, False)
        self.mqtt.forget_camera(name)
        self.cameras.remove(name)
