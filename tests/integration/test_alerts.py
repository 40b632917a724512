"""Alerts end to end with real parts: RTSP cameras, Mosquitto, the model, the daemon as a subprocess.

Zones, lines and rules on the sample clips give events with snapshots and line counters; Home
Assistant discovery names topics that carry values; a broker outage and a SIGKILLed daemon lose no
event, keep each camera's order, and the line counters go on from where they were.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from support.daemon import DaemonProcess, base_config
from support.mosquitto import Message, Mosquitto, Subscriber
from support.procs import free_port
from support.rtsp_server import RtspServer
from support.waiting import wait_until

pytestmark = pytest.mark.integration

LOWER_HALF = [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]
MIDLINE = [[0.02, 0.5], [0.98, 0.5]]  # across the crowd clip's plaza; `in` is walking down the picture


def alert_config(
    model: Path, mqtt_port: int, prefix: str, state_dir: Path, cameras: list[dict], alerts: list[dict]
) -> dict:
    cfg = base_config(model, mqtt_port, free_port(), prefix, cameras)
    cfg["model"]["classes"] = ["person"]
    return cfg | {"state_dir": str(state_dir), "alerts": alerts}


def crowd_camera(rtsp: RtspServer) -> dict:
    return {"name": "crowd", "url": rtsp.url("crowd1"), "detect_fps": 5, "lines": {"midline": MIDLINE}}


def events(sub: Subscriber, topic: str) -> list[dict[str, Any]]:
    return [m.json() for m in sub.messages if m.topic == topic]


def retained_values(sub: Subscriber, topic: str, live: bool = False) -> list[bytes]:
    """Payloads on a retained topic; `live`: only as published, not the broker's replays on (re)subscribe."""
    return [m.payload for m in sub.messages if m.topic == topic and not (live and m.retain)]


