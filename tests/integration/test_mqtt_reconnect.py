"""The MQTT publisher reconnects within seconds of a broker's return, however long it was away."""

from __future__ import annotations

import time
from typing import Any

import pytest
from support.mosquitto import Mosquitto, Subscriber
from support.procs import free_port
from support.waiting import wait_until

from vistream.config.models import MqttConfig
from vistream.outputs.mqtt import MqttPublisher

pytestmark = [pytest.mark.integration, pytest.mark.serial]

# Long enough for a doubling backoff to outgrow 5 s: from 1 s, the attempts come 1, 3, 7, 15, 31 s
# after the loss, so with the former 30 s cap (or paho's default 120 s) a broker back at 16 s waits
# until 31 s. Capped at 4 s, the attempts come every 4 s from 7 s on, whatever the outage's length.
DOWN_S = 16.0
BACK_WITHIN_S = 5.0


def test_a_broker_back_after_a_long_outage_is_reconnected_within_5s(make_mosquitto: Any) -> None:
    """1. The publisher is connected to a private broker.
    2. The broker stops for 16 s (the publisher's backoff grows meanwhile).
    3. The broker starts again on the same port: the publisher is connected, and its
       `{prefix}/status` `online` has arrived, within 5 s."""
    port = free_port()
    broker: Mosquitto = make_mosquitto(port)
    publisher = MqttPublisher(MqttConfig(port=port, topic_prefix="rc", client_id="vs-reconnect"))
    publisher.start()
    try:
        wait_until(lambda: publisher.connected, 15, "the first connection")
        broker.stop()
        wait_until(lambda: not publisher.connected, 15, "the publisher noticing the broker is gone")
        time.sleep(DOWN_S)
        broker.start()
        back = time.monotonic()
        with Subscriber(broker.host, port, "rc/status") as sub:
            online = sub.wait_for(lambda m: m.payload == b"online" and m.timestamp >= back, timeout=40)
            wait_until(lambda: publisher.connected, 5, "connected")
        took = online.timestamp - back
        print(f"\nbroker down {DOWN_S:.0f} s: `online` {took:.1f} s after its return")
        assert took <= BACK_WITHIN_S
    finally:
        publisher.stop(1.0)
