"""Faults injected into a daemon under test: put this folder on its PYTHONPATH and set

* `VISTREAM_INJECT_SLOW_PLANE_S`: a snapshot-plane copy in the main process takes this long (it
  takes the view, waits, then copies), widening the window in which the ring can go away;
* `VISTREAM_INJECT_SLOW_METRIC`: `camera=seconds`: every sample of that camera a /metrics scrape
  adds waits this long, so a scrape is in the middle of that camera when a reload removes it;
* `VISTREAM_INJECT_SHM_FREE_FILE`: while this file exists, /dev/shm has as many bytes free as it
  says (a `--shm-size` that a test can change at run time);
* `VISTREAM_INJECT_MARK_DIR`: the slow copy and the slow sample each create a file there
  (`plane`, `metric-CAMERA`) once they are inside the ring, so a test acts while they are.

Python imports `sitecustomize` at start-up; nothing here changes a process that has none of these
variables set. Test support only: the daemon has no hooks of its own for this.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def _mark(name: str) -> None:
    folder = os.environ.get("VISTREAM_INJECT_MARK_DIR")
    if folder:
        (Path(folder) / name).touch()


def _slow_plane(seconds: float) -> None:
    from vistream.ring import shm

    def copy_plane(self: shm.FrameRing, i: int, nbytes: int):  # type: ignore[no-untyped-def]
        view = self.planes[i]
        _mark("plane")
        time.sleep(seconds)
        return view[:nbytes].copy()

    shm.FrameRing._copy_plane = copy_plane  # type: ignore[method-assign]


def _slow_metric(spec: str) -> None:
    from prometheus_client import metrics_core

    camera, _, seconds = spec.partition("=")
    for cls in (metrics_core.CounterMetricFamily, metrics_core.GaugeMetricFamily):
        original = cls.add_metric

        def add_metric(self, labels, *args, _original=original, **kwargs):  # type: ignore[no-untyped-def]
            if labels and labels[0] == camera:
                _mark(f"metric-{camera}")
                time.sleep(float(seconds))
            return _original(self, labels, *args, **kwargs)

        cls.add_metric = add_metric  # type: ignore[method-assign]


def _shm_free(path: str) -> None:
    from vistream.ring import naming

    real = naming.free_bytes

    def free_bytes(shm_dir: Path = naming.SHM_DIR) -> int | None:
        try:
            return int(Path(path).read_text())
        except (OSError, ValueError):
            return real(shm_dir)

    naming.free_bytes = free_bytes


if os.environ.get("VISTREAM_INJECT_SLOW_PLANE_S"):
    _slow_plane(float(os.environ["VISTREAM_INJECT_SLOW_PLANE_S"]))
if os.environ.get("VISTREAM_INJECT_SLOW_METRIC"):
    _slow_metric(os.environ["VISTREAM_INJECT_SLOW_METRIC"])
if os.environ.get("VISTREAM_INJECT_SHM_FREE_FILE"):
    _shm_free(os.environ["VISTREAM_INJECT_SHM_FREE_FILE"])
