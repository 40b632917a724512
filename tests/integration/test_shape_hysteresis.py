"""A camera flipping between portrait and landscape does not stall the other cameras (issue 20).

Real daemon, real RTSP server, real model on CPU. The precise figure is benchmarks/shape_flip.py's;
here the slack is wide enough for a busy 2-core box.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from support import hostile
from support.daemon import DaemonProcess, base_config
from support.procs import free_port

pytestmark = pytest.mark.integration

WINDOW_S = 20.0
DETECT_FPS = 5
# The other camera's rate with the flipping camera, at least this share of its rate beside a steady one.
# The issue asks for 80%; 70% leaves a busy box room (the benchmark gives the measured figure).
MIN_SHARE = 0.7


def cameras(port: int) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/cameras", timeout=5) as resp:
        return json.loads(resp.read())


def measure(
    daemon: DaemonProcess, port: int, other: str, odd: str
) -> tuple[float, set[tuple[int, int]], dict]:
    """The `other` camera's inferred frames per second over WINDOW_S, the sizes `odd` reported meanwhile,
    and what changed in the scheduler's figures."""
    deadline = time.monotonic() + 120
    while daemon.metric("vistream_frames_inferred_total", camera=other) < 5:  # warm: frames flow
        assert time.monotonic() < deadline, daemon.log[-3000:]
        time.sleep(0.5)
    while not next(c for c in cameras(port) if c["name"] == odd)["width"]:  # odd's first frame refits
        assert time.monotonic() < deadline, daemon.log[-3000:]
        time.sleep(0.5)
    time.sleep(3.0)  # frames letterboxed for the shape before it are gone
    before = {
        "inferred": daemon.metric("vistream_frames_inferred_total", camera=other),
        "reshape": daemon.metric("vistream_frames_dropped_total", camera=other, reason="reshape"),
        "height": daemon.metric("vistream_batch_shape", side="height"),
    }
    t0 = time.monotonic()
    sizes = set()
    while time.monotonic() - t0 < WINDOW_S:
        for cam in cameras(port):
            if cam["name"] == odd and cam["width"]:
                sizes.add((cam["width"], cam["height"]))
        time.sleep(0.25)
    took = time.monotonic() - t0
    rate = (daemon.metric("vistream_frames_inferred_total", camera=other) - before["inferred"]) / took
    after = {
        "reshape_drops": daemon.metric("vistream_frames_dropped_total", camera=other, reason="reshape")
        - before["reshape"],
        "height_before": before["height"],
        "height_after": daemon.metric("vistream_batch_shape", side="height"),
    }
    return rate, sizes, after


@pytest.mark.serial
def test_a_camera_flipping_portrait_and_landscape_leaves_the_other_its_rate(
    tmp_path: Path, make_rtsp_server, samples_dir: Path, mosquitto, model_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """1. Cameras `a` (street, 1080p) and `b` (1280x720 throughout), 5 fps each: `a`'s inferred rate
       over 20 s is the reference.
    2. The same with `b` alternating 1280x720 and 720x1280 every 2 s (checked: /api/cameras shows
       both sizes within the window).
    3. `a` keeps at least 70% of its reference rate (the issue's 80% is the benchmark's to show on an
       idle machine), no frame of `a` is dropped as `reshape` and the batch shape does not move:
       b's portrait frames are letterboxed into the landscape shape.
    """
    if (why := hostile.missing_dependency()) is not None:
        pytest.skip(why)
    street = samples_dir / "street-1080p.mp4"
    flipping = hostile.alternating_clip(tmp_path / "flip.mp4", street)
    steady = hostile.alternating_clip(tmp_path / "steady.mp4", street, flips=False)
    server = make_rtsp_server({"street": street, "flip": flipping, "steady": steady})
    results = {}
    for run, mount in (("steady", "steady"), ("flipping", "flip")):
        port = free_port()
        cams = [
            {"name": "a", "url": server.url("street"), "detect_fps": DETECT_FPS},
            {"name": "b", "url": server.url(mount), "detect_fps": DETECT_FPS},
        ]
        workdir = tmp_path / run
        workdir.mkdir()
        with DaemonProcess(
            base_config(model_path, mosquitto.port, port, f"itflip{run}", cams), workdir
        ) as daemon:
            results[run] = measure(daemon, port, "a", "b")
            assert daemon.terminate()[0] == 0
    (ref, _, _), (rate, sizes, after) = results["steady"], results["flipping"]
    print(f"\ncamera a: {ref:.2f} frames/s beside a steady camera, {rate:.2f} beside a flipping one "
          f"({rate / ref:.0%}); b reported {sorted(sizes)}; {after}")  # fmt: skip
    assert {(1280, 720), (720, 1280)} <= sizes, "the flipping camera did not flip"
    assert after["reshape_drops"] == 0 and after["height_before"] == after["height_after"], after
    assert rate >= MIN_SHARE * ref, (ref, rate)
