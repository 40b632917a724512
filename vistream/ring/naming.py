"""Names of this daemon's shared-memory segments, and removal of a crashed run's leftovers.

A segment is named `vistream.<instance>.<pid>.<camera>`: the instance (the
MQTT client id, unique per daemon) keeps daemons apart, the owner's pid tells
a live daemon's segments from those a dead one left in /dev/shm.
"""

from __future__ import annotations

import logging
import os
import re
from multiprocessing import shared_memory
from pathlib import Path

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
PREFIX = "vistream"


def instance_id(client_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", client_id)


def segment_name(instance: str, camera: str, pid: int | None = None) -> str:
    return f"{PREFIX}.{instance}.{pid or os.getpid()}.{camera}"


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a recycled pid that now belongs to something else is not our owner
        return b"vistream" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def remove_leftovers(instance: str, shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink segments of this instance whose owning daemon is gone; returns their names."""
    removed: list[str] = []
    if not shm_dir.is_dir():  # not Linux: nothing to scan, the resource tracker is all we have
        return removed
    for path in shm_dir.glob(f"{PREFIX}.{instance}.*"):
        parts = path.name.split(".")
        if len(parts) < 4 or not parts[2].isdigit():
            continue
        pid = int(parts[2])
        if pid == os.getpid() or _owner_alive(pid):
            if pid != os.getpid():
                log.warning("shared memory %s belongs to a running daemon (pid %d) with the same client_id",
                            path.name, pid)  # fmt: skip
            continue
        try:
            seg = shared_memory.SharedMemory(name=path.name)
            seg.close()
            seg.unlink()
            removed.append(path.name)
        except FileNotFoundError:
            pass
    if removed:
        log.info(
            "removed %d shared-memory segment(s) left by a crashed run: %s", len(removed), ", ".join(removed)
        )
    return removed
