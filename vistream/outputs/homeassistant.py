"""Home Assistant MQTT discovery: the daemon's alerts appear in Home Assistant without any YAML there.

One device per daemon (its `client_id`); per camera and rule a `binary_sensor` on the rule's
`active` topic and an `image` on its snapshot topic; per line and direction a `sensor` on the
counter. Every entity is available only while `{prefix}/status` is `online`; with `--shard K/N`
(N > 1) while `{prefix}/daemons/{client_id}-{K}/status` of the shard serving its camera is. Every shard
announces every camera's entities (the same retained configs), so a camera that moves to another shard
keeps its entity ids and nothing a shard removes is another shard's. The configs are
retained and published again on every connect (the broker may have restarted and lost them);
configs of rules, lines and cameras that left the config file are removed with an empty retained
message, as Home Assistant's discovery protocol asks. Both go through the durable outbox, sent in
order with the alerts by its Delivery.

Entity ids are predictable so automations can name them: `binary_sensor.{client_id}_{camera}_{rule}`,
`image.{client_id}_{camera}_{rule}_snapshot`, `sensor.{client_id}_{camera}_{line}_{direction}`
(Home Assistant turns `-` into `_`).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass

from vistream import __version__
from vistream.config.models import Config
from vistream.ops.shard import Shard, daemon_topic, owner
from vistream.outputs.outbox import Message, Outbox, OutboxUnavailable

log = logging.getLogger(__name__)

DIRECTIONS = ("in", "out")
STATE_KEY = "homeassistant/topics"  # the discovery topics the last run published (JSON list)
KIND = "discovery"  # the outbox kind of configs and removals (a latest-state kind)


@dataclass(frozen=True)
class Discovery:
    topic: str
    payload: bytes


def discovery_messages(cfg: Config, shard: Shard | None = None) -> list[Discovery]:
    """The retained config message of every entity this config has (`cfg` with every camera, and the
    client id without the shard's `-K`)."""
    prefix, node = cfg.mqtt.topic_prefix, _slug(cfg.mqtt.client_id)
    device = {
        "identifiers": [f"vistream_{node}"],
        "name": cfg.mqtt.client_id,
        "manufacturer": "vistream",
        "model": "vistream video analytics daemon",
        "sw_version": __version__,
    }
    base = {"device": device, "payload_available": "online", "payload_not_available": "offline"}
    out: list[Discovery] = []

    def availability(camera: str) -> str:
        if shard is None or not shard.active:
            return f"{prefix}/status"
        return daemon_topic(
            prefix, Shard(owner(camera, shard.count), shard.count).client_id(cfg.mqtt.client_id)
        )

    def add(component: str, object_id: str, name: str, extra: dict[str, object], camera: str) -> None:
        unique = f"{node}_{object_id}"
        doc = {
            **base,
            "availability": [{"topic": availability(camera)}],
            "name": name,
            "unique_id": unique,
            "default_entity_id": f"{component}.{unique}",
            **extra,
        }
        topic = f"{cfg.mqtt.discovery_prefix}/{component}/{node}/{object_id}/config"
        out.append(Discovery(topic, json.dumps(doc, separators=(",", ":")).encode()))

    for rule in cfg.alerts:
        for camera in cfg.rule_cameras(rule):
            object_id = _slug(f"{camera}_{rule.name}")
            add(
                "binary_sensor",
                object_id,
                f"{camera} {rule.name}",
                {
                    "state_topic": f"{prefix}/{camera}/{rule.name}/active",
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "device_class": "occupancy" if rule.line is None else "motion",
                },
                camera,
            )
            add(
                "image",
                f"{object_id}_snapshot",
                f"{camera} {rule.name} snapshot",
                {"image_topic": f"{prefix}/{camera}/{rule.name}/snapshot", "content_type": "image/jpeg"},
                camera,
            )
    for cam in cfg.enabled_cameras:
        for line in cam.lines:
            for direction in DIRECTIONS:
                add(
                    "sensor",
                    _slug(f"{cam.name}_{line}_{direction}"),
                    f"{cam.name} {line} {direction}",
                    {
                        "state_topic": f"{prefix}/{cam.name}/{line}/{direction}/count",
                        "state_class": "total_increasing",
                        "icon": "mdi:counter",
                    },
                    cam.name,
                )
    return out


def removals(previous: list[str], current: list[Discovery]) -> list[Discovery]:
    """Empty retained configs for topics published before that this config no longer has."""
    keep = {d.topic for d in current}
    return [Discovery(topic, b"") for topic in previous if topic not in keep]


def _slug(text: str) -> str:
    return text.replace("-", "_").replace(".", "_").lower()


class DiscoveryPublisher:
    """Puts the discovery configs (and removals) in the outbox, retained, QoS 1, kind "discovery".

    Through the outbox rather than straight through paho, so discovery and alerts share one
    publishing path and one window: configs published by a connection listener before the outbox's
    Delivery dropped paho's copies held paho's in-flight slots for good, and with 20 or more of them
    (10 cameras x 1 rule) nothing QoS 1 went out any more, `online` included. In the outbox a
    removal is durable like an event: a daemon stopped before it connected still removes the
    entities at its next connection. A newer config or removal of a topic replaces an unsent older
    one (the outbox's latest-state kinds).

    `update()` writes the configs, the removals and the list of topics (the outbox's state table,
    so entities that left the config are removed even after a restart) in one transaction.
    `announce()` (the Delivery's `on_connect` hook) adds the configs again on every connection:
    the broker may have lost its retained messages (a restart without persistence). An outbox that
    cannot be written (locked, read-only, full: `OutboxUnavailable`, which it logs and shows) keeps
    the update in memory: `flush()`, called by the daemon's loop and by `announce()`, writes it once
    the outbox takes it, so neither the boot nor a reload fails on it, and no removal is lost.
    """

    def __init__(self, cfg: Config, outbox: Outbox, shard: Shard | None = None) -> None:
        """`cfg`: the whole config, every shard's cameras (see `discovery_messages`)."""
        self.outbox, self.shard = outbox, shard
        self.messages: list[Discovery] = []  # the configs of the entities that exist now
        # update() (main thread) and announce() (Delivery's) add in turn: an announce that read the
        # configs before a reload and added them after it would undo the reload's removals.
        self._lock = threading.Lock()
        # Configs and removals of the last update not written yet (the outbox refused them), with
        # the topic list that goes with them; None when everything is written.
        self._unwritten: tuple[list[Discovery], str] | None = None
        try:
            previous = json.loads(outbox.get_state(STATE_KEY) or "[]")
        except OutboxUnavailable:  # the last run's topics unreadable: remove none rather than stop
            previous = []
        self.update(cfg, previous)

    def update(self, cfg: Config, previous: list[str] | None = None) -> None:
        """The entities of `cfg` (at start, or after a reload), and removals of the others."""
        current = discovery_messages(cfg, self.shard)
        with self._lock:
            if previous is None:
                previous = [d.topic for d in self.messages]
            gone = removals(previous, current)
            if gone:
                log.info("Home Assistant: removing %d entities no longer configured", len(gone))
            if self._unwritten is not None:  # an earlier update's removals still go out
                kept = {d.topic for d in current}
                gone += [d for d in self._unwritten[0] if not d.payload and d.topic not in kept]
            self._unwritten = (gone + current, json.dumps([d.topic for d in current]))
            self.messages = current
            self._write_unwritten()

    def flush(self) -> bool:
        """Write what an update could not; whether nothing is left unwritten."""
        with self._lock:
            return self._write_unwritten()

    def announce(self) -> None:
        """Every current config again (on every connection), after what an update left unwritten."""
        with self._lock:
            if self._write_unwritten():
                self.outbox.add_many(_rows(self.messages))

    def _write_unwritten(self) -> bool:
        if self._unwritten is None:
            return True
        messages, topics = self._unwritten
        try:
            self.outbox.add_many(_rows(messages), state={STATE_KEY: topics})
        except OutboxUnavailable:  # logged and shown by the outbox; flush() tries again
            return False
        self._unwritten = None
        return True


def _rows(messages: list[Discovery]) -> list[Message]:
    return [Message("", d.topic, d.payload, retain=True, kind=KIND) for d in messages]
