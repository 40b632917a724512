"""Delivery: the thread that sends the outbox's pending rows in id order and deletes them on PUBACK.

At most `window` rows are in flight (published, PUBACK outstanding). A PUBACK (paho's `on_publish`,
matched by message id) moves the row to a list the thread deletes in one transaction; SQLite is never
written from paho's network thread. When the connection is lost, every unacknowledged row counts as
unsent: after the next CONNACK the thread starts again from the oldest pending row. Rows the broker
had already taken arrive twice; that is the at-least-once contract (subscribers drop duplicate
event ids). First arrivals stay in id order, so each camera's order holds.

What paho 2.x itself does with QoS 1 messages across a reconnect, and why we take them away from it
(read in paho/mqtt/client.py of the installed 2.2.0):
- `publish()` keeps every QoS 1 message in `_out_messages` until its PUBACK; without a connection
  it keeps it (state "publish") and returns MQTT_ERR_NO_CONN.
- `reconnect()` runs `_messages_reconnect_reset_out()`: each unacknowledged QoS 1 message is marked
  for sending again with DUP set, also with a clean session; nothing is dropped.
- `_handle_connack()` calls `on_connect` first and only then re-sends those messages.
So paho alone loses nothing within one process, but its copies race with ours: our thread re-sends
from the oldest pending row as soon as it hears of the CONNACK, paho re-sends its stale copies a
moment later, and a stale copy of row 40 can reach the broker before the first arrival of row 30
of the same camera. Hence, first thing in every successful CONNACK, `client.drop_out_messages()`
(the publisher re-publishes its retained status right after) and this thread alone decides what
goes out, in id order.
The other race is a publish that straddles a reconnect: checked "connected" on the old connection,
written on the new one before our re-send of older rows. `mqtt_connecting` (paho's
`on_pre_connect`, just before the new socket exists) and `mqtt_connected` take `_gate`, which is held
across each `publish()`, so a publish belongs wholly to one connection. `mqtt_disconnected` does not
take it: paho may call `on_disconnect` while holding its `_out_message_mutex`, which `publish()` needs.
A PUBACK can be handled before `publish()` has returned the message id to us (paho sends under its
own lock); `_early` keeps the ids acknowledged while our publish was in progress.
Known limit: paho also calls `on_publish` for QoS 0 messages (detections) with ids from the same
16-bit counter, so a row whose PUBACK is outstanding while 65535 other messages are published could
be matched by a detection's id. That needs a connection that stays up without acknowledging anything
for minutes; the keep-alive ends such a connection first.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from vistream.outputs.mqtt import ConnectionListener
from vistream.outputs.outbox import Outbox, Row

log = logging.getLogger(__name__)


class Link(Protocol):
    """What Delivery needs of the MQTT side; `MqttPublisher` is one."""

    client: mqtt.Client

    def add_listener(self, listener: ConnectionListener) -> None: ...


class Delivery:
    """`Delivery(outbox, publisher).start()`: pending rows go out whenever the broker is there.

    Register it before `publisher.start()` (or start it before); `stop()` before the publisher stops.
    """

    def __init__(
        self,
        outbox: Outbox,
        link: Link,
        *,
        window: int = 50,
        expire_every_s: float = 60.0,
        retry_s: float = 0.2,
    ) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.outbox = outbox
        self.link = link
        self.window = window
        self.expire_every_s = expire_every_s
        self.retry_s = retry_s
        self.published = 0  # rows handed to paho (re-sends included)
        self.delivered = 0  # PUBACKs for rows
        self.rejected = 0  # PUBACKs with a failure reason (MQTT 5 only): the row is dropped, not retried
        self._gate = threading.Lock()  # held across each publish(); see the module docstring
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._connected = False
        self._gen = 0  # bumped by every connection change; a publish checked against one gen
        self._cursor = 0  # highest row id handed to paho on this connection
        self._inflight: dict[int, int] = {}  # mid -> row id
        self._acked: list[int] = []  # row ids to delete
        self._publishing = False
        self._early: dict[int, Any] = {}  # mid -> reason, acknowledged before publish() returned the mid
        self._more = True  # rows may exist beyond the cursor
        self._stopping = False
        self._stop_by = 0.0
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        self.link.add_listener(self)
        self.outbox.watch(self.wake)
        with self._gate, self._cond:
            # Started after the CONNACK: none is coming to tell us we may send.
            if self.link.client.is_connected() and not self._connected:
                self._new_connection(connected=True)
        self._thread = threading.Thread(target=self._run, name="outbox-delivery", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Send nothing new; wait up to `timeout` for PUBACKs of what is in flight, record them, return.

        Rows still unacknowledged stay in the outbox for the next start.
        """
        with self._cond:
            self._stopping = True
            self._stop_by = time.monotonic() + timeout
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)
            if self._thread.is_alive():
                log.error("outbox delivery thread did not stop within %.1f s", timeout + 1.0)

    def wake(self) -> None:
        """New rows were added (Outbox calls this after each add)."""
        with self._cond:
            self._more = True
            self._cond.notify_all()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    # -- ConnectionListener (paho's network thread; quick, never raise) ----------------------------------

    def mqtt_connecting(self) -> None:
        with self._gate, self._cond:
            self._new_connection(connected=False)

    def mqtt_connected(self) -> None:
        with self._gate:
            try:
                self.link.client.drop_out_messages()
            except Exception:  # paho would stop its network loop on an exception from a callback
                log.exception("could not drop paho's copies of unacknowledged messages")
            with self._cond:
                self._new_connection(connected=True)

    def mqtt_disconnected(self) -> None:
        with self._cond:
            self._new_connection(connected=False)

    def mqtt_published(self, mid: int, reason: Any) -> None:
        with self._cond:
            row = self._inflight.pop(mid, None)
            if row is None:
                if self._publishing:
                    self._early[mid] = reason
                return
            self._ack_locked(row, reason)

    def _ack_locked(self, row: int, reason: Any) -> None:
        self._acked.append(row)
        self.delivered += 1
        if getattr(reason, "is_failure", False):
            self.rejected += 1
            log.warning("broker refused outbox row %d (%s); dropped, not retried", row, reason)
        self._cond.notify_all()

    def _new_connection(self, connected: bool) -> None:
        """Forget what was in flight: it goes out again, in order, on the next connection. Under _cond."""
        self._connected = connected
        self._gen += 1
        self._cursor = 0
        self._inflight.clear()
        self._early.clear()
        self._more = True
        self._cond.notify_all()

    # -- the thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        next_expire = time.monotonic() + self.expire_every_s
        while True:
            with self._cond:
                while not self._ready() and time.monotonic() < next_expire:
                    self._cond.wait(self._wait_s(next_expire))
                acked, self._acked = self._acked, []
                done = self._stopping and (not self._inflight or time.monotonic() >= self._stop_by)
                send = self._connected and not self._stopping and self._more
                room = self.window - len(self._inflight)
                gen, cursor = self._gen, self._cursor
                if send and room > 0:
                    self._more = False  # cleared before reading, so an add from now on sets it again
            try:
                if acked:
                    self.outbox.ack_many(acked)
                if time.monotonic() >= next_expire:
                    next_expire = time.monotonic() + self.expire_every_s
                    self.outbox.expire()
                if done:
                    return
                if send and room > 0:
                    self._send(self.outbox.pending_rows(cursor, room), gen, room)
            except Exception:
                # A full disk or a locked file: keep the rows, say so, try again shortly.
                log.exception("outbox delivery failed; retrying in %.1f s", self.retry_s)
                with self._cond:
                    self._acked[:0] = acked
                    self._more = True
                time.sleep(self.retry_s)

    def _ready(self) -> bool:
        if self._acked:
            return True
        if self._stopping:
            return not self._inflight or time.monotonic() >= self._stop_by
        return self._connected and self._more and len(self._inflight) < self.window

    def _wait_s(self, next_expire: float) -> float:
        left = next_expire - time.monotonic()
        if self._stopping:
            left = min(left, self._stop_by - time.monotonic())
        return max(0.0, left)

    def _send(self, rows: list[Row], gen: int, room: int) -> None:
        for row in rows:
            sent = self._publish(row, gen)
            if sent is None:  # no connection after all: on_disconnect is on its way
                with self._cond:
                    self._more = True
                    self._cond.wait(self.retry_s)
                return
            if not sent:
                return
        if len(rows) == room:  # the window is full, there may be more beyond it
            with self._cond:
                self._more = True

    def _publish(self, row: Row, gen: int) -> bool | None:
        """True: handed to paho; False: the connection changed since `gen`; None: paho has no connection."""
        with self._gate:
            with self._cond:
                if not self._connected or self._gen != gen or self._stopping:
                    return False
                self._publishing = True
                self._early.clear()
            try:
                info = self.link.client.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
            except ValueError as exc:  # bad topic, payload too large: it can never be delivered
                log.error("outbox row %d (%s) cannot be published: %s; dropped", row.id, row.topic, exc)
                with self._cond:
                    self._publishing = False
                    self._cursor = row.id
                    self._acked.append(row.id)
                    self.rejected += 1
                return True
            with self._cond:
                self._publishing = False
                if self._gen != gen:
                    return False  # paho's copy is dropped at the next CONNACK; the row goes again
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    return None
                self.published += 1
                self._cursor = row.id
                if info.mid in self._early:
                    self._ack_locked(row.id, self._early[info.mid])
                else:
                    self._inflight[info.mid] = row.id
                self._early.clear()
        return True
