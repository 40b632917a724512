#!/usr/bin/env python3
"""Print vistream's alert events as they happen and keep the latest snapshot of every rule.

A starting point to copy: it needs only paho-mqtt (`pip install "paho-mqtt>=2"`).

    python alerts_subscriber.py --host mqtt.lan --snapshots ./snapshots

What it shows about consuming vistream's events:

* Events come on `{prefix}/events` with QoS 1, and QoS 1 means "at least once": after a broker
  outage or a daemon restart the same event can arrive twice. Every event carries a stable `id`,
  so a duplicate is recognised and dropped.
* A persistent session (a fixed client id and clean_session=False) makes the broker keep our
  subscription while we are away and queue the QoS 1 events published meanwhile: they arrive when
  we reconnect. Run one copy per client id; two clients with the same id take turns being kicked off.
* Snapshots are retained JPEGs on `{prefix}/{camera}/{rule}/snapshot`; an event's `snapshot` field
  names that topic. We keep the latest one per camera and rule as `DIR/{camera}_{rule}.jpg`.

Exit status: 0 after Ctrl-C, SIGTERM, `--count` events or `--timeout` (without `--count`);
1 when `--timeout` passed before `--count` events came; 2 when the broker refused the connection
or the subscription.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

SEEN_MAX = 10_000  # event keys remembered for duplicate detection; the oldest are forgotten first


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="localhost", help="broker host (default: localhost)")
    p.add_argument("--port", type=int, default=1883, help="broker port (default: 1883)")
    p.add_argument("--prefix", default="vistream", help="vistream's mqtt.topic_prefix (default: vistream)")
    p.add_argument("--username", help="broker user name")
    p.add_argument("--password-file", type=Path, metavar="PATH", help="file holding the broker password")
    p.add_argument(
        "--client-id",
        default="vistream-alerts-subscriber",
        help="fixed MQTT client id: the broker keeps this client's session (and queues its events) "
        "while it is away; unique per running copy (default: vistream-alerts-subscriber)",
    )
    p.add_argument("--snapshots", type=Path, metavar="DIR", help="save each rule's latest snapshot here")
    p.add_argument("--count", type=int, metavar="N", help="exit after N distinct events")
    p.add_argument("--timeout", type=float, metavar="S", help="exit after S seconds")
    return p.parse_args(argv)


class AlertsSubscriber:
    def __init__(self, args: argparse.Namespace, password: str | None = None) -> None:
        self.args = args
        self.prefix = args.prefix.rstrip("/")
        self.events_topic = f"{self.prefix}/events"
        self.snapshot_topic = f"{self.prefix}/+/+/snapshot"
        self.seen: dict[tuple[str, ...], None] = {}  # a dict keeps insertion order: oldest first
        self.distinct = 0
        self.pending: dict[int, list[str]] = {}  # SUBSCRIBE message id -> its topics, until the SUBACK
        self.exit_code: int | None = None  # set from paho's thread or a signal handler: time to stop

        # clean_session=False + a fixed client id = a persistent session (MQTT 3.1.1).
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id, clean_session=False
        )
        if args.username is not None:
            self.client.username_pw_set(args.username, password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self.on_connect
        self.client.on_connect_fail = self.on_connect_fail
        self.client.on_subscribe = self.on_subscribe
        self.client.on_disconnect = self.on_disconnect
        self.client.on_message = self.on_message

    def run(self) -> int:
        if self.args.snapshots is not None:
            self.args.snapshots.mkdir(parents=True, exist_ok=True)
        deadline = None if self.args.timeout is None else time.monotonic() + self.args.timeout
        # connect_async + loop_start: paho's thread connects, and reconnects after every outage.
        self.client.connect_async(self.args.host, self.args.port, keepalive=30)
        self.client.loop_start()
        try:
            while self.exit_code is None:
                if deadline is not None and time.monotonic() >= deadline:
                    # With --count, a timeout means the events we waited for did not all come.
                    self.exit_code = 1 if self.args.count is not None else 0
                    break
                time.sleep(0.1)
        finally:
            # DISCONNECT goes out after the acknowledgements of what we handled, so the broker
            # does not send those events again; the session (and what comes next) stays queued.
            self.client.disconnect()
            self.client.loop_stop()
        return self.exit_code

    def stop(self, code: int = 0) -> None:
        if self.exit_code is None:
            self.exit_code = code

    # paho calls these from its network thread.

    def on_connect(self, client: mqtt.Client, _userdata: Any, flags: Any, reason: Any, _props: Any) -> None:
        where = f"{self.args.host}:{self.args.port}"
        if reason.is_failure:
            # Refused (bad credentials, client id not allowed): retrying would not help.
            log(f"broker {where} refused the connection: {reason}")
            self.stop(2)
            return
        resumed = (
            "resumed the session: events queued while away follow" if flags.session_present else "new session"
        )
        log(f"connected to {where} as {self.args.client_id} ({resumed})")
        # Subscribe on every connect: harmless when the session kept the subscriptions, needed when not.
        topics = [(self.events_topic, 1)]
        if self.args.snapshots is not None:
            topics.append((self.snapshot_topic, 1))
        result, mid = client.subscribe(topics)
        if result == mqtt.MQTT_ERR_SUCCESS and mid is not None:  # else the connection just dropped again
            self.pending[mid] = [topic for topic, _ in topics]

    def on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, mid: int, reasons: list, _props: Any
    ) -> None:
        # Only the broker's SUBACK says the subscription holds; events published before it are not ours.
        topics = self.pending.pop(mid, [])
        refused = [topic for topic, reason in zip(topics, reasons, strict=False) if reason.is_failure]
        if refused:
            log(f"broker refused the subscription to {', '.join(refused)} (not allowed for this user?)")
            self.stop(2)
        else:
            log("subscribed to " + ", ".join(topics))

    def on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        log(f"cannot reach {self.args.host}:{self.args.port}; retrying")

    def on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if self.exit_code is None:
            log(f"disconnected ({reason}); reconnecting")

    def on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.events_topic:
            self.handle_event(msg.payload)
        elif msg.topic.endswith("/snapshot"):
            self.save_snapshot(msg.topic, msg.payload)

    def handle_event(self, payload: bytes | bytearray) -> None:
        # An exception here would end paho's network thread: a bad message is reported and skipped.
        try:
            event = json.loads(payload)
            key = dedup_key(event)
            line = describe(event, self.snapshot_file(event.get("snapshot")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log(f"ignored a malformed event ({exc!r}): {payload[:200]!r}")
            return
        if key in self.seen:
            return  # a second delivery of an event we already printed
        self.seen[key] = None
        if len(self.seen) > SEEN_MAX:
            del self.seen[next(iter(self.seen))]
        print(line, flush=True)
        self.distinct += 1
        if self.args.count is not None and self.distinct >= self.args.count:
            self.stop(0)

    def snapshot_file(self, topic: str | None) -> Path | None:
        """Where the snapshot published on `topic` is (or will be) saved; None when not saved."""
        if topic is None or self.args.snapshots is None:
            return None
        levels = topic[len(self.prefix) + 1 :].split("/") if topic.startswith(self.prefix + "/") else []
        if len(levels) != 3 or levels[2] != "snapshot":
            return None
        camera, rule, _ = levels
        return self.args.snapshots / f"{camera}_{rule}.jpg"

    def save_snapshot(self, topic: str, jpeg: bytes | bytearray) -> None:
        path = self.snapshot_file(topic)
        if path is None or not jpeg:  # an empty retained message clears the topic: nothing to save
            return
        # Write aside, then rename: a viewer never sees half a picture.
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(jpeg)
        os.replace(tmp, path)
        print(f"saved snapshot {path} ({len(jpeg) / 1024:.0f} KiB)", flush=True)


def dedup_key(event: dict[str, Any]) -> tuple[str, ...]:
    """What makes two deliveries the same event message.

    `id` + `type` is enough for `start` and `end` (one of each per event). An event has many
    `update`s, all with the same id and type, so an update is also told apart by its content: a
    redelivery carries the same content, a newer update does not.
    """
    kind = str(event["type"])
    key: tuple[str, ...] = (str(event["id"]), kind)
    if kind == "update":
        key += (json.dumps(event, sort_keys=True),)
    return key


def describe(event: dict[str, Any], snapshot: Path | None) -> str:
    """One line per event, e.g.
    `07:31:05  START   street/person_on_street  person #17  zone near_street  conf 0.91`."""
    kind = str(event.get("type", "?"))
    # The moment the message is about; updates carry no time of their own, so theirs is now.
    at = {"start": event.get("started_at"), "end": event.get("ended_at")}.get(kind) or time.time()
    parts = [
        datetime.fromtimestamp(float(at)).strftime("%H:%M:%S"),
        f"{kind.upper():<7}",
        f"{event.get('camera')}/{event.get('rule')}",
    ]
    label = event.get("label") or "object"
    if event.get("track_id") is not None:
        parts.append(f"{label} #{event['track_id']}")
    else:
        parts.append(f"{event.get('count')} x {label}")
    if event.get("zone"):
        parts.append(f"zone {event['zone']}")
    if event.get("line"):
        direction = f" ({event['direction']})" if event.get("direction") else ""
        parts.append(f"line {event['line']}{direction}")
        if event.get("count") is not None:  # a line event counts the crossings since it started
            parts.append(f"crossings {event['count']}")
    if event.get("max_confidence") is not None:
        parts.append(f"conf {float(event['max_confidence']):.2f}")
    if kind == "end" and event.get("started_at") is not None and event.get("ended_at") is not None:
        parts.append(f"lasted {float(event['ended_at']) - float(event['started_at']):.1f} s")
    if snapshot is not None and kind == "start":  # the picture is of the start; later messages repeat it
        parts.append(f"snapshot {snapshot}")
    parts.append(f"id {event.get('id')}")
    return "  ".join(parts)


def read_password(path: Path | None) -> str | None:
    if path is None:
        return None
    text = path.read_text()
    return text[:-1] if text.endswith("\n") else text


def log(text: str) -> None:
    """Status lines go to stderr, so stdout carries only events and snapshots (easy to pipe)."""
    print(f"{datetime.now():%H:%M:%S}  {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.password_file is not None and args.username is None:
        log("--password-file needs --username")
        return 2
    try:
        password = read_password(args.password_file)
    except OSError as exc:
        log(f"cannot read the password file: {exc}")
        return 2
    subscriber = AlertsSubscriber(args, password)

    def on_signal(_signum: int, _frame: object) -> None:
        subscriber.stop(0)  # only record it: the main loop notices within 0.1 s and disconnects

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return subscriber.run()


if __name__ == "__main__":
    sys.exit(main())
