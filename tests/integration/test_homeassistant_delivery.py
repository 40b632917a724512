"""Home Assistant discovery and alerts share the outbox's one publishing path, against a real
Mosquitto: many entities do not stall delivery, and removals survive a daemon that never connected.

The parts are wired as `vistream.daemon.Daemon` wires them (`_init_mqtt`, `_init_discovery`), with
paho's defaults (`max_inflight_messages` 20).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from support.daemon import DaemonProcess, base_config
from support.mosquitto import Mosquitto, Subscriber
from support.procs import free_port
from support.waiting import wait_until

from vistream.config.models import Config
from vistream.outputs.delivery import Delivery, _drop_paho_copies
from vistream.outputs.homeassistant import DiscoveryPublisher, discovery_messages
from vistream.outputs.mqtt import MqttPublisher
from vistream.outputs.outbox import FILENAME, Outbox

pytestmark = pytest.mark.integration

PREFIX = "ha"


def config(port: int, cameras: int, rules: tuple[str, ...] = ("person", "car")) -> Config:
    return Config.model_validate(
        {
            "mqtt": {"port": port, "topic_prefix": PREFIX, "client_id": "vs-ha", "home_assistant": True},
            "cameras": [{"name": f"cam{i}", "url": f"rtsp://127.0.0.1:9/{i}"} for i in range(cameras)],
            "alerts": [{"name": name, "labels": [name]} for name in rules],
        }
    )


@contextmanager
def daemon_parts(cfg: Config, state_dir: Path) -> Iterator[tuple[Outbox, MqttPublisher, DiscoveryPublisher]]:
    """Outbox, publisher, discovery and delivery, started and stopped in the daemon's order."""
    outbox = Outbox(state_dir / FILENAME)
    publisher = MqttPublisher(cfg.mqtt)
    for cam in cfg.enabled_cameras:
        publisher.camera_status(cam.name, False)
    discovery = DiscoveryPublisher(cfg, outbox)
    delivery = Delivery(outbox, publisher, on_connect=[discovery.announce])
    delivery.start()
    publisher.start()
    try:
        yield outbox, publisher, discovery
    finally:
        delivery.stop(1.0)
        publisher.stop(1.0)
        outbox.close()


