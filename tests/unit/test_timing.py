"""The reader's small clocks: frame throttling, capture-time estimation, reconnect backoff."""

from __future__ import annotations

import contextlib
import random
from types import SimpleNamespace

import pytest

from vistream.config.models import CameraConfig
from vistream.sources import reader as reader_mod
from vistream.sources.timing import Backoff, CaptureClock, Throttle


@pytest.mark.parametrize(
    ("stream_fps", "detect_fps", "expected"),
    [(30, 15, 15), (30, 5, 5), (25, 15, 15), (30, 30, 30), (10, 15, 10), (30, 7, 7)],
)
def test_throttle_keeps_detect_fps_on_average(stream_fps: float, detect_fps: float, expected: float) -> None:
    """Over 10 s of a stream at `stream_fps`, the throttle keeps about `detect_fps` frames a second
    (never more than the stream has)."""
    t = Throttle(detect_fps)
    kept = sum(t.keep(i / stream_fps) for i in range(int(10 * stream_fps)))
    assert kept / 10 == pytest.approx(expected, abs=0.3)


def test_throttle_restarts_after_a_jump() -> None:
    """A clip that loops (time jumps back) or a camera that restarts (jumps ahead) keeps being sampled."""
    t = Throttle(5)
    assert t.keep(100.0)
    assert t.keep(0.0)  # looped
    assert not t.keep(0.1)
    assert t.keep(50.0)  # jumped ahead


def test_capture_clock_exposes_decoder_lag() -> None:
    """1. Frames arrive on time for 2 s: capture time = arrival time.
    2. The decoder then falls 1.5 s behind: the estimated capture time stays on the stream's
       schedule, so the frames look 1.5 s old, as they are."""
    c = CaptureClock()
    for i in range(60):
        assert c.captured(i / 30, 1000 + i / 30) == pytest.approx(1000 + i / 30)
    late = c.captured(2.0, 1000 + 2.0 + 1.5)
    assert late == pytest.approx(1002.0, abs=0.01)


def test_capture_clock_follows_a_slow_camera_clock() -> None:
    """A camera clock 100 ppm slower than ours must not make frames look ever older over a day."""
    c = CaptureClock()
    day = 86400
    for i in range(0, day, 10):
        wall = 1000 + i
        captured = c.captured(i * (1 - 100e-6), wall)
    assert wall - captured < 0.05


def test_capture_clock_restarts_on_discontinuity() -> None:
    c = CaptureClock()
    c.captured(500.0, 2000.0)
    assert c.captured(0.0, 2001.0) == pytest.approx(2001.0)


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    """Delays double (within jitter: between half and all of the ceiling), cap at ~30 s, reset to small."""
    b = Backoff(cap=30, base=0.5, rng=random.Random(1))
    delays = [b.next() for _ in range(12)]
    for k, d in enumerate(delays):
        ceiling = min(30, 0.5 * 2**k)
        assert ceiling / 2 <= d <= ceiling
    assert max(delays) <= 30
    b.reset()
    assert b.next() <= 0.5


class SteppingClocks:
    """time.time() and time.monotonic() for a reader, 30 fps apart; the wall clock can be stepped."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.step = 0.0  # what NTP (or an operator) has added to the wall clock so far

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return 1.7e9 + self.mono + self.step


def test_wall_clock_steps_do_not_age_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """1. A camera delivers 30 fps on time for 3 s while the reader's wall clock runs normally.
    2. The wall clock steps +5 s (NTP at boot on a board without an RTC), later -5 s.
    3. Every frame's age (monotonic) stays ~0, so none would be dropped as stale, and its
       `captured_at` (wall, for the payload) follows the stepped clock at once."""
    clocks = SteppingClocks()
    steps = {30: 5.0, 60: 0.0}  # frame index -> wall-clock step in force from then on

    def frames(*_a: object, **_k: object):  # type: ignore[no-untyped-def]
        for i in range(90):
            clocks.mono = 1000.0 + i / 30
            clocks.step = steps.get(i, clocks.step)
            yield SimpleNamespace(width=64, height=48), i / 30

    monkeypatch.setattr(reader_mod, "time", clocks)
    monkeypatch.setattr(reader_mod, "open_camera", lambda cam: contextlib.nullcontext(None))
    monkeypatch.setattr(reader_mod, "stream_info", lambda c: SimpleNamespace(width=64, height=48, fps=30.0))
    monkeypatch.setattr(reader_mod, "decoded_frames", frames)
    written: list[tuple[float, float, float, float]] = []  # (captured_at, captured_mono, wall, mono)

    class Recorder(reader_mod.CameraReader):
        def __init__(self) -> None:
            self.cam = CameraConfig(name="c", url="/dev/null", detect_fps=30)
            self.hdr = {"frames_decoded": 0, "stream_width": 0, "stream_height": 0}
            self.throttle, self.clock, self.url, self.stop = Throttle(30), CaptureClock(), "/dev/null", None

        def _write(self, frame: object, captured_at: float, captured_mono: float) -> None:
            written.append((captured_at, captured_mono, clocks.time(), clocks.monotonic()))

    assert Recorder()._session() == 90
    assert len(written) >= 85
    for captured_at, captured_mono, wall, mono in written:
        assert mono - captured_mono == pytest.approx(0.0, abs=0.01)
        assert wall - captured_at == pytest.approx(0.0, abs=0.01)


def test_capture_clock_stamp_keeps_age_across_wall_steps() -> None:
    """`stamp` gives (wall, monotonic) capture times: a late frame stays late whatever the wall
    clock does, and its wall time is the current wall clock minus its age."""
    c = CaptureClock()
    for i in range(30):
        c.stamp(i / 30, 5000 + i / 30, 100 + i / 30)
    wall, mono = c.stamp(1.0, 5000 + 1.0 + 1.5 + 5.0, 100 + 1.0 + 1.5)  # 1.5 s late, wall stepped +5 s
    assert mono == pytest.approx(101.0, abs=0.01)
    assert wall == pytest.approx(5006.0, abs=0.01)
