"""samples/ as users run them, so they cannot rot: the sample config validates, the alerts subscriber
works against a real Mosquitto, and the Home Assistant automation names entities vistream's discovery
really creates.

The subscriber talks to the broker directly here (events are published by the test); running it
against the live daemon is the end-to-end test's job.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml
from support.mosquitto import Mosquitto

from vistream.config import load_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples"
SUBSCRIBER = SAMPLES / "alerts_subscriber.py"
CONFIG = SAMPLES / "config.yaml"
AUTOMATION = SAMPLES / "home_assistant" / "automation.yaml"


class SubscriberProcess:
    """samples/alerts_subscriber.py as a subprocess; its stdout and stderr lines collected as they come."""

    def __init__(self, broker: Mosquitto, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SUBSCRIBER), "--host", broker.host, "--port", str(broker.port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe: Any, lines: list[str]) -> None:
        for line in pipe:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_stderr(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.stderr:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"no {text!r} on the subscriber's stderr:\n" + "\n".join(self.stderr))
                self._changed.wait(min(left, 0.2))

    def wait(self, timeout: float = 30.0) -> int:
        rc = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)

    @property
    def output(self) -> str:
        return "stdout:\n" + "\n".join(self.stdout) + "\nstderr:\n" + "\n".join(self.stderr)

    def event_lines(self) -> list[str]:
        return [line for line in self.stdout if " id " in line]


@pytest.fixture
def subscribers() -> Iterator[list[SubscriberProcess]]:
    """Subscriber processes a test started: none outlives it."""
    started: list[SubscriberProcess] = []
    yield started
    for sub in started:
        sub.kill()


def publish(broker: Mosquitto, messages: list[tuple[str, bytes, bool]]) -> None:
    """Publish (topic, payload, retain) with QoS 1 from a plain paho client; return once all are acked."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for topic, payload, retain in messages:
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def event(kind: str, event_id: str, prefix: str, **changes: Any) -> dict[str, Any]:
    """An event payload as the daemon publishes it (a person-in-zone rule on camera `street`)."""
    doc: dict[str, Any] = {
        "type": kind,
        "id": event_id,
        "camera": "street",
        "rule": "person_on_street",
        "label": "person",
        "track_id": 17,
        "zone": "near_street",
        "started_at": 1763700000.5,
        "ended_at": 1763700006.0 if kind == "end" else None,
        "max_confidence": 0.91,
        "box": [412.0, 600.5, 530.0, 1010.0],
        "count": 1,
        "snapshot": f"{prefix}/street/person_on_street/snapshot",
    }
    return {**doc, **changes}


