"""The outbox's sender (vistream/outputs/delivery.py) without a broker: a fake paho client whose
`publish()` returns real `MQTTMessageInfo`s, acknowledged by the test the way paho does it
(`on_publish` first, then the info marked published)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from vistream.outputs.delivery import Delivery
from vistream.outputs.outbox import FILENAME, Outbox

PUBACK = mqtt.ReasonCode(mqtt.PacketTypes.PUBACK)


class FakeClient:
    """Records publishes (mid, topic, payload, info); acks come from `ack()`."""

    def __init__(self) -> None:
        self.connected = True
        self.sent: list[tuple[int, str, bytes, mqtt.MQTTMessageInfo]] = []
        self.dropped = 0
        self._mid = 0
        self.lock = threading.Lock()
        self.before_return: Callable[[int], None] | None = None

    def is_connected(self) -> bool:
        return self.connected

    def next_mid(self) -> int:
        with self.lock:
            self._mid = self._mid % 65535 + 1
            return self._mid

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> mqtt.MQTTMessageInfo:
        info = mqtt.MQTTMessageInfo(self.next_mid())
        if not self.connected:
            info.rc = mqtt.MQTT_ERR_NO_CONN
            return info
        with self.lock:
            self.sent.append((info.mid, topic, payload, info))
        if self.before_return is not None:
            self.before_return(info.mid)
        return info

    def drop_out_messages(self) -> list[Any]:
        self.dropped += 1
        return []

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [p for _, _, p, _ in self.sent]


class FakeLink:
    def __init__(self) -> None:
        self.client = FakeClient()
        self.listeners: list[Any] = []

    def add_listener(self, listener: Any) -> None:
        self.listeners.append(listener)


def ack(d: Delivery, mid: int, info: mqtt.MQTTMessageInfo | None, reason: Any = PUBACK) -> None:
    """What paho does with a PUBACK (or a QoS 0 write): on_publish, then the info marked."""
    d.mqtt_published(mid, reason)
    if info is not None:
        info._set_as_published()


def ack_all(link: FakeLink, d: Delivery) -> None:
    with link.client.lock:
        sent = list(link.client.sent)
    for mid, _, _, info in sent:
        if not info.is_published():
            ack(d, mid, info)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@pytest.fixture
def delivery(tmp_path: Path) -> Any:
    made: list[tuple[Outbox, Delivery]] = []

    def make(**kw: Any) -> tuple[Outbox, FakeLink, Delivery]:
        box, link = Outbox(tmp_path / FILENAME), FakeLink()
        made.append((box, Delivery(box, link, **kw)))  # type: ignore[arg-type]
        return box, link, made[-1][1]

    yield make
    for box, d in made:
        d.stop(0.1)
        box.close()


def test_sender_keeps_a_bounded_window_and_deletes_on_ack(delivery: Any) -> None:
    """1. 120 rows, window 50: exactly 50 go out, in id order, and wait for PUBACKs.
    2. Acking them deletes those rows and lets the next 50 out; in the end nothing is pending."""
    box, link, d = delivery(window=50)
    for i in range(120):
        box.add("a", "t", str(i))
    d.start()
    wait_until(lambda: len(link.client.sent) == 50)
    time.sleep(0.05)
    assert len(link.client.sent) == 50 and d.in_flight == 50
    assert link.client.payloads() == [str(i).encode() for i in range(50)]
    for left in (70, 20, 0):
        ack_all(link, d)
        wait_until(lambda: box.pending == left)  # noqa: B023 (called here, in this iteration)
        wait_until(lambda: len(link.client.sent) == 120 - left + min(left, 50))  # noqa: B023
    assert link.client.payloads() == [str(i).encode() for i in range(120)]
    assert d.delivered == 120 and d.published == 120


def test_a_detection_with_a_rows_message_id_does_not_acknowledge_the_row(delivery: Any) -> None:
    """paho numbers QoS 0 detections and QoS 1 rows from one 16-bit counter and calls on_publish for
    both (a detection when it is written).
    1. A row is in flight, its PUBACK outstanding.
    2. A detection with the same message id is written: on_publish(mid) for it.
    3. The row stays in flight and pending (it was not acknowledged); its own PUBACK later deletes it."""
    box, link, d = delivery()
    box.add("a", "t", b"event")
    d.start()
    wait_until(lambda: d.in_flight == 1)
    mid, _, _, info = link.client.sent[0]
    ack(d, mid, mqtt.MQTTMessageInfo(mid))  # the detection's write, not the row's PUBACK
    time.sleep(0.3)
    assert d.in_flight == 1 and box.pending == 1 and d.delivered == 0
    ack(d, mid, info)
    wait_until(lambda: box.pending == 0)
    assert d.delivered == 1


def test_a_puback_marked_after_on_publish_still_acks_its_row_at_once(delivery: Any) -> None:
    """paho calls on_publish before it marks the info published: the row is acknowledged as soon as
    the mark follows, not at the next scan (once a second)."""
    box, link, d = delivery()
    box.add("a", "t", b"x")
    d.start()
    wait_until(lambda: d.in_flight == 1)
    mid, _, _, info = link.client.sent[0]
    d.mqtt_published(mid, PUBACK)
    time.sleep(0.02)
    info._set_as_published()
    t0 = time.monotonic()
    wait_until(lambda: box.pending == 0)
    assert time.monotonic() - t0 < 0.5


def test_unacked_rows_go_out_again_in_order_after_a_reconnect(delivery: Any) -> None:
    """1. Rows 0..9 are published, 0..3 acknowledged, then the connection drops.
    2. Nothing is sent while disconnected, also not rows added meanwhile.
    3. After the CONNACK paho's copies are dropped and rows 4..14 go out in order, 4..9 a second time."""
    box, link, d = delivery(window=50)
    for i in range(10):
        box.add("a", "t", str(i))
    d.start()
    wait_until(lambda: len(link.client.sent) == 10)
    for mid, _, _, info in link.client.sent[:4]:
        ack(d, mid, info)
    wait_until(lambda: box.pending == 6)
    link.client.connected = False
    d.mqtt_disconnected()
    link.client.sent.clear()
    for i in range(10, 15):
        box.add("a", "t", str(i))
    time.sleep(0.1)
    assert link.client.sent == []
    d.mqtt_connecting()
    link.client.connected = True
    d.mqtt_connected()
    wait_until(lambda: len(link.client.sent) == 11)
    assert [int(p) for p in link.client.payloads()] == list(range(4, 15))
    assert link.client.dropped == 1


