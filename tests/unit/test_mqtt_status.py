"""Camera status over MQTT: what the first connection says, and no change lost to a race."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from vistream.config.models import MqttConfig
from vistream.outputs.mqtt import MqttPublisher


class FakeClient:
    """Records publishes; `during` runs inside the first publish of one topic (another thread's turn)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.during: dict[str, Any] = {}

    def publish(self, topic: str, payload: str, qos: int = 0, retain: bool = False) -> Any:
        self.sent.append((topic, payload))
        hook = self.during.pop(topic, None)
        if hook:
            hook()
        return SimpleNamespace(rc=0)


def connect(pub: MqttPublisher, client: FakeClient) -> None:
    pub._on_connect(client, None, None, SimpleNamespace(is_failure=False), None)  # type: ignore[arg-type]


def last(client: FakeClient, topic: str) -> str | None:
    values = [p for t, p in client.sent if t == topic]
    return values[-1] if values else None


def test_cameras_recorded_before_start_are_published_at_the_first_connection() -> None:
    """Cameras recorded offline before the connection (as the daemon does at start) are all
    published with the first CONNACK, after `{prefix}/status` online."""
    pub = MqttPublisher(MqttConfig(topic_prefix="p"))
    client = FakeClient()
    pub.client = client  # type: ignore[assignment]
    for cam in ("a", "b"):
        pub.camera_status(cam, False)
    assert client.sent == []  # not connected yet: recorded only
    connect(pub, client)
    assert client.sent == [("p/status", "online"), ("p/a/status", "offline"), ("p/b/status", "offline")]


def test_a_change_during_the_connect_is_not_lost() -> None:
    """1. Camera `b` is offline when the connection comes up; the CONNACK handler copies the
       statuses and starts publishing them.
    2. Meanwhile (between the copy and `connected = True`) the supervisor sees `b` come online.
    3. `b`'s retained status ends `online`: the change is published by one side or the other,
       and never followed by the older value."""
    pub = MqttPublisher(MqttConfig(topic_prefix="p"))
    client = FakeClient()
    pub.client = client  # type: ignore[assignment]
    pub.camera_status("a", False)
    pub.camera_status("b", False)
    client.during["p/a/status"] = lambda: pub.camera_status("b", True)
    connect(pub, client)
    assert pub.connected
    assert last(client, "p/b/status") == "online"
