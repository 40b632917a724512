"""Counters and histograms that cross a process boundary as plain picklable values.

The scheduler process keeps its own cumulative figures and sends snapshots;
the main process exposes them. Snapshots are cumulative, so a snapshot lost
to a full queue loses nothing: the next one carries the totals.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0)


@dataclass
class Buckets:
    """A Prometheus-style histogram: counts per upper bound, plus sum and count."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # one more than bounds: the +Inf bucket
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def merged(self, other: Buckets) -> Buckets:
        counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        return Buckets(self.bounds, counts, self.sum + other.sum, self.count + other.count)

    def copy(self) -> Buckets:
        return Buckets(self.bounds, list(self.counts), self.sum, self.count)

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count of values <= le) pairs, ending with +Inf, as prometheus_client wants them."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out

    def quantile(self, q: float) -> float:
        """The q-quantile, interpolated inside its bucket as Prometheus' histogram_quantile does."""
        if not self.count:
            return 0.0
        target, below, lower = q * self.count, 0, 0.0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            if below + n >= target and n:
                return lower + (bound - lower) * (target - below) / n
            below, lower = below + n, bound
        return self.bounds[-1]  # in the +Inf bucket: the largest finite bound is all we know


# Why a sampled frame was never inferred: the CameraCounts fields /metrics and /api/cameras show as
# `vistream_frames_dropped_total{reason}` and `dropped`.
DROP_REASONS = ("stale", "overwritten", "failed", "unattached", "reshape", "backend")


@dataclass
class CameraCounts:
    inferred: int = 0
    stale: int = 0
    overwritten: int = 0
    failed: int = 0  # taken into a batch whose inference raised
    torn: int = 0  # reads retried because the writer lapped the slot mid-copy
    # Written before this scheduler attached and after what its predecessor reported: while the
    # model loaded (at start, after a restart), or handled by a killed predecessor after its last report.
    unattached: int = 0
    # Not dropped: motion gating decided the frame was not worth inferring (vistream.sources.motion).
    skipped_no_motion: int = 0
    # Letterboxed for a batch shape the model no longer runs (the cameras changed): never inferred.
    reshape: int = 0
    # Inferred, but older than max_frame_age_ms when their batch ended (the batch ran long).
    late: int = 0
    # Taken for a batch a remote backend (Triton) did not answer in time or refused, or while it
    # was down: not a failure of this process, so it never ends the scheduler.
    backend: int = 0

    def merged(self, other: CameraCounts) -> CameraCounts:
        return CameraCounts(*(a + b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[int, ...]:
        return (
            self.inferred,
            self.stale,
            self.overwritten,
            self.failed,
            self.torn,
            self.unattached,
            self.skipped_no_motion,
            self.reshape,
            self.late,
            self.backend,
        )


@dataclass
class SchedulerStats:
    """Everything the scheduler counts, cumulative since it started."""

    cameras: dict[str, CameraCounts] = field(default_factory=dict)
    batch_size: Buckets = field(default_factory=lambda: Buckets(BATCH_BUCKETS))
    inference_s: Buckets = field(default_factory=lambda: Buckets(SECONDS_BUCKETS))
    frame_age_s: Buckets = field(default_factory=lambda: Buckets(SECONDS_BUCKETS))
    result_age_s: Buckets = field(default_factory=lambda: Buckets(SECONDS_BUCKETS))  # at inference end
    results_overflow: int = 0  # frames whose results did not fit the hand-off queue
    inference_errors: int = 0
    # Camera -> the newest seq the counts above account for (the consumer's position); a
    # successor scheduler counts from there, so no frame falls between two schedulers.
    positions: dict[str, int] = field(default_factory=dict)
    batch_shape: tuple[int, int] = (0, 0)  # (height, width) batches are inferred at now
    reshapes: int = 0  # times the batch shape changed (and the model was warmed up for it)
    backend_down: str = ""  # why the (remote) backend takes no batches now; "" while it does

    def merged(self, other: SchedulerStats) -> SchedulerStats:
        cams = dict(self.cameras)
        for name, c in other.cameras.items():
            cams[name] = cams[name].merged(c) if name in cams else c
        return SchedulerStats(
            cams,
            self.batch_size.merged(other.batch_size),
            self.inference_s.merged(other.inference_s),
            self.frame_age_s.merged(other.frame_age_s),
            self.result_age_s.merged(other.result_age_s),
            self.results_overflow + other.results_overflow,
            self.inference_errors + other.inference_errors,
            {**self.positions, **other.positions},  # positions are not sums: the later one holds
            other.batch_shape if other.batch_shape != (0, 0) else self.batch_shape,
            self.reshapes + other.reshapes,
            other.backend_down,  # a state, not a sum: the latest scheduler's holds
        )
