"""`vistream demo`: the real daemon on generated footage, with an embedded broker and a live table.

Nothing beyond the Python packages is needed: the footage is rendered at
first run from the images Ultralytics ships, the broker is amqtt in a thread,
and the daemon is the same `Daemon` that `vistream run` starts.

Each camera has a zone and a line where its footage's people walk (`footage.Scene`) and two alert
rules on them, so the table shows events and line counts. The state directory (event outbox, line
counters) is a fresh one under the cache dir for every run, removed at exit: the broker is a new,
empty one each run too, so carrying counters over would only show numbers nobody saw being made.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vistream.config.models import Config
from vistream.demo.broker import EmbeddedBroker
from vistream.demo.footage import default_cache_dir, ensure_clips, scene
from vistream.demo.table import CameraRow, LiveTable, RecentEvents, render
from vistream.detector.ultralytics import ultralytics_import
from vistream.ops.status import StatusSource

CAMERA_NAMES = (
    "bus_pan",
    "people_pan",
    "bus_drive_by",
    "people_drift",
)  # the order ensure_clips renders them in
DEFAULT_MODEL = "yolov8n.pt"
RATE_WINDOW_S = 3.0
ZONE, LINE = "area", "line"  # every camera's zone and line have these names, so one rule covers all
# Short end and no cooldown so that a demo of a minute shows events starting and ending again.
RULES: list[dict[str, Any]] = [
    {
        "name": "person_in_area",
        "labels": ["person"],
        "zone": ZONE,
        "min_duration_s": 1,
        "end_after_s": 2,
        "cooldown_s": 0,
    },
    {"name": "person_crossing", "labels": ["person"], "line": LINE, "end_after_s": 2, "cooldown_s": 0},
]


def fetch_model(model: str | None) -> str | None:
    """A local path to the weights, downloading the release ones if needed; None when impossible."""
    if model is not None:
        return model if Path(model).exists() else None
    try:
        with ultralytics_import():
            from ultralytics.utils.downloads import attempt_download_asset

        path = Path(attempt_download_asset(DEFAULT_MODEL))
    except Exception:  # offline, proxy, GitHub down: the one-line hint below says what to do
        return None
    return str(path) if path.exists() else None


def demo_config(model: str, clips: list[Path], port: int, device: str, state_dir: Path) -> Config:
    return Config.model_validate(
        {
            "model": {"path": model, "device": device},
            "batching": {"max_batch": len(clips), "max_wait_ms": 10, "max_frame_age_ms": 500},
            "mqtt": {
                "host": "127.0.0.1",
                "port": port,
                "client_id": "vistream-demo",
                "topic_prefix": "vistream",
            },
            "metrics": {"port": 0},
            "log_level": "warning",
            "cameras": [_camera(i, CAMERA_NAMES[i], clip) for i, clip in enumerate(clips)],
            "alerts": RULES,
            "state_dir": str(state_dir),
        }
    )


def _camera(index: int, name: str, clip: Path) -> dict[str, Any]:
    where = scene(index)
    return {
        "name": name,
        "url": str(clip),
        "detect_fps": 5,
        "zones": {ZONE: [list(p) for p in where.zone]},
        "lines": {LINE: [list(p) for p in where.line]},
    }


class DemoView:
    """Turns daemon counters into per-second rates for the live table."""

    def __init__(self, broker: str, seconds: float | None) -> None:
        self.broker = broker
        self.seconds = seconds
        self.table = LiveTable()
        self.recent = RecentEvents()
        self.started = time.monotonic()
        # Recent (time, decoded, inferred) samples per camera: rates over a few seconds, not one tick.
        self._history: dict[str, deque[tuple[float, int, int]]] = {}

    def tick(self, daemon: StatusSource) -> bool:
        """Draw the table; True once the demo's time is up (the daemon stops)."""
        now = time.monotonic()
        elapsed = now - self.started
        last = self.seconds is not None and elapsed >= self.seconds
        stats = daemon.scheduler_stats()
        latency, _, objects = daemon.pipeline()
        events, counters, recent = daemon.events()
        has_lines = {cam.name for cam in daemon.cfg.enabled_cameras if cam.lines}
        rows = []
        for cam in daemon.camera_status():
            name, counts = cam.name, stats.cameras.get(cam.name)
            decoded = cam.field("frames_decoded")
            inferred = counts.inferred if counts else 0
            history = self._history.setdefault(name, deque([(self.started, 0, 0)]))
            history.append((now, decoded, inferred))
            while len(history) > 2 and now - history[1][0] >= RATE_WINDOW_S:
                history.popleft()
            t0, d0, i0 = history[0]
            span = max(now - t0, 1e-3)
            rows.append(
                CameraRow(
                    name=name,
                    online=cam.online,
                    fps_in=(decoded - d0) / span,
                    fps_inferred=(inferred - i0) / span,
                    dropped_stale=counts.stale if counts else 0,
                    dropped_overwritten=counts.overwritten if counts else 0,
                    objects=dict(objects.get(name, {})),
                    events=sum(n for (camera, _), n in events.items() if camera == name),
                    line_in=_crossings(counters, name, "in") if name in has_lines else None,
                    line_out=_crossings(counters, name, "out") if name in has_lines else None,
                )
            )
        totals = {
            "fps_inferred": sum(r.fps_inferred for r in rows),
            "mean_batch": stats.batch_size.sum / stats.batch_size.count if stats.batch_size.count else 0.0,
            "p50_latency_ms": 1000 * latency.quantile(0.5),
        }
        shown = self.recent.update(recent)
        text = render(rows, elapsed_s=elapsed, broker=self.broker, totals=totals, recent=shown)
        self.table.update(text, force=last)
        return last


def _crossings(counters: dict[tuple[str, str, str], int], camera: str, direction: str) -> int:
    """Crossings of all the camera's lines in one direction."""
    return sum(n for (cam, _, d), n in counters.items() if cam == camera and d == direction)


def run_demo(
    run_daemon: Callable[[Config, Callable[[StatusSource], bool]], int],
    *,
    model: str | None,
    cameras: int,
    seconds: float | None,
    port: int = 1883,
    device: str = "auto",
) -> int:
    """`run_daemon(config, on_tick)`: the daemon, run until `on_tick` says the time is up (the CLI
    passes the real one; this package does not import it: the view sees a StatusSource)."""
    weights = fetch_model(model)
    if weights is None:
        what = f"model file {model!r} not found" if model else f"cannot download {DEFAULT_MODEL} (offline?)"
        print(
            f"vistream demo: {what}; pass local weights: vistream demo --model /path/to/yolov8n.pt",
            file=sys.stderr,
        )
        return 3
    cache = default_cache_dir()
    print(f"preparing {cameras} demo clip(s) in {cache} ...", file=sys.stderr, flush=True)
    clips = ensure_clips(cache, cameras)
    with (
        tempfile.TemporaryDirectory(prefix="state-", dir=cache) as state,
        EmbeddedBroker(port=port) as broker,
    ):
        bound = broker.port or port
        print(
            f"MQTT broker on 127.0.0.1:{bound}; watch it with: mosquitto_sub -p {bound} -t 'vistream/#' -v",
            file=sys.stderr,
            flush=True,
        )
        view = DemoView(f"127.0.0.1:{bound}", seconds)
        return run_daemon(demo_config(weights, clips, bound, device, Path(state)), view.tick)
