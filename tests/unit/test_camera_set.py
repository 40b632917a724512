"""The daemon's set of cameras: a camera whose ring does not fit is kept as failed and retried."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from vistream.config.models import CameraConfig
from vistream.ops.cameras import Cameras
from vistream.ring import naming
from vistream.ring.shm import RingLayout

MIB = 1 << 20


class FakeChild:
    alive, exitcode, started_at = True, None, 0.0
    retry_at, spawn_failures = None, 0  # every start makes a process

    def __init__(self) -> None:
        self.started = False

    def start(self) -> None:
        self.started = True

    def terminate(self) -> None:
        self.alive = False

    def kill(self) -> None:
        self.alive = False

    def join(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        pass


def test_a_camera_without_room_for_its_ring_is_failed_then_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """1. /dev/shm has 1 MiB free: adding camera `late` makes no ring and starts no reader; its
       status says `failed` and why; the scheduler is given no ring for it.
    2. A reload changes it (detect_fps): it keeps failing, with the new config, no KeyError.
    3. Retries come at a reload (forced) or after the backoff, not at every tick.
    4. Room again: the retry makes its ring and starts its reader."""
    instance = f"t{uuid.uuid4().hex[:6]}"
    spawned: list[tuple[str, Any]] = []

    def spawn(cam: CameraConfig, ring_name: str) -> Any:
        spawned.append((ring_name, FakeChild()))
        return spawned[-1][1]

    cams = Cameras(instance, RingLayout(2, 64, 64, plane_width=64, plane_height=48), spawn, retry_s=10.0)
    late = CameraConfig(name="late", url="rtsp://h/late", detect_fps=3)
    monkeypatch.setattr(naming, "free_bytes", lambda shm_dir=None: 1 * MIB // 1024)
    try:
        reason = cams.add(late)
        assert reason is not None and "--shm-size" in reason
        (status,) = cams.status()
        assert (status.name, status.state, status.failed) == ("late", "failed", reason)
        assert cams.ring_names() == {} and not spawned and cams.config("late") is None
        assert not list(Path("/dev/shm").glob(f"vistream.{instance}.*"))

        cams.stop(["late"], 0.1)
        cams.start(late.model_copy(update={"detect_fps": 2}))
        assert cams.status()[0].cfg.detect_fps == 2 and cams.failed == {"late": reason}

        assert [c.name for c in cams.retry_due(100.0)] == ["late"]
        assert cams.retry_due(105.0) == []
        assert [c.name for c in cams.retry_due(105.0, force=True)] == ["late"]

        monkeypatch.undo()
        (cfg,) = cams.retry_due(200.0)
        assert cams.add(cfg) is None
        assert cams.failed == {} and cams.status()[0].state == "starting"
        assert [name for name, _ in spawned] == [cams.ring_names()["late"]] and spawned[0][1].started
        assert list(Path("/dev/shm").glob(f"vistream.{instance}.*"))
    finally:
        cams.retire_all()
    assert not list(Path("/dev/shm").glob(f"vistream.{instance}.*"))
