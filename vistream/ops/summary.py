"""A periodic line in the log that says how the pipeline is doing, and warns when it sheds load.

Dropping frames is by design, but an operator should not have to scrape
/metrics to learn that most of them are being dropped.
"""

from __future__ import annotations

import logging

from vistream.ops.stats import SchedulerStats

log = logging.getLogger("vistream.summary")

EVERY_S = 60.0
WARN_EVERY_S = 600.0
WARN_DROPPED = 0.5  # share of sampled frames dropped that deserves a warning


class Summary:
    def __init__(self) -> None:
        self._at: float | None = None
        self._sampled = 0
        self._inferred = 0
        self._dropped = 0
        self._warned = float("-inf")

    def tick(self, now: float, sampled: int, stats: SchedulerStats) -> None:
        """`sampled`: frames written to the rings so far, all cameras; `stats`: scheduler totals."""
        inferred = sum(c.inferred for c in stats.cameras.values())
        dropped = sum(c.stale + c.overwritten + c.failed for c in stats.cameras.values())
        if self._at is None:
            self._at, self._sampled, self._inferred, self._dropped = now, sampled, inferred, dropped
            return
        span = now - self._at
        if span < EVERY_S:
            return
        d_sampled, d_inferred, d_dropped = (
            sampled - self._sampled,
            inferred - self._inferred,
            dropped - self._dropped,
        )
        self._at, self._sampled, self._inferred, self._dropped = now, sampled, inferred, dropped
        log.info(
            "last %.0fs: %.1f frames/s sampled, %.1f inferred, %.1f dropped (stale or overwritten)",
            span, d_sampled / span, d_inferred / span, d_dropped / span,
        )  # fmt: skip
        if d_sampled and d_dropped / d_sampled > WARN_DROPPED and now - self._warned >= WARN_EVERY_S:
            self._warned = now
            log.warning(
                "%.0f%% of sampled frames were dropped: the cameras' detect_fps add up to %.1f frames/s "
                "but the model keeps up with %.1f; lower detect_fps or use a faster model or device",
                100 * d_dropped / d_sampled, d_sampled / span, d_inferred / span,
            )  # fmt: skip
