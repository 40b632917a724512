"""Names of this daemon's shared-memory segments, and removal of a crashed run's leftovers.

A segment is named `vistream.<instance>.<pid>.<camera>`: the instance (the
MQTT client id, unique per daemon) keeps daemons apart, the owner's pid tells
a live daemon's segments from those a dead one left in /dev/shm. A segment with
the daemon's own pid that exists before the daemon created its rings was left
by an earlier life of the same pid: in a container the daemon is PID 1 every time.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Collection
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


def remove_leftovers(instance: str, shm_dir: Path = SHM_DIR, own: Collection[str] = ()) -> list[str]:
    """Unlink segments of this instance whose owning daemon is gone; returns their names.

    `own` names the segments this process has created so far (none at start-up): any
    other segment with this process's pid is a leftover of an earlier life of the pid.
    """
    removed: list[str] = []
    if not shm_dir.is_dir():  # not Linux: nothing to scan, the resource tracker is all we have
        return removed
    for path in shm_dir.glob(f"{PREFIX}.{instance}.*"):
        parts = path.name.split(".")
        if len(parts) < 4 or not parts[2].isdigit():
            continue
        pid = int(parts[2])
        if path.name in own:
            continue
        if pid != os.getpid() and _owner_alive(pid):
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


def free_bytes(shm_dir: Path = SHM_DIR) -> int | None:
    """Bytes free in the shared-memory file system (None where there is none to ask)."""
    try:
        return shutil.disk_usage(shm_dir).free
    except OSError:
        return None


def shm_shortage(need: int, shm_dir: Path = SHM_DIR) -> str | None:
    """One line saying `need` bytes of rings do not fit in `shm_dir`, or None when they do.

    A ring that does not fit is not refused when created (tmpfs allocates on write):
    the reader that first writes past the limit dies of SIGBUS. Docker gives a
    container 64 MB of /dev/shm unless told otherwise (`--shm-size`).
    """
    free = free_bytes(shm_dir)
    if free is None or need <= free:
        return None
    mib = 1 << 20
    suggest = -(-(need + 16 * mib) // (64 * mib)) * 64  # MiB, rounded up to 64 with some room
    return (
        f"shared memory: the camera rings need {need / mib:.0f} MiB in {shm_dir} but only "
        f"{free / mib:.0f} MiB is free; in a container, start it with --shm-size={suggest}m "
        f"(compose: shm_size) or run fewer cameras"
    )
