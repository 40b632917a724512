"""Shared-memory names and /dev/shm at start-up: an earlier life's leftovers, and room for the rings."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from vistream.config.models import Config
from vistream.daemon import BootError, Daemon
from vistream.ring import naming
from vistream.ring.naming import remove_leftovers, segment_name, shm_shortage
from vistream.ring.shm import FrameRing, RingLayout

LAYOUT = RingLayout(3, 8, 12)
MIB = 1 << 20


def test_leftover_of_an_earlier_life_of_our_pid_is_removed() -> None:
    """1. A daemon that is PID 1 in its container crashed and left its segment; the container
       restarted and the new daemon is PID 1 again (here: a segment with our own pid).
    2. At start-up (nothing created yet) the segment is removed, so creating the ring works.
    3. Once the daemon has created its rings, they are its own and left alone."""
    instance = f"t{uuid.uuid4().hex[:6]}"
    name = segment_name(instance, "cam")
    left = FrameRing.create(name, LAYOUT)
    left.close()
    assert remove_leftovers(instance) == [name]
    ring = FrameRing.create(name, LAYOUT)  # FileExistsError before the fix
    try:
        assert remove_leftovers(instance, own={name}) == []
        assert Path("/dev/shm", name).exists()
    finally:
        ring.close()
        ring.unlink()


def test_shm_shortage_names_the_need_and_shm_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker's default 64 MB /dev/shm and 20 cameras at imgsz 640: one line with the need,
    what is free, and the `--shm-size` to start the container with; nothing when it fits."""
    monkeypatch.setattr(naming, "free_bytes", lambda shm_dir=None: 64 * MIB)
    need = 20 * RingLayout(4, 640, 640).total_bytes
    line = shm_shortage(need)
    assert line is not None and "\n" not in line
    assert f"need {need / MIB:.0f} MiB" in line and "only 64 MiB is free" in line
    size = int(line.split("--shm-size=")[1].split("m")[0])
    assert size * MIB >= need
    assert shm_shortage(32 * MIB) is None


def test_daemon_refuses_to_boot_without_room_for_its_rings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's ring step fails with exit code 2 and that line, before creating any ring."""
    monkeypatch.setattr(naming, "free_bytes", lambda shm_dir=None: 1 * MIB)
    client = f"t{uuid.uuid4().hex[:6]}"
    cfg = Config.model_validate(
        {"mqtt": {"client_id": client}, "cameras": [{"name": "a", "url": "/dev/null"}]}
    )
    daemon = Daemon(cfg)
    try:
        with pytest.raises(BootError) as err:
            daemon.start()
    finally:
        daemon.stop()
    assert err.value.exit_code == 2 and "--shm-size=" in str(err.value)
    assert not list(Path("/dev/shm").glob(f"vistream.{client}.*"))