def test_a_puback_that_beats_publish_returning_still_acks_its_row(delivery: Any) -> None:
    """paho can handle the PUBACK before publish() returns the info to the sender: the row is
    acknowledged all the same. PUBACKs of other messages (status) meanwhile acknowledge nothing."""
    box, link, d = delivery()

    def ack_first(mid: int) -> None:
        d.mqtt_published(mid + 1000, PUBACK)  # someone else's message
        ack(d, mid, link.client.sent[-1][3])

    link.client.before_return = ack_first
    box.add("a", "t", b"x")
    d.start()
    wait_until(lambda: box.pending == 0)
    assert d.delivered == 1 and d.in_flight == 0


def test_publish_without_a_connection_is_retried_not_lost(delivery: Any) -> None:
    """paho answers NO_CONN (it lost the socket before telling us): the row stays pending and goes out
    once reconnected."""
    box, link, d = delivery(retry_s=0.01)
    link.client.connected = False
    d.start()
    d.mqtt_connected()  # we believe we are connected; paho knows better
    box.add("a", "t", b"x")
    time.sleep(0.1)
    assert link.client.sent == [] and box.pending == 1
    d.mqtt_disconnected()
    d.mqtt_connecting()
    link.client.connected = True
    d.mqtt_connected()
    wait_until(lambda: len(link.client.sent) == 1)
    ack_all(link, d)
    wait_until(lambda: box.pending == 0)


def test_stop_waits_for_in_flight_acks_then_leaves_the_rest(delivery: Any) -> None:
    """1. Two rows in flight. 2. stop() while one ack arrives: that row is deleted, the other stays
    pending for the next start, and stop returns within its timeout."""
    box, link, d = delivery()
    box.add("a", "t", b"1")
    box.add("a", "t", b"2")
    d.start()
    wait_until(lambda: d.in_flight == 2)
    mid, _, _, info = link.client.sent[0]
    threading.Timer(0.05, ack, (d, mid, info)).start()
    t0 = time.monotonic()
    d.stop(0.3)
    assert time.monotonic() - t0 < 1.0
    assert [r.payload for r in box.pending_rows()] == [b"2"]


def test_a_reconnect_waits_for_a_publish_in_progress_and_the_row_goes_again(delivery: Any) -> None:
    """1. The sender is inside publish() of row 0 when paho starts a new connection (on_pre_connect).
    2. mqtt_connecting waits until that publish has returned, so the publish belongs wholly to the old
       connection, and row 0 is not counted as in flight on the new one.
    3. After the CONNACK row 0 goes out again, first."""
    box, link, d = delivery()
    inside, release = threading.Event(), threading.Event()

    def block(mid: int) -> None:
        link.client.before_return = None
        inside.set()
        release.wait(5)

    link.client.before_return = block
    box.add("a", "t", b"0")
    d.start()
    assert inside.wait(5)
    connecting = threading.Thread(target=d.mqtt_connecting)
    connecting.start()
    connecting.join(0.2)
    assert connecting.is_alive(), "a new connection began while a publish was in progress"
    release.set()
    connecting.join(5)
    assert d.in_flight == 0
    link.client.sent.clear()
    box.add("a", "t", b"1")
    d.mqtt_connected()
    wait_until(lambda: len(link.client.sent) == 2)
    assert link.client.payloads() == [b"0", b"1"]