def add_events(outbox: Outbox, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        cam = f"cam{i % 10}"
        event = json.dumps({"n": i, "camera": cam})
        outbox.add(cam, f"{PREFIX}/{cam}/events", event, kind="event")


def events(sub: Subscriber) -> set[int]:
    return {m.json()["n"] for m in sub.messages if m.topic.endswith("/events")}


def test_forty_discovery_configs_with_paho_defaults_do_not_stall_delivery(
    make_mosquitto: Any, tmp_path: Path
) -> None:
    """1. 10 cameras x 2 rules: 40 discovery configs (paho's in-flight window is 20); 30 events already
       pending when the daemon starts; the broker is up.
    2. `{prefix}/status` goes `online`, every camera's status arrives, every config arrives
       (retained, the payload of its entity), every event arrives and the outbox empties.
    3. The broker restarts: `online` again, every config again (a broker that lost its retained
       messages gets them back), and 30 events added meanwhile arrive.
    Before discovery went through the outbox, the configs published in on_connect and then dropped
    held paho's window for good: no `online`, no event, the outbox only grew."""
    port = free_port()
    broker: Mosquitto = make_mosquitto(port)
    cfg = config(port, cameras=10)
    wanted = {d.topic: d.payload for d in discovery_messages(cfg)}
    assert len(wanted) == 40
    with Subscriber(broker.host, port, "#") as sub:
        outbox = Outbox(tmp_path / FILENAME)
        add_events(outbox, 30)
        outbox.close()
        with daemon_parts(cfg, tmp_path) as (outbox, publisher, _):
            sub.wait_for(lambda m: m.topic == f"{PREFIX}/status" and m.payload == b"online", timeout=15)
            statuses = {f"{PREFIX}/cam{i}/status" for i in range(10)}
            wait_until(lambda: statuses <= {m.topic for m in sub.messages}, 15, "every camera's status")

            def configs_since(index: int) -> dict[str, bytes]:
                return {m.topic: m.payload for m in sub.messages[index:] if m.topic in wanted}

            wait_until(lambda: configs_since(0) == wanted, 15, "every discovery config")
            wait_until(lambda: events(sub) == set(range(30)) and outbox.pending == 0, 15, "every event")

            sub.clear()
            broker.stop()
            wait_until(lambda: not publisher.connected, 15, "the publisher noticing the broker is gone")
            add_events(outbox, 30, start=30)
            broker.start()
            sub.wait_subscribed(15)
            sub.wait_for(lambda m: m.topic == f"{PREFIX}/status" and m.payload == b"online", timeout=15)
            wait_until(lambda: configs_since(0) == wanted, 15, "every discovery config again")
            wait_until(lambda: set(range(30, 60)) <= events(sub) and outbox.pending == 0, 15, "new events")


def test_removals_of_a_reload_while_the_broker_is_down_arrive_after_a_restart(
    make_mosquitto: Any, tmp_path: Path
) -> None:
    """1. A daemon with 3 cameras runs against a broker: their configs arrive (retained).
    2. The broker goes away; a reload removes cam1 and cam2; the daemon stops before the broker is
       back (it never connected again).
    3. The broker is back (its retained configs kept); the daemon starts with the reloaded config:
       empty retained configs arrive for every entity of cam1 and cam2, so Home Assistant has no
       ghosts, and cam0's configs stay."""
    port = free_port()
    broker: Mosquitto = make_mosquitto(port, persistent=True)
    full, reduced = config(port, cameras=3), config(port, cameras=1)
    gone = {d.topic for d in discovery_messages(full)} - {d.topic for d in discovery_messages(reduced)}
    assert len(gone) == 8
    with (
        Subscriber(broker.host, port, "homeassistant/#") as sub,
        daemon_parts(full, tmp_path) as (outbox, publisher, discovery),
    ):
        wait_until(lambda: gone <= {m.topic for m in sub.messages}, 15, "the configs of cam1 and cam2")
        wait_until(lambda: outbox.pending == 0, 15, "the outbox emptied")
        broker.stop()
        wait_until(lambda: not publisher.connected, 15, "the publisher noticing the broker is gone")
        discovery.update(reduced)  # what the daemon does on a reload
    broker.start()
    with Subscriber(broker.host, port, "homeassistant/#") as sub:

        def retained() -> dict[str, bytes]:
            return {m.topic: m.payload for m in sub.messages if m.retain}

        # the ghosts: configs of the removed cameras, still retained before the restart
        wait_until(lambda: gone <= set(retained()), 15, "the retained configs of cam1 and cam2")
        assert all(retained()[t] for t in gone)
        sub.clear()
        with daemon_parts(reduced, tmp_path):
            wait_until(
                lambda: {m.topic for m in sub.messages if m.payload == b""} == gone,
                15,
                "an empty retained config for every removed entity",
            )
        assert all(m.payload for m in sub.messages if m.topic not in gone)


def test_dropping_pahos_copies_frees_its_in_flight_window(make_mosquitto: Any) -> None:
    """1. A paho client (default window of 20) publishes 25 QoS 1 messages in on_connect: 20 are sent
       and counted in flight, 5 wait.
    2. Delivery's drop of paho's copies runs right after, as at every CONNACK.
    3. A QoS 1 message published next is sent and acknowledged: the drop left no slot held by
       messages paho no longer tracks (paho's own drop_out_messages() does)."""
    port = free_port()
    broker: Mosquitto = make_mosquitto(port)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="vs-window")
    connected = threading.Event()

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        for i in range(25):
            c.publish(f"w/{i}", b"x", qos=1)
        _drop_paho_copies(c)
        connected.set()

    client.on_connect = on_connect
    client.connect(broker.host, port)
    client.loop_start()
    try:
        assert connected.wait(10)
        info = client.publish("w/after", b"y", qos=1)
        info.wait_for_publish(5)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def test_the_daemon_with_ten_cameras_and_two_rules_announces_and_delivers(
    tmp_path: Path, rtsp_server: Any, mosquitto: Mosquitto, model_path: Path
) -> None:
    """The reported case, with the real daemon: Home Assistant on, 10 cameras x 2 rules (40 configs,
    twice paho's default window of 20).
    1. One camera plays the street clip; nine point at a port where nothing listens (offline).
    2. `{prefix}/status` goes `online`, every camera's status and every config arrive.
    3. A person event of the street camera arrives, and the outbox drains (pending back to 0)."""
    prefix = "iha10"
    dead = free_port()
    cams = [{"name": "street", "url": rtsp_server.url("street1"), "detect_fps": 5}] + [
        {"name": f"cam{i}", "url": f"rtsp://127.0.0.1:{dead}/cam{i}"} for i in range(1, 10)
    ]
    rules = [
        {"name": name, "labels": ["person"], "end_after_s": 1.0, "cooldown_s": 0}
        for name in ("person", "people")
    ]
    cfg = base_config(model_path, mosquitto.port, free_port(), prefix, cams)
    cfg["model"]["classes"] = ["person"]
    cfg["mqtt"] |= {"home_assistant": True, "discovery_prefix": f"{prefix}-ha"}
    cfg |= {"state_dir": str(tmp_path / "state"), "alerts": rules}
    wanted = {d.topic for d in discovery_messages(Config.model_validate(cfg))}
    assert len(wanted) == 40
    with (
        Subscriber(mosquitto.host, mosquitto.port, "#") as sub,
        DaemonProcess(cfg, tmp_path) as daemon,
    ):
        sub.wait_for(lambda m: m.topic == f"{prefix}/status" and m.payload == b"online", timeout=60)
        statuses = {f"{prefix}/{c['name']}/status" for c in cams}
        wait_until(lambda: statuses <= {m.topic for m in sub.messages}, 30, "every camera's status")
        wait_until(lambda: wanted <= {m.topic for m in sub.messages}, 30, "every discovery config")
        sub.wait_for(lambda m: m.topic == f"{prefix}/street/events", timeout=120)
        wait_until(lambda: daemon.metric("vistream_outbox_pending") == 0, 30, "the outbox drained")
        assert daemon.terminate()[0] == 0
