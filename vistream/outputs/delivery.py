"""Delivery: the thread that sends the outbox's pending rows in id order and deletes them on PUBACK.

At most `window` rows are in flight (published, PUBACK outstanding). Each row's `MQTTMessageInfo` is
kept, and a row counts as acknowledged only when its info says so (`is_published()`: paho sets it
when it handles the PUBACK of that very message). `on_publish` is only the wake-up: paho numbers
QoS 0 detections from the same 16-bit counter as our rows, so a message id alone could match a
detection's write to a row whose PUBACK is still outstanding, and that row would be deleted unsent.
The acknowledged rows are deleted by this thread in one transaction; SQLite is never written from
paho's network thread. When the connection is lost, every unacknowledged row counts as unsent:
after the next CONNACK the thread starts again from the oldest pending row. Rows the broker had
already taken arrive twice; that is the at-least-once contract (subscribers drop duplicate event
ids). First arrivals stay in id order, so each camera's order holds.

What paho 2.x itself does with QoS 1 messages across a reconnect, and why we take them away from it
(read in paho/mqtt/client.py of the installed 2.2.0):
- `publish()` keeps every QoS 1 message in `_out_messages` until its PUBACK; without a connection
  it keeps it (state "publish") and returns MQTT_ERR_NO_CONN.
- `reconnect()` runs `_messages_reconnect_reset_out()`: each unacknowledged QoS 1 message is marked
  for sending again with DUP set, also with a clean session, and the in-flight count goes to 0.
- `_handle_connack()` calls `on_connect` first and only then re-sends those messages.
So paho alone loses nothing within one process, but its copies race with ours: our thread re-sends
from the oldest pending row as soon as it hears of the CONNACK, paho re-sends its stale copies a
moment later, and a stale copy of row 40 can reach the broker before the first arrival of row 30
of the same camera. Hence, first thing in every successful CONNACK, `client.drop_out_messages()`
(the publisher re-publishes its retained status right after) and this thread alone decides what
goes out, in id order.
`drop_out_messages()` empties `_out_messages` but leaves paho's in-flight count as it was, and paho
ignores a PUBACK for a message it no longer holds, so every QoS 1 message that had been *sent* on
this connection before the drop keeps a slot of paho's window (`max_inflight_messages`, 20) for
the rest of the connection; with 20 of them nothing QoS 1 goes out any more. Nothing of ours is
sent before the drop (Home Assistant's discovery configs are outbox rows too, sent by this
thread), and right after it the count is set to what it now is by definition, 0, under paho's
lock (`_drop_paho_copies`).
The other race is a publish that straddles a reconnect: checked "connected" on the old connection,
written on the new one before our re-send of older rows. `mqtt_connecting` (paho's
`on_pre_connect`, just before the new socket exists) and `mqtt_connected` take `_gate`, which is held
across each `publish()`, so a publish belongs wholly to one connection. `mqtt_disconnected` does not
take it: paho may call `on_disconnect` while holding its `_out_message_mutex`, which `publish()` needs.
paho calls `on_publish` before it marks the info published, and may handle a PUBACK before
`publish()` has returned the info to us: a message id heard while a row with that id is in flight
(or while a publish is in progress) is a hint, and the thread waits briefly on that row's info; a
scan of every in-flight info at least once a second catches anything a hint missed.

On every new connection the thread first runs the `on_connect` hooks (Home Assistant's discovery
adds its configs to the outbox there, since the broker may have lost its retained messages), then
sends from the oldest pending row.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from vistream.outputs.mqtt import ConnectionListener
from vistream.outputs.outbox import Outbox, OutboxUnavailable, Row

log = logging.getLogger(__name__)

SCAN_S = 1.0  # the longest an acknowledged row waits for the thread when its hint was missed
HINT_WAIT_S = 0.1  # how long a hinted info may take to be marked published after on_publish


class Link(Protocol):
    """What Delivery needs of the MQTT side; `MqttPublisher` is one."""

    client: mqtt.Client

    def add_listener(self, listener: ConnectionListener) -> None: ...


class Delivery:
    """`Delivery(outbox, publisher).start()`: pending rows go out whenever the broker is there.

    Register it before `publisher.start()` (or start it before); `stop()` before the publisher stops.
    `on_connect`: called from this thread once per connection, before anything is sent on it (it
    may add rows, e.g. Home Assistant's discovery configs); an exception is logged and retried.
    """

    def __init__(
        self,
        outbox: Outbox,
        link: Link,
        *,
        window: int = 50,
        expire_every_s: float = 60.0,
        retry_s: float = 0.2,
        on_connect: Sequence[Callable[[], object]] = (),
    ) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.outbox = outbox
        self.link = link
        self.window = window
        self.expire_every_s = expire_every_s
        self.retry_s = retry_s
        self.on_connect = list(on_connect)
        self.published = 0  # rows handed to paho (re-sends included)
        self.delivered = 0  # PUBACKs for rows
        self.rejected = 0  # PUBACKs with a failure reason (MQTT 5 only): the row is dropped, not retried
        self._gate = threading.Lock()  # held across each publish(); see the module docstring
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._connected = False
        self._gen = 0  # bumped by every connection change; a publish checked against one gen
        self._announced = 0  # the gen whose on_connect hooks have run
        self._cursor = 0  # highest row id handed to paho on this connection
        self._inflight: dict[int, tuple[int, mqtt.MQTTMessageInfo]] = {}  # mid -> (row id, its info)
        self._hints: dict[int, Any] = {}  # mid -> reason, from on_publish; confirmed by the info
        self._acked: list[int] = []  # row ids to delete
        self._publishing = False
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
                _drop_paho_copies(self.link.client)
            except Exception:  # paho would stop its network loop on an exception from a callback
                log.exception("could not drop paho's copies of unacknowledged messages")
            with self._cond:
                self._new_connection(connected=True)

    def mqtt_disconnected(self) -> None:
        with self._cond:
            self._new_connection(connected=False)

    def mqtt_published(self, mid: int, reason: Any) -> None:
        with self._cond:
            if mid in self._inflight or self._publishing:
                self._hints[mid] = reason
                self._cond.notify_all()

    def _new_connection(self, connected: bool) -> None:
        """Forget what was in flight: it goes out again, in order, on the next connection. Under _cond."""
        self._connected = connected
        self._gen += 1
        self._cursor = 0
        self._inflight.clear()
        self._hints.clear()
        self._more = True
        self._cond.notify_all()

    # -- the thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        next_expire = time.monotonic() + self.expire_every_s
        while True:
            with self._cond:
                wake_by = min(next_expire, time.monotonic() + SCAN_S)  # the scan for missed hints
                while not self._ready() and time.monotonic() < wake_by:
                    self._cond.wait(self._wait_s(wake_by))
            self._collect_acks()
            with self._cond:
                acked, self._acked = self._acked, []
                done = self._stopping and (not self._inflight or time.monotonic() >= self._stop_by)
                send = self._connected and not self._stopping
                announce = send and self._announced != self._gen and bool(self.on_connect)
                send = send and self._more and not announce
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
                if announce:
                    for hook in self.on_connect:
                        hook()
                    with self._cond:
                        self._announced = gen
                        self._more = True
                elif send and room > 0:
                    self._send(self.outbox.pending_rows(cursor, room), gen, room)
            except Exception as exc:
                # A full disk or a locked file: keep the rows, try again shortly. The outbox logged
                # that once and shows it (`problem`, /healthz); anything else is logged here.
                if not isinstance(exc, OutboxUnavailable):
                    log.exception("outbox delivery failed; retrying in %.1f s", self.retry_s)
                if done:  # stopping: what could not be recorded is sent again at the next start
                    if acked:
                        log.warning("outbox: %d acknowledged row(s) could not be deleted; they go "
                                    "again at the next start (at least once)", len(acked))  # fmt: skip
                    return
                with self._cond:
                    self._acked[:0] = acked
                    self._more = True
                time.sleep(self.retry_s)

    def _ready(self) -> bool:
        if self._acked or self._hints:
            return True
        if self._stopping:
            return not self._inflight or time.monotonic() >= self._stop_by
        if self._connected and self._announced != self._gen and self.on_connect:
            return True
        return self._connected and self._more and len(self._inflight) < self.window

    def _wait_s(self, wake_by: float) -> float:
        left = wake_by - time.monotonic()
        if self._stopping:
            left = min(left, self._stop_by - time.monotonic())
        return max(0.0, left)

    def _collect_acks(self) -> None:
        """Move every in-flight row whose info says published to `_acked` (outside _cond: the waits
        below take paho's info lock, which paho takes while it may hold its own)."""
        with self._cond:
            hints, self._hints = self._hints, {}
            inflight = dict(self._inflight)
            gen = self._gen
        if not inflight:
            return
        for mid in hints:
            if mid in inflight:  # paho marks the info right after on_publish returns
                with contextlib.suppress(RuntimeError, ValueError):
                    inflight[mid][1].wait_for_publish(HINT_WAIT_S)
        done = [(mid, row) for mid, (row, info) in inflight.items() if _acknowledged(info)]
        with self._cond:
            if self._gen != gen:
                return  # a new connection: these rows go again anyway
            for mid, row in done:
                if self._inflight.get(mid, (None,))[0] == row:
                    del self._inflight[mid]
                    self._ack_locked(row, hints.get(mid))
        # A hint whose info stayed unpublished was a QoS 0 detection's write with the same id (or a
        # PUBACK paho has not marked yet): the scan every SCAN_S finds the row once it is acknowledged.

    def _ack_locked(self, row: int, reason: Any) -> None:
        self._acked.append(row)
        self.delivered += 1
        if getattr(reason, "is_failure", False):
            self.rejected += 1
            log.warning("broker refused outbox row %d (%s); dropped, not retried", row, reason)
        self._cond.notify_all()

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
                self._inflight[info.mid] = (row.id, info)
                if info.mid in self._hints:
                    self._cond.notify_all()
        return True


def _acknowledged(info: mqtt.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except (RuntimeError, ValueError):  # it failed: not acknowledged, the row goes again
        return False


def _drop_paho_copies(client: mqtt.Client) -> None:
    """`client.drop_out_messages()`, and paho's in-flight count made to agree with it.

    paho 2.2.0's drop_out_messages() clears `_out_messages` but not `_inflight_messages`, and its
    PUBACK handler ignores ids it no longer holds, so a QoS 1 message sent on this connection before
    the drop would hold its window slot until the next reconnect. With `_out_messages` empty the
    true count is 0; both are set under paho's own lock (an RLock, which drop_out_messages takes too).
    """
    mutex = getattr(client, "_out_message_mutex", None)
    if mutex is None or not hasattr(client, "_inflight_messages"):
        client.drop_out_messages()  # not paho (a test's fake) or a paho that keeps its count elsewhere
        return
    with mutex:
        client.drop_out_messages()
        client._inflight_messages = 0
