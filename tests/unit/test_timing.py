"""The reader's small clocks: frame throttling, capture-time estimation, reconnect backoff, and the
port probe that cuts a backoff short when a camera comes back."""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest

from vistream.config.models import CameraConfig
from vistream.sources import reader as reader_mod
from vistream.sources.probe import PortWatch, camera_address, port_open
from vistream.sources.timing import Backoff, CaptureClock, Deferral, Throttle


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
            self.deferral = None

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


# --- Reconnecting: the backoff spaces full opens, a cheap port probe notices a return ----------


def inline(work: Callable[[], None]) -> None:
    work()


def test_port_watch_probes_one_at_a_time() -> None:
    """A probe that hangs (a name lookup has no timeout) is never stacked with more probes."""
    started: list[Callable[[], None]] = []
    watch = PortWatch(lambda: True, every=2.0, spawn=started.append)
    for k in range(40):
        assert not watch.came_back(k * 0.5)
    assert len(started) == 1
    started[0]()  # it ends, at last: the next is due at once
    watch.came_back(20.0)
    assert len(started) == 2


@pytest.mark.parametrize(
    ("found", "came_back_after"),
    [
        ([False, False, True, True], [2]),  # closed, then open: back once
        ([True, True, True], []),  # open all along (the stream fails behind it): never
        ([False, True, False, True], [1, 3]),  # each return counts
        ([False, False, False], []),  # stays down
    ],
)
def test_port_watch_reports_a_port_that_opens_after_being_closed(
    found: list[bool], came_back_after: list[int]
) -> None:
    """Probes every 2 s, polled every 0.5 s: `came_back` is True right after each probe that found
    the port open when the one before found it closed, and only then."""
    results = iter(found)
    watch = PortWatch(lambda: next(results), every=2.0, spawn=inline)
    backs = [t for t in np.arange(0.0, 2.0 * len(found), 0.5) if watch.came_back(float(t))]
    assert backs == [2.0 * k + 0.5 for k in came_back_after]


def test_port_watch_takes_a_full_open_as_the_port_open() -> None:
    """An older probe found the port closed, then a full open succeeded: an open port afterwards is
    no return (it would bring a full open forward for nothing)."""
    results = iter([False, True])
    watch = PortWatch(lambda: next(results), every=2.0, spawn=inline)
    watch.came_back(0.0)
    watch.came_back(0.5)
    watch.answered()
    watch.came_back(2.0)
    assert not watch.came_back(2.5)


def test_port_watch_reports_a_return_at_most_once_per_quiet_period() -> None:
    """A port that flaps (closed, open, closed, open... every 2 s) is reported back once per `quiet`."""
    flips = iter([k % 2 == 1 for k in range(40)])
    watch = PortWatch(lambda: next(flips), every=2.0, quiet=30.0, spawn=inline)
    backs = [t for t in np.arange(0.0, 80.0, 0.5) if watch.came_back(float(t))]
    assert backs == [2.5, 34.5, 66.5]


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("rtsp://10.0.0.9/live", ("10.0.0.9", 554)),
        ("rtsps://cam.lan/live", ("cam.lan", 322)),
        ("rtsp://user:secret@[fe80::1]:8554/x", ("fe80::1", 8554)),
        ("/dev/null", None),  # a file: nothing to probe
    ],
)
def test_camera_address(url: str, address: tuple[str, int] | None) -> None:
    assert camera_address(CameraConfig(name="c", url=url)) == address


def test_port_open_on_real_ports() -> None:
    """A listening port is open; a bound port nobody listens on is not (refused at once)."""
    with socket.socket() as listening, socket.socket() as bound:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        bound.bind(("127.0.0.1", 0))
        (host, port), (_, closed) = listening.getsockname(), bound.getsockname()
        assert port_open(host, port, timeout=1.0)
        assert not port_open(host, closed, timeout=1.0)


class SimClock:
    """The reader's `time` module and stop flag on one simulated clock: sleeping advances it."""

    def __init__(self, until: float) -> None:
        self.now = 0.0
        self.until = until  # the stop flag is set from then on
        self.stopped = False

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1.7e9 + self.now

    def __bool__(self) -> bool:
        return self.stopped or self.now >= self.until

    def sleep(self, seconds: float, step: float = 0.1) -> bool:
        self.now += seconds
        return bool(self)


class SimReader(reader_mod.CameraReader):
    """A reader of a simulated RTSP camera: `stream_ok(t)` says whether a full open at t streams,
    `port_open(t)` what a probe at t finds. A full open takes 50 ms; one that streams ends the run."""

    def __init__(
        self, clock: SimClock, stream_ok: Callable[[float], bool], port_up: Callable[[float], bool] | None
    ) -> None:
        self.cam = CameraConfig(name="c", url="rtsp://10.0.0.9/live")
        self.url, self.stop, self.sim = self.cam.url, clock, clock
        self.hdr = {"reconnects": 0, "errors": 0, "state": 0, "heartbeat": 0.0, "writer_pid": 0}
        self.backoff = Backoff(cap=30, rng=random.Random(7))
        self.watch = (
            None if port_up is None else PortWatch(lambda: port_up(clock.now), quiet=30, spawn=inline)
        )
        self.stream_ok = stream_ok
        self.opens: list[float] = []

    def _session(self, quiet: bool = False) -> int:
        self.opens.append(self.sim.now)
        self.sim.now += 0.05
        if not self.stream_ok(self.opens[-1]):
            raise OSError("Connection refused")
        self.sim.stopped = True
        return 100


