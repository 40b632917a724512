"""The batching policy: which cameras' frames go into the next batch, and when.

Pure logic on (camera, seq, capture time) tuples and a clock passed in, so it
is tested with a fake clock. The rules:

* Only the newest frame of a camera is a candidate; older ones were replaced
  (counted by the ring consumer as `overwritten`).
* A candidate older than `max_age` at decision time, or that would be by the
  time a batch ends (`expected_s`, the recent inference time, is fed back by
  the scheduler), is dropped (`stale`): an old answer is worse than no
  answer, and inferring it would make the next frame older still.
* A batch leaves as soon as every camera that is streaming has a frame ready,
  or `max_batch` frames are ready, or `max_wait` has passed since the first
  frame became ready, or waiting longer would make the oldest one stale.
* With more ready cameras than `max_batch`, the least recently served go
  first, so a fast camera cannot starve a slow one.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Candidate:
    camera: str
    seq: int
    captured: float  # monotonic capture time


@dataclass(frozen=True)
class Decision:
    batch: list[Candidate] = field(default_factory=list)  # take these now
    stale: list[Candidate] = field(default_factory=list)  # drop these
    wait_until: float | None = None  # nothing to do before this time (None: until a frame arrives)


class BatchPolicy:
    def __init__(self, max_batch: int, max_wait_s: float, max_age_s: float) -> None:
        self.max_batch = max_batch
        self.max_wait = max_wait_s
        self.max_age = max_age_s
        self._first_ready: float | None = None
        self.expected_s = 0.0  # how long a batch takes, smoothed: a frame must still be fresh at its end
        self._served: dict[str, int] = {}  # camera -> ticket of its last service (higher: more recent)
        self._tickets = 0

    def decide(self, now: float, candidates: list[Candidate], streaming: int) -> Decision:
        """Decide at time `now`; `streaming` is how many cameras currently deliver frames."""
        fresh: list[Candidate] = []
        stale: list[Candidate] = []
        max_age = self.max_age - self.expected_s  # as old as this now, too old when the batch ends
        for c in candidates:
            (stale if now - c.captured > max_age else fresh).append(c)
        if not fresh:
            self._first_ready = None
            return Decision(stale=stale)
        if self._first_ready is None:
            self._first_ready = now
        enough = min(self.max_batch, max(streaming, 1))
        deadline = min(self._first_ready + self.max_wait, min(c.captured for c in fresh) + max_age)
        if len(fresh) < enough and now < deadline:
            return Decision(stale=stale, wait_until=deadline)
        fresh.sort(key=lambda c: (self._served.get(c.camera, -1), c.captured))
        batch = fresh[: self.max_batch]
        for c in batch:  # in priority order, so ties never repeat
            self._tickets += 1
            self._served[c.camera] = self._tickets
        # Cameras left out have waited already: they go in the next batch without waiting again.
        self._first_ready = None if len(fresh) <= self.max_batch else now - self.max_wait
        return Decision(batch=batch, stale=stale)

    def observe(self, batch_s: float) -> None:
        """A batch took `batch_s` to infer: smoothed over the last few, it is what the next one will take.
        Never more than half of `max_age`, so a slow batch cannot make every frame stale."""
        expected = batch_s if not self.expected_s else 0.8 * self.expected_s + 0.2 * batch_s
        self.expected_s = min(expected, self.max_age / 2)

    def forget(self, camera: str) -> None:
        """A camera was removed: it no longer counts for fairness."""
        self._served.pop(camera, None)


class MotionGate:
    """Which frames motion gating skips: pure logic on scores and times, tested with a fake clock.

    A frame is skipped when its motion score (the changed-area fraction the reader wrote; -1 when
    gating is off) is below the camera's `min_area`, unless `keepalive_s` passed since the camera's
    last inference, or a track moved lately on the camera (`active_until`, written by the main
    process) and some pixels changed: a slow walker changes fewer than `min_area`, but not none.
    A frame in which no pixel changed has nothing new to show, whatever the tracks did before (on
    a still crowded scene the model's boxes jump between neighbours now and then, which looks like
    movement). The keepalive counts from this scheduler's own inferences: a fresh scheduler infers
    each camera's first frame.
    """

    def __init__(self) -> None:
        self._last_inferred: dict[str, float] = {}

    def skip(
        self, camera: str, now: float, motion: float, min_area: float, keepalive_s: float, active_until: float
    ) -> bool:
        if motion < 0 or motion >= min_area or (motion > 0 and now < active_until):
            return False
        last = self._last_inferred.get(camera)
        return last is not None and now - last < keepalive_s

    def inferred(self, camera: str, now: float) -> None:
        self._last_inferred[camera] = now

    def forget(self, camera: str) -> None:
        self._last_inferred.pop(camera, None)
