"""Applying a reload (`Reloader`) as the daemon wires it: each change reaches the part that owns it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from unit.test_shard import FakeCameras
from vistream.daemon import Daemon
from vistream.ops.reload import Reloader
from vistream.outputs.outbox_runtime import OutboxRuntime


def write(path: Path, max_batch: int) -> None:
    cams = [{"name": "a", "url": "rtsp://h/a"}]
    path.write_text(yaml.safe_dump({"cameras": cams, "batching": {"max_batch": max_batch}}))


def test_a_reload_replaces_the_scheduler_with_the_new_batching(tmp_path: Path) -> None:
    """1. The daemon runs with batching.max_batch 4, from a config file.
    2. The file says 2; SIGHUP (`reload()`): the scheduler is replaced once, and the daemon's
       config already says 2 when it is, since the new scheduler is made from it. The camera,
       unchanged, is neither stopped nor started again."""
    path = tmp_path / "vistream.yaml"
    write(path, 4)
    from vistream.config.loader import load_config

    d = Daemon(load_config(path), config_path=path)
    seen: list[int] = []
    scheduler = SimpleNamespace(
        send=lambda msg: None, replace=lambda timeout, stop=None: seen.append(d.cfg.batching.max_batch)
    )
    cameras = FakeCameras()
    stopped: list[Any] = []
    cameras.stop = lambda names, timeout, stop=None: stopped.extend(names)  # type: ignore[method-assign]
    mqtt = SimpleNamespace(camera_status=lambda name, online: None, forget_camera=lambda name: None)
    d.reloader = Reloader(
        d.shard, cameras, scheduler, mqtt, d.stop_flag,  # type: ignore[arg-type]
        rules=SimpleNamespace(reconfigure=lambda cfg, outbox=None: None),
        outbox=OutboxRuntime(tmp_path / "outbox.sqlite3", d.cfg.outbox), link=mqtt,  # type: ignore[arg-type]
    )  # fmt: skip
    write(path, 2)
    d.reload()
    assert seen == [2] and d.cfg.batching.max_batch == 2
    assert stopped == [] and cameras.started == [] and cameras.removed == []
