"""Home Assistant discovery (vistream/outputs/homeassistant.py): entity ids, topics, removals."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from vistream.config.models import Config
from vistream.outputs.homeassistant import (
    STATE_KEY,
    Discovery,
    DiscoveryPublisher,
    discovery_messages,
    removals,
)
from vistream.outputs.outbox import FILENAME, Outbox


def config(alerts: list[dict], lines: dict | None = None) -> Config:
    return Config.model_validate(
        {
            "mqtt": {"topic_prefix": "home/vs", "client_id": "vs-garage", "home_assistant": True},
            "cameras": [
                {
                    "name": "front-door",
                    "url": "rtsp://h/x",
                    "zones": {"porch": [[0, 0.5], [1, 0.5], [1, 1]]},
                    "lines": lines if lines is not None else {"gate": [[0.5, 0], [0.5, 1]]},
                },
                {"name": "back", "url": "rtsp://h/y", "enabled": False},
            ],
            "alerts": alerts,
        }
    )


def test_entities_per_rule_camera_and_line_direction() -> None:
    """A zone rule on one camera and a line: a binary sensor and an image for the rule, a sensor per
    line direction; ids predictable (`-` -> `_`), states on the daemon's topics, availability bound
    to `{prefix}/status`, one device for the daemon. A disabled camera has no entities."""
    docs = {
        d.topic: json.loads(d.payload)
        for d in discovery_messages(config([{"name": "person", "zone": "porch"}]))
    }
    assert set(docs) == {
        "homeassistant/binary_sensor/vs_garage/front_door_person/config",
        "homeassistant/image/vs_garage/front_door_person_snapshot/config",
        "homeassistant/sensor/vs_garage/front_door_gate_in/config",
        "homeassistant/sensor/vs_garage/front_door_gate_out/config",
    }
    sensor = docs["homeassistant/binary_sensor/vs_garage/front_door_person/config"]
    assert sensor["state_topic"] == "home/vs/front-door/person/active"
    assert (sensor["payload_on"], sensor["payload_off"]) == ("ON", "OFF")
    assert sensor["default_entity_id"] == "binary_sensor.vs_garage_front_door_person"
    assert sensor["availability"] == [{"topic": "home/vs/status"}]
    image = docs["homeassistant/image/vs_garage/front_door_person_snapshot/config"]
    assert image["image_topic"] == "home/vs/front-door/person/snapshot"
    assert image["content_type"] == "image/jpeg"
    counter = docs["homeassistant/sensor/vs_garage/front_door_gate_in/config"]
    assert counter["state_topic"] == "home/vs/front-door/gate/in/count"
    assert counter["state_class"] == "total_increasing"
    assert len({json.dumps(d["device"]) for d in docs.values()}) == 1
    assert len({d["unique_id"] for d in docs.values()}) == len(docs)


def test_entities_no_longer_configured_are_removed() -> None:
    """The last run published a rule and a line that are gone now: their configs are emptied
    (retained, as Home Assistant's discovery asks); what still exists is not touched."""
    before = discovery_messages(config([{"name": "person", "zone": "porch"}]))
    now = discovery_messages(config([{"name": "car", "zone": "porch"}], lines={}))
    gone = removals([d.topic for d in before], now)
    assert all(d.payload == b"" for d in gone)
    assert {d.topic for d in gone} == {d.topic for d in before} - {d.topic for d in now}
    assert len(gone) == 4
    assert removals([d.topic for d in now], now) == []
    assert isinstance(gone[0], Discovery)


def test_configs_and_removals_are_durable_outbox_rows(tmp_path: Path) -> None:
    """1. A run announces a rule and a line; its configs are outbox rows (kind `discovery`, retained,
       QoS 1), with the list of topics in the state table.
    2. The next run (the same outbox file reopened, nothing sent meanwhile) has a different rule and
       no line: the removals of the 4 old entities and the 2 new configs are pending, each topic
       once (a newer value of a topic replaces the unsent older one).
    3. `announce()` (every connection) adds the current configs again, replacing the unsent ones."""
    box = Outbox(tmp_path / FILENAME)
    before = discovery_messages(config([{"name": "person", "zone": "porch"}]))
    DiscoveryPublisher(config([{"name": "person", "zone": "porch"}]), box)
    rows = box.pending_rows(0, 100)
    assert [(r.topic, r.payload) for r in rows] == [(d.topic, d.payload) for d in before]
    assert {(r.kind, r.retain, r.qos) for r in rows} == {("discovery", True, 1)}
    box.close()

    box = Outbox(tmp_path / FILENAME)
    now_cfg = config([{"name": "car", "zone": "porch"}], lines={})
    now = discovery_messages(now_cfg)
    publisher = DiscoveryPublisher(now_cfg, box)
    pending = {r.topic: r.payload for r in box.pending_rows(0, 100)}
    assert pending == {d.topic: b"" for d in before} | {d.topic: d.payload for d in now}
    assert json.loads(box.get_state(STATE_KEY) or "[]") == [d.topic for d in now]
    publisher.announce()
    assert {r.topic: r.payload for r in box.pending_rows(0, 100)} == pending
    box.close()


class PausingOutbox:
    """A real outbox whose next add_many from another thread waits until `go` is set."""

    def __init__(self, box: Outbox) -> None:
        self.box, self.inside, self.go = box, threading.Event(), threading.Event()
        self.pause_in: threading.Thread | None = None

    def get_state(self, key: str) -> str | None:
        return self.box.get_state(key)

    def add_many(self, messages: Any, **kw: Any) -> list[int]:
        if threading.current_thread() is self.pause_in:
            self.inside.set()
            self.go.wait(5)
        return self.box.add_many(messages, **kw)


def test_an_announce_during_a_reload_does_not_undo_its_removals(tmp_path: Path) -> None:
    """1. The delivery thread's announce() has taken the configs (rule `person`) and is adding them.
    2. Meanwhile a reload replaces the rule by `car`: removals of `person`'s entities.
    3. The removals end pending, not replaced by the announce's older configs of the same topics."""
    box = Outbox(tmp_path / FILENAME)
    paused = PausingOutbox(box)
    publisher = DiscoveryPublisher(config([{"name": "person", "zone": "porch"}], lines={}), paused)  # type: ignore[arg-type]
    announcing = threading.Thread(target=publisher.announce)
    paused.pause_in = announcing
    announcing.start()
    assert paused.inside.wait(5)
    reload = threading.Thread(
        target=publisher.update, args=(config([{"name": "car", "zone": "porch"}], lines={}),)
    )
    reload.start()
    reload.join(0.2)
    paused.go.set()
    announcing.join(5)
    reload.join(5)
    pending = {r.topic: r.payload for r in box.pending_rows(0, 100)}
    person = [t for t in pending if "person" in t]
    assert len(person) == 2 and all(pending[t] == b"" for t in person)
    box.close()


def test_an_update_the_outbox_refuses_is_kept_and_written_later(tmp_path: Path) -> None:
    """1. A run announces a rule and a line; then the outbox turns read-only (SQLite's `query_only`,
       as a read-only remount or a full disk would refuse writes).
    2. A reload drops the line and another changes the rule: neither raises (a reload must not
       fail on it, nor the boot) and nothing is written; `flush()` says so.
    3. Writable again: one `flush()` (the daemon's loop) writes the removals of both reloads and
       the configs of the last one, with its topic list."""
    box = Outbox(tmp_path / FILENAME)
    first = discovery_messages(config([{"name": "person", "zone": "porch"}]))
    publisher = DiscoveryPublisher(config([{"name": "person", "zone": "porch"}]), box)
    box.ack_many(r.id for r in box.pending_rows(0, 100))  # delivered
    box._db.execute("PRAGMA query_only = ON")
    publisher.update(config([{"name": "person", "zone": "porch"}], lines={}))
    last_cfg = config([{"name": "car", "zone": "porch"}], lines={})
    publisher.update(last_cfg)
    assert box.pending == 0 and not publisher.flush()
    box._db.execute("PRAGMA query_only = OFF")
    assert publisher.flush()
    last = discovery_messages(last_cfg)
    kept = {d.topic for d in last}
    pending = {r.topic: r.payload for r in box.pending_rows(0, 100)}
    assert pending == {d.topic: b"" for d in first if d.topic not in kept} | {
        d.topic: d.payload for d in last
    }
    assert json.loads(box.get_state(STATE_KEY) or "[]") == [d.topic for d in last]
    box.close()
