"""Small clocks of the reader: which frames to keep, when they were captured, whether to convert
them now, how long to back off."""

from __future__ import annotations

import random


class Throttle:
    """Keeps frames at `fps` on average from a faster stream, by stream time.

    Stream time (the frame's pts in seconds) is steadier than arrival time,
    which jitters with the network. Time going backwards (a file looping, a
    camera restarting) or leaping ahead by more than a second restarts the schedule.
    """

    def __init__(self, fps: float) -> None:
        self.interval = 1.0 / fps
        # Timestamps are quantised to the stream's frame period; without a
        # little slack a 30 fps stream at 15 detect fps would keep every third frame.
        self.slack = min(0.25 * self.interval, 0.005)
        self.next_due: float | None = None
        self.last = float("-inf")

    def keep(self, t: float) -> bool:
        if self.next_due is None or t < self.last or t > self.next_due + 1.0:
            self.next_due = t
        self.last = t
        if t + self.slack < self.next_due:
            return False
        self.next_due += self.interval
        if self.next_due < t:  # the stream is slower than detect_fps: keep every frame
            self.next_due = t
        return True


class CaptureClock:
    """Estimates when a frame was captured from its pts, not from when we decoded it.

    A decoder that falls behind (a busy CPU) makes frames arrive late; stamping
    them with the arrival time would hide that latency from the staleness check.
    The offset between our clock and stream time is the smallest one seen (the
    frame that arrived fastest), allowed to creep up slowly so that a camera clock
    running slower than ours does not make every frame look older over the weeks.

    The offset is kept against the monotonic clock: the wall clock can step
    (NTP at boot on a board without a real-time clock, or an operator), and a
    step kept in the offset would make every frame look that much older (or
    younger) until the creep caught up, half an hour per second of step. Wall
    time is derived per frame, for the payload only: `stamp` gives both.
    """

    DRIFT = 2e-4  # 200 ppm: well above the drift of a camera's crystal clock

    def __init__(self) -> None:
        self.offset: float | None = None
        self.last_pts: float | None = None
        self.last_now = 0.0

    def reset(self) -> None:
        self.offset = self.last_pts = None

    def captured(self, pts_s: float | None, now: float) -> float:
        """Capture time of a frame with stream time `pts_s` seen at `now`, on the clock of `now`.

        Give it a clock that never steps (time.monotonic()).
        """
        if pts_s is None:
            return now
        if self.last_pts is not None and abs(pts_s - self.last_pts) > 2.0:
            self.offset = None  # discontinuity: the stream restarted
        now_offset = now - pts_s
        if self.offset is None:
            self.offset = now_offset
        else:
            self.offset = min(self.offset + self.DRIFT * max(0.0, now - self.last_now), now_offset)
        self.last_pts, self.last_now = pts_s, now
        return pts_s + self.offset

    def stamp(self, pts_s: float | None, wall: float, mono: float) -> tuple[float, float]:
        """(wall, monotonic) capture time of a frame seen at `wall` / `mono` (the same moment).

        The age comes from the monotonic clock; the wall time is the current wall
        clock minus that age, so it follows a step at once and never moves the age.
        """
        captured_mono = self.captured(pts_s, mono)
        return wall - (mono - captured_mono), captured_mono


class Deferral:
    """Whether a sampled frame can go unconverted because the scheduler will not take it.

    The scheduler takes only the newest frame of a camera, once per batch. While a batch runs, the
    frames a reader letterboxes are replaced by newer ones before the model is free, and at
    `detect_fps` above what the model takes that conversion is most of a reader's work (3 ms of
    CPU for a 1080p frame). So the reader watches when the scheduler takes its frames (the holds it
    puts on ring slots), learns the period between takes, and leaves a frame unconverted when the
    last one it wrote is still waiting and another frame will come before the next take is due
    (with a margin of 1.5 frame intervals and a fifth of the period, for batches that end early).

    Never defers before a take has been seen twice, when the scheduler took the newest frame
    already (the next one is wanted as soon as the model is free), or once the predicted take is
    overdue (a scheduler that stopped taking, or skips frames for want of motion). Pure, with the
    time passed in.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval  # expected time between sampled frames
        self.taken = 0  # the newest seq the scheduler took
        self.taken_at: float | None = None  # when the reader first saw it taken
        self.period: float | None = None  # smoothed time between takes
        self._last_frame: float | None = None

    def observe(self, taken: int, now: float) -> None:
        """Before each sampled frame: the newest seq the scheduler took, and the time."""
        if self._last_frame is not None:  # frames may come slower than detect_fps
            self.interval = 0.9 * self.interval + 0.1 * min(now - self._last_frame, 1.0)
        self._last_frame = now
        if taken > self.taken:
            if self.taken_at is not None and self.taken:
                gap = now - self.taken_at
                self.period = gap if self.period is None else 0.7 * self.period + 0.3 * gap
            self.taken, self.taken_at = taken, now

    def defer(self, head: int, now: float) -> bool:
        """Leave this frame unconverted? `head` is the newest seq written to the ring."""
        if self.period is None or self.taken_at is None or head <= self.taken:
            return False
        # The take is seen up to a frame late, and batches vary: a margin of both.
        margin = 1.5 * self.interval + 0.2 * self.period
        return now + margin < self.taken_at + self.period


class Backoff:
    """Exponential reconnect delay with full jitter (AWS style), capped."""

    def __init__(self, cap: float, base: float = 0.5, rng: random.Random | None = None) -> None:
        self.cap, self.base = cap, base
        self.attempt = 0
        self._rng = rng or random.Random()

    def reset(self) -> None:
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.base * 2**self.attempt)
        self.attempt += 1
        # Half fixed, half random: never hammers, and cameras that failed together spread out.
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)
