"""Small clocks of the reader: which frames to keep, when they were captured, how long to back off."""

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