def simulate(
    monkeypatch: pytest.MonkeyPatch,
    stream_ok: Callable[[float], bool],
    port_up: Callable[[float], bool] | None,
    until: float = 600.0,
) -> SimReader:
    clock = SimClock(until)
    monkeypatch.setattr(reader_mod, "time", clock)
    reader = SimReader(clock, stream_ok, port_up)
    reader.run()
    assert reader.hdr["reconnects"] == len(reader.opens) - 1  # every full open after the first
    return reader


def test_camera_back_after_30s_is_reconnected_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """1. A camera is down (port closed, opens refused) for 30 s, then back.
    2. While down, the reader makes exactly the full opens the backoff alone makes.
    3. It reconnects within 3 s of the return (a probe every 2 s), where the backoff alone,
       grown to 15-30 s, has it wait longer."""
    up = lambda t: t >= 30.0  # noqa: E731
    probed = simulate(monkeypatch, up, up)
    alone = simulate(monkeypatch, up, None)
    assert [t for t in probed.opens if t < 30] == [t for t in alone.opens if t < 30]
    assert 30.0 <= probed.opens[-1] <= 33.0
    assert alone.opens[-1] > 33.0


def test_camera_whose_port_opens_before_its_stream_is_reconnected_soon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1. A camera reboots: down for 30 s, then its port accepts connections 4 s before its stream
       is ready (opens fail meanwhile, as a booting camera's 503s do).
    2. The first open after the return fails; the backoff starts over, so the camera is
       reconnected within seconds of its stream being ready, not after another 15-30 s."""
    probed = simulate(monkeypatch, lambda t: t >= 34.0, lambda t: t >= 30.0)
    assert 34.0 <= probed.opens[-1] <= 38.0
    assert len([t for t in probed.opens if t >= 30]) <= 6  # 0, then 0.25-0.5, 0.5-1, 1-2, 2-4 s later


@pytest.mark.parametrize(
    "port_up",
    [
        pytest.param(lambda t: False, id="port closed"),
        pytest.param(lambda t: True, id="port open, stream failing (404, bad password, no camera behind it)"),
    ],
)
def test_camera_that_stays_down_gets_only_the_backoffs_full_opens(
    monkeypatch: pytest.MonkeyPatch, port_up: Callable[[float], bool]
) -> None:
    """For 10 minutes no open streams: the probe brings no full open forward (the same opens at the
    same times as without it), about one every 15-30 s once the backoff reached its cap."""
    never = lambda t: False  # noqa: E731
    probed = simulate(monkeypatch, never, port_up)
    assert probed.opens == simulate(monkeypatch, never, None).opens
    assert len(probed.opens) <= 8 + 600 / 15


def test_flapping_port_starts_the_backoff_over_at_most_once_per_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worst case: for 10 minutes a port is open 2 s, closed 2 s, while opens keep failing.
    A return starts the backoff over at most once per `reconnect_max_s` (30 s), so the reader makes
    no more full opens than one started afresh every 30 s (8 each: after 0.25, 0.5, 1, 2, 4, 8,
    15 s), never two within the backoff's smallest delay."""
    flapping = lambda t: int(t // 2) % 2 == 1  # noqa: E731
    opens = simulate(monkeypatch, lambda t: False, flapping).opens
    assert len(opens) <= 600 / 30 * 8
    assert min(np.diff(opens)) >= 0.25


def test_deferral_leaves_frames_the_busy_model_will_not_take_unconverted() -> None:
    """Frames at 30 fps, the scheduler taking one every 0.3 s (its batch time):
    1. Until two takes are seen (a period is known) every frame is converted.
    2. Then, right after a take, the next frame is converted (the model wants it when it is free);
       the following ones are left until 1.5 frame intervals before the next take is due, so the
       frame taken is at most that old.
    3. A take that does not come when due (the scheduler stopped, or skips frames) ends the deferral."""
    d = Deferral(1 / 30)
    head, taken, t = 0, 0, 0.0
    converted: list[float] = []
    for i in range(90):  # 3 s
        t = i / 30
        if i and i % 9 == 0:  # a take every 0.3 s, of the newest frame written
            taken = head
        d.observe(taken, t)
        if not d.defer(head, t):
            head += 1
            converted.append(t)
    assert converted[:19] == [i / 30 for i in range(19)]  # no period known until the second take
    later = [c for c in converted if c >= 1.0]
    assert len(later) < 0.5 * 60  # most of the last 2 s went unconverted
    for take in (1.2, 1.5, 1.8, 2.1, 2.4, 2.7):
        newest = max(c for c in converted if c < take - 1e-9)
        assert take - newest <= 1.5 / 30 + 1e-9  # the frame taken is fresh

    t += 1.0  # no take for a second: every frame is converted again
    d.observe(taken, t)
    assert not d.defer(head, t)


def test_deferral_never_defers_for_a_scheduler_that_keeps_up() -> None:
    """A scheduler that takes every frame as it is written (a fast model): nothing is deferred."""
    d = Deferral(1 / 30)
    for head in range(60):
        t = head / 30
        d.observe(head, t)  # the previous frame was taken at once
        assert not d.defer(head, t)
