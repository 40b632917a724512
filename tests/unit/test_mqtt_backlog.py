"""Detections (QoS 0) while the socket is slower than the cameras: bounded in paho's buffer, and
every drop counted by reason."""

from __future__ import annotations

from types import SimpleNamespace

import paho.mqtt.client as mqtt

from vistream.config.models import MqttConfig
from vistream.outputs.mqtt import MqttPublisher


class SlowClient:
    """paho with a socket that writes nothing until `write()`: QoS 0 infos stay unpublished."""

    def __init__(self) -> None:
        self.queued: list[mqtt.MQTTMessageInfo] = []
        self._mid = 0

    def publish(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        self._mid += 1
        info = mqtt.MQTTMessageInfo(self._mid)
        if qos == 0:
            self.queued.append(info)
        return info

    def write(self, n: int) -> None:
        for info in self.queued[:n]:
            info._set_as_published()
        del self.queued[:n]

    def reconnect(self) -> None:
        """What paho's reconnect() does to QoS 0 messages it had not written: lost, and marked so."""
        for info in self.queued:
            info.rc = mqtt.MQTT_ERR_CONN_LOST
            info._set_as_published()
        self.queued.clear()


def connected_publisher(max_backlog: int) -> tuple[MqttPublisher, SlowClient]:
    pub = MqttPublisher(MqttConfig(topic_prefix="p"), max_backlog=max_backlog)
    client = SlowClient()
    pub.client = client  # type: ignore[assignment]
    pub._on_connect(client, None, None, SimpleNamespace(is_failure=False), None)  # type: ignore[arg-type]
    return pub, client


def test_detections_beyond_the_backlog_are_dropped_and_counted_until_the_socket_drains() -> None:
    """1. The socket writes nothing: 10 detections are handed to paho, the next 5 are dropped and
       counted as kind `detections`, reason `backlog`.
    2. The socket writes 4 of them: 4 more are accepted, then dropping resumes.
    3. QoS 1 messages (statuses) are not bounded by it."""
    pub, client = connected_publisher(max_backlog=10)
    sent = [pub.publish("p/a/detections", b"{}", "detections") for _ in range(15)]
    assert sent == [True] * 10 + [False] * 5
    assert pub.dropped == {"detections": 5}
    assert pub.dropped_by_reason == {("detections", "backlog"): 5}
    client.write(4)
    assert [pub.publish("p/a/detections", b"{}", "detections") for _ in range(6)] == [True] * 4 + [False] * 2
    assert pub.dropped_by_reason == {("detections", "backlog"): 7}
    assert pub.publish("p/x", b"1", "other", qos=1)


def test_what_a_reconnect_lost_no_longer_counts_against_the_backlog() -> None:
    """1. The backlog is full when the connection is lost; paho's reconnect marks those lost.
    2. On the new connection detections are accepted again (no leftover holds the bound)."""
    pub, client = connected_publisher(max_backlog=3)
    assert [pub.publish("p/a/detections", b"{}", "detections") for _ in range(4)] == [True] * 3 + [False]
    client.reconnect()
    pub._on_connect(client, None, None, SimpleNamespace(is_failure=False), None)  # type: ignore[arg-type]
    assert pub.publish("p/a/detections", b"{}", "detections")


def test_drops_while_disconnected_are_counted_by_reason() -> None:
    pub = MqttPublisher(MqttConfig(topic_prefix="p"))
    assert not pub.publish("p/a/detections", b"{}", "detections")
    assert pub.dropped == {"detections": 1}
    assert pub.dropped_by_reason == {("detections", "disconnected"): 1}
