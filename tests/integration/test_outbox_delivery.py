"""The durable outbox against a real Mosquitto: broker outages and a killed daemon lose nothing.

`run_outage` is also what benchmarks/outbox_outage.py runs to record its figures.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.mosquitto import Message, Mosquitto, Subscriber
from support.procs import free_port

from vistream.config.models import MqttConfig
from vistream.outputs.delivery import Delivery
from vistream.outputs.mqtt import MqttPublisher
from vistream.outputs.outbox import FILENAME, Outbox

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
PREFIX = "vt"
CAMERAS = ("cam0", "cam1")


@pytest.fixture
def persistent_broker(_mosquitto_available: None) -> Iterator[Mosquitto]:
    """A private broker that keeps clean_session=False sessions across stop()/start()."""
    broker = Mosquitto(persistent=True)
    try:
        yield broker.start()
    finally:
        broker.close()


def first_arrivals(messages: list[Message]) -> dict[str, list[int]]:
    """camera -> event numbers in the order they first arrived (duplicates after the first dropped)."""
    seen: set[int] = set()
    order: dict[str, list[int]] = {cam: [] for cam in CAMERAS}
    for m in messages:
        if m.topic.endswith("/events"):
            event = m.json()
            if event["n"] not in seen:
                seen.add(event["n"])
                order[event["camera"]].append(event["n"])
    return order


def publisher_for(broker: Mosquitto, client_id: str = "vistream-outbox-test") -> MqttPublisher:
    return MqttPublisher(
        MqttConfig(host=broker.host, port=broker.port, client_id=client_id, topic_prefix=PREFIX)
    )


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout} s")
        time.sleep(0.02)


# -- broker outage -------------------------------------------------------------------------------------


@dataclass
class OutageResult:
    rate_hz: float
    outage_s: float
    events_written: int = 0
    events_received: int = 0
    duplicates: int = 0
    missing: list[int] = field(default_factory=list)
    out_of_order: dict[str, int] = field(default_factory=dict)
    max_outbox_depth: int = 0
    backlog_at_restart: int = 0
    restart_to_reconnect_s: float = 0.0  # the publisher's reconnect backoff (paho, 1 s doubling up to 4 s)
    reconnect_to_drained_s: float = 0.0
    restart_to_drained_s: float = 0.0  # broker back -> the last row pending at restart received
    evicted: int = 0
    coalesced: int = 0
    last_counter: str = ""
    counter_received: str = ""


def run_outage(
    broker: Mosquitto,
    state_dir: Path,
    *,
    rate_hz: float = 10.0,
    before_s: float = 3.0,
    outage_s: float = 20.0,
    after_s: float = 3.0,
    drain_timeout_s: float = 90.0,
) -> OutageResult:
    """Events of two cameras (and a retained counter) at `rate_hz` across a broker stop of `outage_s`.

    `broker` must be persistent (the subscriber's session and what was queued for it survive the
    restart), so the subscriber misses nothing whichever side reconnects first.
    """
    result = OutageResult(rate_hz, outage_s)
    ids: dict[int, int] = {}  # event n -> row id
    stop_producing = threading.Event()
    outbox = Outbox(state_dir / FILENAME)
    publisher = publisher_for(broker)
    delivery = Delivery(outbox, publisher)
    sub = Subscriber(
        broker.host, broker.port, f"{PREFIX}/#", client_id="outbox-test-sub", clean_session=False
    )

    def produce() -> None:
        n = 0
        next_t = time.monotonic()
        while not stop_producing.is_set():
            cam = CAMERAS[n % 2]
            event = json.dumps({"n": n, "camera": cam, "type": "start"})
            ids[n] = outbox.add(cam, f"{PREFIX}/{cam}/events", event, kind="event")
            if n % 10 == 0:
                result.last_counter = str(n)
                outbox.add(
                    "cam0", f"{PREFIX}/cam0/gate/in/count", str(n), retain=True, kind="counter",
                    state={"count/cam0/gate/in": str(n)},
                )  # fmt: skip
            result.max_outbox_depth = max(result.max_outbox_depth, outbox.pending)
            n += 1
            next_t += 1.0 / rate_hz
            time.sleep(max(0.0, next_t - time.monotonic()))
        result.events_written = n

    producer = threading.Thread(target=produce, name="producer")
    with sub:
        delivery.start()
        publisher.start()
        try:
            wait_until(lambda: publisher.connected, 10, "publisher connected")
            producer.start()
            time.sleep(before_s)
            broker.stop()
            time.sleep(outage_s)
            broker.start()
            t_restart = time.monotonic()
            backlog = {r.id for r in outbox.pending_rows(0, 10**9) if r.kind == "event"}
            result.backlog_at_restart = len(backlog)
            wait_until(lambda: publisher.connected, 60, "publisher reconnected")
            t_reconnect = time.monotonic()
            time.sleep(after_s)
            stop_producing.set()
            producer.join(5)
            wanted = set(range(result.events_written))

            def all_there() -> bool:
                got = {n for order in first_arrivals(sub.messages).values() for n in order}
                return wanted <= got and outbox.pending == 0

            with contextlib.suppress(TimeoutError):  # reported below as missing
                wait_until(all_there, drain_timeout_s, "every event received")
        finally:
            stop_producing.set()
            delivery.stop(1.0)
            publisher.stop(1.0)
            result.evicted, result.coalesced = outbox.evicted, outbox.coalesced
            outbox.close()
        messages = sub.messages

    events = [m for m in messages if m.topic.endswith("/events")]
    order = first_arrivals(messages)
    got = {n for ns in order.values() for n in ns}
    result.events_received = len(got)
    result.duplicates = len(events) - len(got)
    result.missing = sorted(set(range(result.events_written)) - got)
    result.out_of_order = {cam: sum(a > b for a, b in itertools.pairwise(ns)) for cam, ns in order.items()}
    first_seen: dict[int, float] = {}
    for m in events:
        first_seen.setdefault(ids[m.json()["n"]], m.timestamp)
    if backlog and backlog <= first_seen.keys():
        t_drained = max(first_seen[i] for i in backlog)
        result.restart_to_reconnect_s = round(t_reconnect - t_restart, 3)
        result.reconnect_to_drained_s = round(t_drained - t_reconnect, 3)
        result.restart_to_drained_s = round(t_drained - t_restart, 3)
    counters = [m for m in messages if m.topic.endswith("/count")]
    result.counter_received = counters[-1].payload.decode() if counters else ""
    return result


def test_broker_outage_loses_nothing_and_keeps_order(persistent_broker: Mosquitto, tmp_path: Path) -> None:
    """1. A subscriber with a persistent session on a broker with persistence on (it misses nothing
       while either side reconnects); an outbox + Delivery + the daemon's MqttPublisher.
    2. Events of two cameras at 10/s (and a retained line counter) for 3 s, then the broker is stopped
       for 20 s while production goes on, then started again on the same port, 3 s more.
    3. Every event reaches the subscriber, none missing, each camera's in order (duplicates allowed);
       the outbox ends empty, nothing evicted; the counter topic ends at the newest value.
    Prints the largest outbox depth and the time from broker restart to the last backlog row received.
    """
    r = run_outage(persistent_broker, tmp_path)
    print("\noutbox outage:", json.dumps(asdict(r) | {"missing": len(r.missing)}))
    assert r.events_written > 200
    assert r.missing == []
    assert r.out_of_order == {cam: 0 for cam in CAMERAS}
    assert r.backlog_at_restart >= 150  # the outage really queued rows
    assert r.max_outbox_depth >= r.backlog_at_restart
    assert r.evicted == 0
    assert r.counter_received == r.last_counter


# -- daemon killed with rows pending -------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from vistream.config.models import MqttConfig
    from vistream.outputs.delivery import Delivery
    from vistream.outputs.mqtt import MqttPublisher
    from vistream.outputs.outbox import Outbox

    path, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    outbox = Outbox(path)
    cfg = MqttConfig(host="127.0.0.1", port=port, client_id="vistream-child", topic_prefix="vt")
    publisher = MqttPublisher(cfg)
    delivery = Delivery(outbox, publisher)
    delivery.start()
    publisher.start()
    for n in range(count):
        cam = ("cam0", "cam1")[n % 2]
        row = outbox.add(cam, f"vt/{cam}/events", json.dumps({"n": n, "camera": cam}), kind="event")
        print(row, n, flush=True)
        time.sleep(0.002)
    print("done", flush=True)
    time.sleep(3600)
    """
)