def test_zone_and_line_events_with_snapshots_and_home_assistant(
    tmp_path: Path, rtsp_server: RtspServer, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. Two RTSP cameras: the street clip with a zone over its lower half and a person rule,
       the crowd clip with a line across the plaza and a line rule; Home Assistant discovery on.
    2. The street rule gives a start and an end event of one track; the start names the snapshot
       topic, whose retained JPEG decodes, is at most 1280 px wide and has the box inside it.
    3. The crowd line counts crossings in both directions; its counters are retained values.
    4. Detections carry track ids; /metrics counts the events per camera and rule.
    5. Every discovery config parses as JSON and its state/image topic carries a value."""
    prefix = "ialerts"
    cams = [
        {"name": "street", "url": rtsp_server.url("street1"), "detect_fps": 5, "zones": {"near": LOWER_HALF}},
        crowd_camera(rtsp_server),
    ]
    rules = [
        {"name": "person_near", "labels": ["person"], "zone": "near", "min_duration_s": 0.5,
         "end_after_s": 1.0, "cooldown_s": 0},
        {"name": "crossing", "line": "midline", "end_after_s": 1.0, "cooldown_s": 0},
    ]  # fmt: skip
    cfg = alert_config(model_path, mosquitto.port, prefix, tmp_path / "state", cams, rules)
    cfg["mqtt"]["home_assistant"] = True
    cfg["mqtt"]["discovery_prefix"] = f"{prefix}-ha"
    with (
        Subscriber(mosquitto.host, mosquitto.port, "#") as sub,
        DaemonProcess(cfg, tmp_path) as daemon,
    ):

        def street_done() -> bool:
            evs = events(sub, f"{prefix}/street/events")
            started = {e["id"] for e in evs if e["type"] == "start"}
            return any(e["type"] == "end" and e["id"] in started for e in evs)

        def crowd_counted() -> bool:
            return all(
                retained_values(sub, f"{prefix}/crowd/midline/{d}/count")[-1:] not in ([], [b"0"])
                for d in ("in", "out")
            )

        wait_until(street_done, 120, "a street event to start and end")
        wait_until(crowd_counted, 60, "crossings of the crowd line in both directions")

        street = events(sub, f"{prefix}/street/events")
        start = next(e for e in street if e["type"] == "start")
        assert start["rule"] == "person_near" and start["zone"] == "near" and start["label"] == "person"
        assert isinstance(start["track_id"], int) and start["ended_at"] is None
        assert start["snapshot"] == f"{prefix}/street/person_near/snapshot"
        assert start["max_confidence"] >= 0.5
        ends = [e for e in street if e["type"] == "end"]
        assert all(e["ended_at"] >= e["started_at"] for e in ends)
        assert start in events(sub, f"{prefix}/events")  # also on the all-cameras topic

        jpeg = retained_values(sub, start["snapshot"])
        assert jpeg, "no snapshot was published"
        image = cv2.imdecode(np.frombuffer(jpeg[0], np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[1] <= 1280
        scale = image.shape[1] / 1920
        x1, y1, x2, y2 = (v * scale for v in start["box"])
        assert 0 <= x1 < x2 <= image.shape[1] and 0 <= y1 < y2 <= image.shape[0]

        crossing = [e for e in events(sub, f"{prefix}/crowd/events") if e["rule"] == "crossing"]
        assert crossing and crossing[0]["line"] == "midline" and crossing[0]["direction"] == "both"

        detections = [m.json() for m in sub.messages if m.topic == f"{prefix}/street/detections"]
        ids = [o["track_id"] for d in detections for o in d["objects"]]
        assert any(isinstance(i, int) for i in ids)

        assert daemon.wait_metric("vistream_events_total", 1, camera="street", rule="person_near") >= 1

        configs = [m for m in sub.messages if m.topic.startswith(f"{prefix}-ha/")]
        kinds = {m.topic.split("/")[1] for m in configs}
        assert kinds == {"binary_sensor", "image", "sensor"}
        for m in configs:
            doc = m.json()
            assert doc["availability"] == [{"topic": f"{prefix}/status"}]
            state = doc.get("state_topic") or doc["image_topic"]
            if m.topic.split("/")[1] != "image":  # snapshots exist once an event started
                assert retained_values(sub, state), f"{state} carries no value"
        assert daemon.terminate()[0] == 0


def read_outbox(db: Path, prefix: str) -> tuple[list[tuple[int, str, str]], dict[str, str]]:
    """The events waiting in the outbox as (row id, event id, type), and the state table; read as
    another process would, while the daemon writes."""
    try:
        # closing(): `with sqlite3.connect()` alone commits but leaves the connection (and the -shm
        # file it holds) open until it is collected.
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            rows = conn.execute(
                "SELECT id, payload FROM outbox WHERE topic = ? ORDER BY id", (f"{prefix}/events",)
            ).fetchall()
            state = dict(conn.execute("SELECT key, value FROM state").fetchall())
    except sqlite3.OperationalError:  # not created yet
        return [], {}
    return [(row_id, json.loads(p)["id"], json.loads(p)["type"]) for row_id, p in rows], state


def first_arrivals(messages: list[Message], topic: str) -> list[dict[str, Any]]:
    """The events in the order they first arrived; re-deliveries (at least once) dropped."""
    seen: set[bytes] = set()
    out = []
    for m in messages:
        if m.topic == topic and m.payload not in seen:
            seen.add(m.payload)
            out.append(m.json())
    return out


def test_broker_outage_and_killed_daemon_lose_no_event(
    tmp_path: Path, rtsp_server: RtspServer, make_mosquitto: Callable[..., Mosquitto], model_path: Path
) -> None:
    """1. A daemon counts people crossing a line on the crowd clip; a subscriber with a persistent
       session listens on a broker that keeps sessions across restarts.
    2. The broker stops for 20 s while events go on: they wait in the outbox (read meanwhile).
    3. With events still pending, the daemon is SIGKILLed; the broker comes back; the daemon is
       started again on the same state directory.
    4. Every event that was in the outbox reaches the subscriber, in the outbox's order; the
       events the killed daemon left open are ended (reason `restart`); the line counter goes on
       from where it was and never falls back."""
    prefix = "ioutage"
    broker = make_mosquitto(persistent=True)
    state_dir = tmp_path / "state"
    rules = [{"name": "crossing", "line": "midline", "end_after_s": 1.0, "cooldown_s": 0}]
    cfg = alert_config(model_path, broker.port, prefix, state_dir, [crowd_camera(rtsp_server)], rules)
    db = state_dir / "outbox.sqlite3"
    counter = f"{prefix}/crowd/midline/in/count"
    sub_id = "ioutage-sub"
    with Subscriber(broker.host, broker.port, f"{prefix}/#", client_id=sub_id, clean_session=False) as sub:
        sub.wait_subscribed()
        for run in ("run1", "run2"):
            (tmp_path / run).mkdir()
        with DaemonProcess(cfg, tmp_path / "run1") as first:
            wait_until(lambda: len(events(sub, f"{prefix}/events")) >= 3, 120, "the first events")
            broker.stop()
            outage_started = time.monotonic()
            written: set[tuple[int, str, str]] = set()
            depth = 0
            while time.monotonic() - outage_started < 20:
                rows, _ = read_outbox(db, prefix)
                depth = max(depth, len(rows))
                written.update(rows)
                time.sleep(0.5)
            assert depth > 0, "no event was produced during the outage"
            assert first.proc is not None
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(10)
        rows, state = read_outbox(db, prefix)
        written.update(rows)
        open_at_kill = {key.removeprefix("open/") for key in state if key.startswith("open/")}
        counter_at_kill = int(state["counter/crowd/midline/in"])
        seen_before = len(retained_values(sub, counter, live=True))
        broker.start()
        sub.wait_subscribed(30)
        with DaemonProcess(cfg, tmp_path / "run2") as second:
            wanted = [(event_id, kind) for _, event_id, kind in sorted(written)]

            def arrived() -> list[tuple[str, str]]:
                return [(e["id"], e["type"]) for e in first_arrivals(sub.messages, f"{prefix}/events")]

            wait_until(lambda: set(wanted) <= set(arrived()), 90, f"the {len(wanted)} events of the outbox")
            order = arrived()
            positions = [order.index(key) for key in wanted]
            assert positions == sorted(positions), "events arrived out of the outbox's order"

            def restart_ends() -> set[str]:
                docs = first_arrivals(sub.messages, f"{prefix}/events")
                return {e["id"] for e in docs if e["type"] == "end" and e.get("reason") == "restart"}

            wait_until(lambda: open_at_kill <= restart_ends(), 30, "ends of the events left open")
            live = lambda: retained_values(sub, counter, live=True)  # noqa: E731
            wait_until(lambda: len(live()) > seen_before, 30, "the counter again")
            after = [int(v) for v in live()[seen_before:]]
            assert min(after) >= counter_at_kill, f"the counter fell back: {after} after {counter_at_kill}"
            assert second.terminate()[0] == 0
    print(f"largest outbox depth during the outage: {depth} event messages; {len(wanted)} delivered")
