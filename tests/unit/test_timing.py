"""The reader's small clocks: frame throttling, capture-time estimation, reconnect backoff."""

from __future__ import annotations

import random

import pytest

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