def run_child(path: Path, port: int, count: int, kill_after: int) -> list[int]:
    """Start a producer process, SIGKILL it once it reported `kill_after` committed rows; their n."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(port), str(count)],
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
        text=True,
    )
    assert proc.stdout is not None
    committed: list[int] = []
    try:
        for line in proc.stdout:
            if line.strip() == "done":
                break
            committed.append(int(line.split()[1]))
            if len(committed) >= kill_after:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    committed += [int(line.split()[1]) for line in proc.stdout if line.strip() != "done"]
    return committed


@pytest.mark.parametrize("broker_up", [False, True], ids=["broker-down", "mid-delivery"])
def test_rows_pending_when_killed_are_delivered_after_restart(
    make_mosquitto: Any, tmp_path: Path, broker_up: bool
) -> None:
    """1. broker-down: a producer process adds 200 events of two cameras while no broker listens, and
       is SIGKILLed. mid-delivery: the broker and the subscriber are up, the producer adds 3000 events
       as fast as it can and is SIGKILLed after 600 of them, while delivering.
    2. A new outbox + Delivery on the same database, with the broker (now) up.
    3. Every event the killed process committed reaches the subscriber, each camera's in first-arrival
       order, and the outbox ends empty.
    """
    path = tmp_path / FILENAME
    port = free_port()
    broker = make_mosquitto(port) if broker_up else None
    sub = Subscriber("127.0.0.1", port, f"{PREFIX}/#") if broker_up else None
    if sub is not None:
        sub.__enter__()
    try:
        count, kill_after = (3000, 600) if broker_up else (200, 200)
        committed = run_child(path, port, count, kill_after)
        assert len(committed) >= kill_after
        if broker is None:
            broker = make_mosquitto(port)
            sub = Subscriber(broker.host, port, f"{PREFIX}/#")
            sub.__enter__()
        assert sub is not None

        outbox = Outbox(path)
        if not broker_up:
            assert outbox.pending == len(committed)
        publisher = publisher_for(broker)
        delivery = Delivery(outbox, publisher)
        delivery.start()
        publisher.start()
        try:
            wanted = set(committed)

            def all_there() -> bool:
                got = {n for ns in first_arrivals(sub.messages).values() for n in ns}
                return wanted <= got and outbox.pending == 0

            wait_until(all_there, 30, "every committed event delivered after the restart")
        finally:
            delivery.stop(1.0)
            publisher.stop(1.0)
            outbox.close()
        order = first_arrivals(sub.messages)
        for cam, ns in order.items():
            assert ns == sorted(ns), f"{cam} out of order"
    finally:
        if sub is not None:
            sub.close()
