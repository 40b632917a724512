"""The durable outbox as the daemon runs it: opened, delivered from, and closed by one owner.

`OutboxRuntime` is to the outbox what `CameraRuntime` is to a reader. At boot it opens the outbox
when the config has anything to deliver (rules, lines, Home Assistant), waiting out a lock for a
while and then refusing to boot (exit 2) rather than start empty beside it. A reload that brings
the first rules opens it late: one attempt, then again every `retry_s` from the main loop while
it is still needed; the outbox is handed to the result thread's `Alerts` through `reconfigure`,
never assigned under its feet. Its close is registered in the stop order at boot, so an outbox
opened late is closed there too (after the result pump's last write). Main thread only, except
`figures()`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Protocol

from vistream.config.models import Config, OutboxConfig
from vistream.ops.boot import BootError
from vistream.ops.status import OutboxFigures
from vistream.outputs.delivery import Delivery, Link
from vistream.outputs.outbox import Outbox

log = logging.getLogger(__name__)

OPEN_S = 30.0  # at boot: retry a locked, read-only or full outbox this long, then exit 2
RETRY_S = 5.0  # after a reload: try again to open the outbox its rules need, every so often
DELIVERY_STOP_S = 1.0


class Reconfigurable(Protocol):
    """Who writes into the outbox (the result thread's `Alerts`): it takes a late one with the config."""

    def reconfigure(self, cfg: Config, outbox: Outbox | None = None) -> None: ...


def needed(cfg: Config) -> bool:
    """Does the config have anything to deliver through the outbox?"""
    return bool(cfg.alerts or cfg.mqtt.home_assistant or any(c.lines for c in cfg.enabled_cameras))


class OutboxRuntime:
    """The outbox at `path` with `bounds` (both fixed for the daemon's life: changing them takes a
    restart), its Delivery, and why a late one is not open yet."""

    def __init__(
        self,
        path: Path,
        bounds: OutboxConfig,
        retry_s: float = RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path, self.bounds, self.retry_s, self._clock = path, bounds, retry_s, clock
        self.outbox: Outbox | None = None
        self.delivery: Delivery | None = None
        self._late: str | None = None  # why the outbox a reload asked for is not open yet
        self._retry_at = 0.0

    def start(self, stack: ExitStack, cfg: Config, open_s: float = OPEN_S) -> None:
        """Take the outbox's place in the stop order and open it when `cfg` needs it (BootError 2
        when it cannot be opened within `open_s`)."""
        stack.callback(self.close)  # also closes one a reload opens later
        if needed(cfg):
            # Never start empty beside an outbox that is only locked or full: wait, then exit 2.
            self._open(open_s)

    def deliver(self, link: Link, on_connect: Sequence[Callable[[], object]] = ()) -> None:
        """Start delivering from the open outbox, if any (before the MQTT link starts)."""
        if self.outbox is not None:
            self.delivery = Delivery(self.outbox, link, on_connect=on_connect)
            self.delivery.start()

    def stop_delivery(self, timeout: float = DELIVERY_STOP_S) -> None:
        """What is in flight gets its PUBACK, the rest stays for next time (before MQTT stops)."""
        if self.delivery is not None:
            self.delivery.stop(timeout)

    def close(self) -> None:
        if self.outbox is not None:
            self.outbox.close()

    def reload(self, cfg: Config, alerts: Reconfigurable, link: Link) -> None:
        """After a reload: the first rules or lines arrived, open the outbox and deliver from it.

        One attempt (the main loop must keep turning); `retry` tries again every `retry_s`.
        """
        if self.outbox is not None or not needed(cfg):
            return
        try:
            self._open()
        except BootError as exc:
            if self._late is None:  # once, not at every retry
                log.error("reload: %s; events of the new rules are not delivered, retrying", exc)
            self._late = str(exc)
            self._retry_at = self._clock() + self.retry_s
            return
        if self._late is not None:
            log.warning("reload: the event outbox is open now")
            self._late = None
        assert self.outbox is not None
        alerts.reconfigure(cfg, self.outbox)
        self.deliver(link)  # stopped and closed where a delivery from the start would be

    def retry(self, now: float, cfg: Config, alerts: Reconfigurable, link: Link) -> None:
        """The outbox a reload asked for could not be opened (locked, full): try again, while needed."""
        if self._late is None or now < self._retry_at:
            return
        if needed(cfg):
            self.reload(cfg, alerts, link)
        else:  # a later reload took the rules away again
            self._late = None

    @property
    def problem(self) -> str | None:
        """Why events cannot be written to the outbox now (for /healthz and /metrics), or None."""
        return self.outbox.problem if self.outbox else self._late

    def figures(self) -> OutboxFigures:
        box = self.outbox
        if box is None:
            return OutboxFigures(problem=self._late)
        return OutboxFigures(box.pending, box.evicted, box.write_failures, box.problem)

    def _open(self, open_timeout_s: float = 0.0) -> None:
        try:
            b = self.bounds
            self.outbox = Outbox(
                self.path, max_rows=b.max_rows, max_age_s=b.max_age_s, open_timeout_s=open_timeout_s
            )
        except (OSError, sqlite3.Error) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise BootError(2, f"state_dir: cannot keep the event outbox in {self.path}: {reason}") from None
