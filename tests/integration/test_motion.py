"""Motion gating in a live daemon: a still camera is skipped (and counted), a busy one is not."""

from __future__ import annotations

import time
from pathlib import Path

import av
import pytest
from support.daemon import DaemonProcess, base_config, child, unaccounted
from support.mosquitto import Mosquitto
from support.procs import free_port
from support.waiting import wait_until

pytestmark = pytest.mark.integration


def still_clip(src: Path, dst: Path, seconds: float = 4.0, fps: int = 10) -> Path:
    """The first frame of `src`, shown for `seconds`: a camera on which nothing moves."""
    with av.open(str(src)) as inp:
        first = next(inp.decode(video=0)).reformat(format="yuv420p")
    with av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = first.width, first.height, "yuv420p"
        for i in range(round(seconds * fps)):
            first.pts = i
            for packet in stream.encode(first):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return dst


def test_a_still_camera_is_skipped_and_counted_a_busy_one_is_not(
    tmp_path: Path, samples_dir: Path, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. Two cameras with motion gating on (keepalive 3 s): `still` (one frame of the crowd clip,
       looped) and `busy` (the crowd clip: 30-50 people walking).
    2. Over 12 s, `still`'s frames are skipped as `no_motion` but for one every keepalive (and a
       few where the codec's refinement of the still picture made the model's boxes jump), `busy`'s
       are all inferred or dropped.
    3. The readers paused, the accounting holds for both: sampled = inferred + dropped + skipped
       + pending (0 or 1)."""
    still = still_clip(samples_dir / "crowd-480p.mp4", tmp_path / "still.mp4")
    motion = {"enabled": True, "keepalive_s": 3}
    cameras = [
        {"name": "still", "url": str(still), "detect_fps": 5, "motion": motion},
        {"name": "busy", "url": str(samples_dir / "crowd-480p.mp4"), "detect_fps": 5, "motion": motion},
    ]
    cfg = base_config(model_path, mosquitto.port, free_port(), "itmotion", cameras)
    with DaemonProcess(cfg, tmp_path) as daemon:
        daemon.wait_metric("vistream_frames_inferred_total", 1, timeout=120, camera="still")
        start = {
            cam: daemon.metric("vistream_frames_inferred_total", camera=cam) for cam in ("still", "busy")
        }
        time.sleep(12)
        m = {
            cam: {
                "inferred": daemon.metric("vistream_frames_inferred_total", camera=cam) - start[cam],
                "skipped": daemon.metric("vistream_frames_skipped_total", camera=cam, reason="no_motion"),
            }
            for cam in ("still", "busy")
        }
        print(m)
        assert m["still"]["skipped"] >= 40, m
        assert m["still"]["inferred"] <= 12 / 3 + 10, m
        assert m["busy"]["skipped"] == 0 and m["busy"]["inferred"] > 0, m
        # The readers paused, the scheduler's once-a-second figures catch up with what was sampled.
        readers = [child(daemon, f"reader {cam}") for cam in ("still", "busy")]
        for reader in readers:
            reader.suspend()
        try:
            wait_until(lambda: all(unaccounted(daemon, c) <= 1 for c in ("still", "busy")), 15, "the figures")
            for cam in ("still", "busy"):
                assert 0 <= unaccounted(daemon, cam) <= 1, daemon.metrics()
        finally:
            for reader in readers:
                reader.resume()
        code, _ = daemon.terminate()
        assert code == 0
