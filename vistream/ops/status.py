"""What the daemon shows to its readers on other threads: the HTTP app, the metrics collector.

They get `StatusSource`, a read-only interface, not the daemon: what they read is a copy made
under the owner's rules (a ring header copied under the ring's lease, vistream.ring.lifetime),
never a live object that the main thread may take apart while they hold it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from vistream.ring.shm import State

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from vistream.config.models import CameraConfig
    from vistream.ring.shm import FrameRing


@dataclass(frozen=True)
class CameraStatus:
    """One camera at one moment: its config, whether it is online, and a copy of its ring header.

    `failed` says why the camera could not be started (no room for its ring in /dev/shm); such a
    camera has no ring, so no header, and is retried by the next reload or after a backoff."""

    cfg: CameraConfig
    online: bool = False
    restarts: int = 0
    header: np.ndarray | None = None  # a copy: reading it never touches shared memory
    failed: str | None = None

    @property
    def name(self) -> str:
        return self.cfg.name

    def field(self, key: str) -> int:
        """An integer field of the header; 0 for a camera without a ring."""
        return int(self.header[key]) if self.header is not None else 0

    def seconds(self, key: str) -> float:
        return float(self.header[key]) if self.header is not None else 0.0

    @property
    def state(self) -> str:
        if self.failed is not None:
            return "failed"
        return State.NAMES.get(self.field("state"), "unknown")


class StatusSource(Protocol):
    """What the daemon's readers on other threads may ask of it."""

    def camera_status(self) -> list[CameraStatus]:
        """Every camera of the running config, in config order, those that failed to start included."""
        ...

    def ring(self, name: str) -> AbstractContextManager[FrameRing | None]:
        """The camera's ring under a lease, for one copy; None when it has none (any more)."""
        ...