def unique(name: str) -> str:
    """Prefixes and client ids of their own: the session broker is shared by every test."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_sample_config_is_valid(samples_dir: Path) -> None:
    """1. `vistream check-config samples/config.yaml` exits 0.
    2. Loaded, it has the three rules on the cameras they are meant for, with zone, line and count."""
    r = subprocess.run(
        [sys.executable, "-m", "vistream", "check-config", "samples/config.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stdout + r.stderr

    cfg = load_config(CONFIG)
    assert {c.name: Path(c.url).name for c in cfg.cameras} == {
        "street": "street-1080p.mp4",
        "crowd": "crowd-480p.mp4",
    }
    assert {rule.name: cfg.rule_cameras(rule) for rule in cfg.alerts} == {
        "person_on_street": ["street"],
        "people_crossing": ["crowd"],
        "crowd_gathering": ["crowd"],
    }
    rules = {rule.name: rule for rule in cfg.alerts}
    assert rules["person_on_street"].zone == "near_street" and rules["person_on_street"].min_duration_s == 1
    assert rules["people_crossing"].line == "midline" and rules["people_crossing"].direction == "both"
    assert rules["crowd_gathering"].zone == "centre" and rules["crowd_gathering"].min_count == 5
    assert all(rule.labels == ["person"] for rule in cfg.alerts)
    # The zone covers the lower half of the street view (the integration tests' scenario).
    assert sorted(map(tuple, cfg.cameras[0].zones["near_street"])) == [(0, 0.5), (0, 1), (1, 0.5), (1, 1)]
    assert cfg.state_dir == SAMPLES / "state" and cfg.mqtt.home_assistant


def test_subscriber_prints_events_once_and_saves_snapshots(
    mosquitto: Mosquitto, subscribers: list[SubscriberProcess], tmp_path: Path
) -> None:
    """1. A retained JPEG waits on `{prefix}/street/person_on_street/snapshot`.
    2. The subscriber starts and subscribes; a message that is not JSON, a start, the same start
       again (a redelivery), an update, that update again, a second update, an end and the start of
       a line event on another camera are published with QoS 1.
    3. It reports the bad message, prints start, update, update, end, start once each, in order, and
       exits 0 after `--count 5`.
    4. The snapshot was saved as `{camera}_{rule}.jpg`, decodes, and the start names that file."""
    prefix, event_id = unique("samples"), str(uuid.uuid4())
    picture = np.zeros((360, 640, 3), np.uint8)
    cv2.rectangle(picture, (100, 80), (220, 300), (0, 255, 0), 3)
    jpeg = cv2.imencode(".jpg", picture)[1].tobytes()
    publish(mosquitto, [(f"{prefix}/street/person_on_street/snapshot", jpeg, True)])

    snapshots = tmp_path / "snapshots"
    sub = SubscriberProcess(
        mosquitto,
        *("--prefix", prefix, "--client-id", unique("sub"), "--snapshots", str(snapshots)),
        *("--count", "5", "--timeout", "30"),
    )
    subscribers.append(sub)
    sub.wait_stderr("subscribed to")

    start = event("start", event_id, prefix)
    update = event("update", event_id, prefix, max_confidence=0.95)
    update2 = event("update", event_id, prefix, max_confidence=0.97, box=[420.0, 610.0, 540.0, 1020.0])
    end = event("end", event_id, prefix, max_confidence=0.97)
    crossing = {
        **event("start", str(uuid.uuid4()), prefix, camera="crowd", rule="people_crossing", track_id=3),
        **{"line": "midline", "direction": "in", "snapshot": None},
    }
    del crossing["zone"]
    sequence = [start, start, update, update, update2, end, crossing]
    published = [(f"{prefix}/events", json.dumps(e).encode(), False) for e in sequence]
    publish(mosquitto, [(f"{prefix}/events", b"not json", False), *published])

    assert sub.wait(30) == 0, sub.output
    lines = sub.event_lines()
    assert [line.split()[1] for line in lines] == ["START", "UPDATE", "UPDATE", "END", "START"], sub.output
    assert all(event_id in line and "street/person_on_street" in line for line in lines[:4])
    assert "person #17" in lines[0] and "zone near_street" in lines[0]
    assert "conf 0.97" in lines[2] and "lasted 5.5 s" in lines[3]
    assert "crowd/people_crossing" in lines[4] and "line midline (in)  crossings 1" in lines[4]
    assert any("ignored a malformed event" in line for line in sub.stderr), sub.output

    saved = snapshots / "street_person_on_street.jpg"
    assert f"snapshot {saved}" in lines[0]
    assert any(line.startswith(f"saved snapshot {saved} (") for line in sub.stdout), sub.output
    decoded = cv2.imdecode(np.frombuffer(saved.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape == picture.shape


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_subscriber_gets_events_published_while_away(
    mosquitto: Mosquitto, subscribers: list[SubscriberProcess], stop_signal: signal.Signals
) -> None:
    """1. The subscriber connects once with its fixed client id (a new persistent session) and
       subscribes; Ctrl-C (or SIGTERM) stops it with exit status 0.
    2. A start and an end event are published with QoS 1 while it is away.
    3. Started again with the same client id, it resumes the session and prints both."""
    prefix, client_id, event_id = unique("samples"), unique("sub"), str(uuid.uuid4())
    args = ("--prefix", prefix, "--client-id", client_id)

    first = SubscriberProcess(mosquitto, *args)
    subscribers.append(first)
    assert "new session" in first.wait_stderr("connected to")
    first.wait_stderr("subscribed to")  # printed on the SUBACK: the broker holds the subscription
    first.proc.send_signal(stop_signal)
    assert first.wait(10) == 0, first.output
    assert first.event_lines() == []

    away = [event("start", event_id, prefix), event("end", event_id, prefix)]
    publish(mosquitto, [(f"{prefix}/events", json.dumps(e).encode(), False) for e in away])

    second = SubscriberProcess(mosquitto, *args, "--count", "2", "--timeout", "20")
    subscribers.append(second)
    assert "resumed the session" in second.wait_stderr("connected to")
    assert second.wait(30) == 0, second.output
    assert [line.split()[1] for line in second.event_lines()] == ["START", "END"], second.output
    assert all(event_id in line for line in second.event_lines())


def test_subscriber_password_file(
    make_mosquitto: Callable[..., Mosquitto], subscribers: list[SubscriberProcess], tmp_path: Path
) -> None:
    """1. A broker that only lets user `alerts` in.
    2. With a wrong password in `--password-file` the subscriber exits 2 and names the refusal.
    3. With the right one (and its trailing newline) it connects and subscribes."""
    broker = make_mosquitto(users={"alerts": "s3cret"})
    secret = tmp_path / "password"

    secret.write_text("wrong\n")
    refused = SubscriberProcess(broker, "--username", "alerts", "--password-file", str(secret))
    subscribers.append(refused)
    assert refused.wait(20) == 2, refused.output
    assert any("refused the connection" in line for line in refused.stderr), refused.output

    secret.write_text("s3cret\n")
    accepted = SubscriberProcess(broker, "--username", "alerts", "--password-file", str(secret))
    subscribers.append(accepted)
    accepted.wait_stderr("subscribed to")
    accepted.proc.terminate()
    assert accepted.wait(10) == 0, accepted.output


ENTITY_RE = re.compile(r"(?<![a-z0-9_])(?:binary_sensor|sensor|image)\.[a-z0-9_]+")


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def test_home_assistant_automation_names_discovered_entities(samples_dir: Path) -> None:
    """1. samples/home_assistant/automation.yaml parses as a list of automations.
    2. Every binary_sensor, sensor and image entity id it names (in keys, values and templates) is a
       `default_entity_id` of the discovery messages the daemon publishes for samples/config.yaml.
    3. The first one triggers on the street's person rule and sends that rule's snapshot."""
    from vistream.outputs.homeassistant import discovery_messages  # here: the other tests run without it

    automations = yaml.safe_load(AUTOMATION.read_text())
    assert isinstance(automations, list) and automations
    assert all({"id", "alias", "triggers", "actions"} <= set(a) for a in automations)

    discovered = {json.loads(d.payload)["default_entity_id"] for d in discovery_messages(load_config(CONFIG))}
    named = {match for text in strings(automations) for match in ENTITY_RE.findall(text)}
    assert named, "the automations name no entity"
    assert named <= discovered, (
        f"not discovered: {sorted(named - discovered)}; discovered: {sorted(discovered)}"
    )

    person = automations[0]
    assert person["triggers"][0]["entity_id"] == "binary_sensor.vistream_street_person_on_street"
    assert person["triggers"][0]["to"] == "on"
    notify = next(a for a in person["actions"] if str(a.get("action", "")).startswith("notify."))
    image = notify["data"]["data"]["image"]
    assert image == "/api/image_proxy/image.vistream_street_person_on_street_snapshot"