def test_a_row_paho_refuses_outright_is_dropped_and_counted(delivery: Any) -> None:
    """A topic paho rejects (a wildcard in it) can never be delivered: it is dropped with an error and
    counted in `rejected`, and the rows after it still go out."""
    box, link, d = delivery()
    publish = link.client.publish

    def refuse(topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> mqtt.MQTTMessageInfo:
        if "+" in topic:
            raise ValueError("Publish topic cannot contain wildcards.")
        return publish(topic, payload, qos, retain)

    link.client.publish = refuse
    box.add("a", "p/+/bad", b"x")
    box.add("a", "p/a/events", b"ok")
    d.start()
    wait_until(lambda: len(link.client.sent) == 1)
    ack_all(link, d)
    wait_until(lambda: box.pending == 0)
    assert d.rejected == 1


def test_on_connect_hooks_run_once_per_connection_before_anything_is_sent(delivery: Any) -> None:
    """1. A hook (Home Assistant's announce) adds a row on every connection.
    2. Each connection runs it exactly once, before the thread sends; its rows go out with the rest.
    3. A hook that fails (a locked database) is retried, not skipped."""
    calls: list[int] = []
    fail = [True]
    box: Outbox | None = None

    def hook() -> None:
        if fail[0]:
            fail[0] = False
            raise OSError("disk I/O error")
        calls.append(len(link.client.sent))
        assert box is not None
        box.add("", "ha/config", b"{}", retain=True, kind="discovery")

    box, link, d = delivery(retry_s=0.01, on_connect=[hook])
    box.add("a", "t", b"event")
    d.start()
    d.mqtt_connecting()
    d.mqtt_connected()
    wait_until(lambda: len(link.client.sent) == 2)
    assert calls == [0]  # nothing was sent before the hook ran
    assert link.client.payloads() == [b"event", b"{}"]
    ack_all(link, d)
    wait_until(lambda: box.pending == 0)
    link.client.sent.clear()
    d.mqtt_disconnected()
    d.mqtt_connecting()
    d.mqtt_connected()
    wait_until(lambda: len(link.client.sent) == 1)
    time.sleep(0.05)
    assert calls == [0, 0] and link.client.payloads() == [b"{}"]


def test_a_row_whose_puback_was_not_heard_is_found_by_the_scan(delivery: Any) -> None:
    """paho marks the info published but the on_publish hint is lost (it came while no row had that
    id yet, say): the thread's scan, at least once a second, still acknowledges the row."""
    box, link, d = delivery()
    box.add("a", "t", b"x")
    d.start()
    wait_until(lambda: d.in_flight == 1)
    link.client.sent[0][3]._set_as_published()  # no on_publish
    wait_until(lambda: box.pending == 0, timeout=2.5)
    assert d.delivered == 1


def test_an_unwritable_outbox_is_retried_quietly_and_loses_no_ack(
    delivery: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """1. Three rows go out; the outbox turns read-only (SQLite's own `query_only`, as a read-only
       remount would) before their PUBACKs are recorded.
    2. Delivery retries every `retry_s` without a traceback per try: the outbox said it once and
       shows it in `problem` (/healthz); the rows stay.
    3. Writable again: the acknowledged rows are deleted, nothing is sent twice."""
    box, link, d = delivery(retry_s=0.02)
    for i in range(3):
        box.add("a", "t", str(i))
    d.start()
    wait_until(lambda: len(link.client.sent) == 3)
    box._db.execute("PRAGMA query_only = ON")
    ack_all(link, d)
    wait_until(lambda: box.problem is not None)
    time.sleep(0.2)  # ten retries
    assert box.pending == 3
    assert not [r for r in caplog.records if r.name == "vistream.outputs.delivery"]
    box._db.execute("PRAGMA query_only = OFF")
    wait_until(lambda: box.pending == 0 and box.problem is None)  # cleared once the commit is done
    assert len(link.client.sent) == 3


def test_stop_returns_while_the_outbox_cannot_record_acks(delivery: Any) -> None:
    """1. Two rows go out and are acknowledged while the outbox is read-only.
    2. `stop()` returns within its timeout (it used to retry the deletes until the thread was
       abandoned); the rows stay in the outbox and go again at the next start."""
    box, link, d = delivery(retry_s=0.02)
    box.add("a", "t", "0")
    box.add("a", "t", "1")
    d.start()
    wait_until(lambda: len(link.client.sent) == 2)
    box._db.execute("PRAGMA query_only = ON")
    ack_all(link, d)
    wait_until(lambda: box.problem is not None)
    t0 = time.monotonic()
    d.stop(0.3)
    assert time.monotonic() - t0 < 1.0
    assert d._thread is not None and not d._thread.is_alive()
    box._db.execute("PRAGMA query_only = OFF")
    assert box.pending == 2
