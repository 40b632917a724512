"""The reader on real files with the real decoder: looping, pacing, resolution changes."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vistream.config.models import CameraConfig
from vistream.ops.process import StopFlag
from vistream.ring.shm import FrameRing, RingConsumer, RingLayout, State
from vistream.sources.reader import CameraReader, ReaderSpec


def encode_raw_h264(path: Path, sizes: list[tuple[int, int]], frames_each: int, fps: int = 25) -> None:
    """An Annex-B H.264 file whose resolution changes mid-stream: separate encodes, concatenated."""
    with path.open("wb") as out:
        for k, (w, h) in enumerate(sizes):
            part = path.with_suffix(f".{k}.h264")
            with av.open(str(part), "w", format="h264") as c:
                s = c.add_stream("libx264", rate=fps)
                s.width, s.height, s.pix_fmt = w, h, "yuv420p"
                s.codec_context.time_base = Fraction(1, fps)
                for i in range(frames_each):
                    img = np.full((h, w, 3), (i * 10 + 60 * k) % 255, np.uint8)
                    for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                        c.mux(p)
                for p in s.encode():
                    c.mux(p)
            out.write(part.read_bytes())


def run_reader_for(
    cam: CameraConfig, seconds: float, layout: RingLayout, until: Callable[[FrameRing], bool] | None = None
) -> tuple[list, FrameRing]:
    """Run a reader in a thread for `seconds`, or until `until(ring)` holds; returns what it wrote."""
    ring = FrameRing.create(f"vistream-test-{uuid.uuid4().hex[:8]}", layout)
    stop = StopFlag()
    spec = ReaderSpec(cam, ring.name, threading.Semaphore(0))
    reader = CameraReader(spec, ring, stop)
    thread = threading.Thread(target=reader.run)
    consumer = RingConsumer(ring)
    seen = []
    into = np.empty((layout.height, layout.width, 3), np.uint8)
    thread.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until and until(ring)):
        meta = consumer.take(into)
        if meta is not None:
            seen.append((meta, int(into[layout.height // 2, layout.width // 2, 0])))
        time.sleep(0.01)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    return seen, ring


@pytest.fixture
def cleanup():  # type: ignore[no-untyped-def]
    rings: list[FrameRing] = []
    yield rings
    for r in rings:
        r.close()
        r.unlink()


def test_resolution_change_mid_stream_is_handled(tmp_path: Path, cleanup: list[FrameRing]) -> None:
    """1. A file starts at 320x240 and switches to 640x360 mid-stream (a camera reconfigured).
    2. The reader keeps going: frames of both sizes reach the ring, each with the geometry
       needed to map its boxes back (its own width/height and letterbox)."""
    clip = tmp_path / "switch.h264"
    encode_raw_h264(clip, [(320, 240), (640, 360)], frames_each=15)
    cam = CameraConfig(name="switch", url=str(clip), detect_fps=25)
    seen, ring = run_reader_for(cam, 2.0, RingLayout(4, 128, 128))
    cleanup.append(ring)
    sizes = {(m.width, m.height) for m, _ in seen}
    assert sizes == {(320, 240), (640, 360)}
    for m, _ in seen:
        if m.width == 320:
            assert (m.scale, m.pad_y) == pytest.approx((0.4, 16))
        else:
            assert (m.scale, m.pad_y) == pytest.approx((0.2, 28))
    assert int(ring.header["reconnects"]) == 0


def test_file_source_loops_and_is_paced(tmp_path: Path, cleanup: list[FrameRing]) -> None:
    """1. A 0.6 s clip at 25 fps is read at detect_fps 25 until it has looped twice.
    2. It loops (more frames than the clip has), never faster than its native rate (unpaced,
       the decoder would go through hundreds a second), stays `streaming` across the loops,
       and looping is not a reconnect. (The rate itself is measured by the benchmark.)"""
    clip = tmp_path / "short.h264"
    encode_raw_h264(clip, [(160, 120)], frames_each=15)
    cam = CameraConfig(name="short", url=str(clip), detect_fps=25)
    t0 = time.monotonic()
    _, ring = run_reader_for(cam, 60.0, RingLayout(4, 64, 64), until=lambda r: int(r.header["head"]) > 30)
    elapsed = time.monotonic() - t0
    cleanup.append(ring)
    assert int(ring.header["head"]) > 30
    assert int(ring.header["frames_decoded"]) <= 25 * elapsed + 25  # paced: at most its native rate
    assert int(ring.header["reconnects"]) == 0
    # The thread ran CameraReader.run, stopped while looping: STOPPED is run_reader's to set.
    assert int(ring.header["state"]) == State.STREAMING


def test_missing_file_backs_off_and_counts_reconnects(tmp_path: Path, cleanup: list[FrameRing]) -> None:
    """A source that cannot be opened is retried with backoff, counted, and never writes a frame."""
    cam = CameraConfig(name="gone", url=str(tmp_path / "nope.mp4"), detect_fps=5, reconnect_max_s=0.2)
    seen, ring = run_reader_for(cam, 1.5, RingLayout(4, 64, 64))
    cleanup.append(ring)
    assert seen == []
    assert int(ring.header["errors"]) >= 3
    # Every failed attempt is an error; every attempt after the first is a reconnect.
    assert int(ring.header["reconnects"]) == int(ring.header["errors"]) - 1


def test_a_stream_over_max_pixels_is_refused_before_a_frame_is_decoded(
    tmp_path: Path, cleanup: list[FrameRing], caplog: pytest.LogCaptureFixture
) -> None:
    """1. A 640x360 clip read by a camera whose max_pixels is 320x240.
    2. Each attempt is refused from the codec parameters: no frame is decoded or written, the
       state is `refused` while it backs off, every refusal is counted, and one warning is logged
       for all of them (not one per attempt)."""
    clip = tmp_path / "big.h264"
    encode_raw_h264(clip, [(640, 360)], frames_each=5)
    cam = CameraConfig(name="big", url=str(clip), max_pixels=320 * 240, reconnect_max_s=0.2)
    with caplog.at_level("DEBUG"):
        seen, ring = run_reader_for(
            cam, 60.0, RingLayout(4, 64, 64), until=lambda r: bool(r.header["refused_too_large"] >= 3)
        )
    cleanup.append(ring)
    assert seen == [] and int(ring.header["frames_decoded"]) == 0
    assert int(ring.header["refused_too_large"]) >= 3 and int(ring.header["state"]) == State.REFUSED
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "refused" in r.getMessage()]
    assert len(warnings) == 1 and "640x360" in warnings[0].getMessage(), caplog.text


def test_a_stream_that_grows_past_max_pixels_mid_stream_is_refused(
    tmp_path: Path, cleanup: list[FrameRing]
) -> None:
    """1. A file at 160x120 switches to 640x360 mid-stream; max_pixels allows 320x240.
    2. The small frames reach the ring, the first large one ends the session (refused, counted),
       and none of them is written."""
    clip = tmp_path / "grows.h264"
    encode_raw_h264(clip, [(160, 120), (640, 360)], frames_each=10)
    cam = CameraConfig(name="grows", url=str(clip), detect_fps=25, max_pixels=320 * 240, reconnect_max_s=5)
    seen, ring = run_reader_for(
        cam, 30.0, RingLayout(4, 64, 64), until=lambda r: bool(r.header["refused_too_large"] >= 1)
    )
    cleanup.append(ring)
    assert seen and {(m.width, m.height) for m, _ in seen} == {(160, 120)}
    assert int(ring.header["refused_too_large"]) == 1


def test_limit_memory_caps_the_reader_process(tmp_path: Path) -> None:
    """In a child process (a reader's own setup), memory_limit_mb caps RLIMIT_DATA: an allocation over
    it fails with MemoryError in that process instead of taking the machine's memory."""
    import subprocess
    import sys

    code = (
        "from vistream.sources.guard import limit_memory\n"
        "import resource, numpy as np\n"
        "limit_memory(512)\n"
        "print(resource.getrlimit(resource.RLIMIT_DATA)[0] >> 20)\n"
        "try:\n"
        "    np.ones(1 << 30, np.uint8)\n"
        "    print('allocated')\n"
        "except MemoryError:\n"
        "    print('MemoryError')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["512", "MemoryError"], out.stderr
