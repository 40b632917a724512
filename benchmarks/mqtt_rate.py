"""MQTT: how many detection and event messages one Mosquitto broker carries, and what that costs it.

Starts Mosquitto on a free port (vistream.bench.mosquitto; the harness logs every message, so its
log is turned down to notice, as a production broker's is), then for each run: `--publishers`
paho-mqtt clients (one process each, MQTT 3.1.1 with paho's network thread, as the daemon's
client) publish at an offered rate, together, to `{prefix}/camera-NNNN/detections` at QoS 0 or
`{prefix}/camera-NNNN/events` at QoS 1, spread over `--cameras` topics; `--subscribers` clients
(one process each) subscribe to `{prefix}/#` at QoS 1 (so QoS 1 messages reach them at QoS 1 and
QoS 0 ones at 0). The payloads are the daemon's own: a detections payload built with
vistream.outputs.payload (`--objects` objects on a 1920x1080 frame, with track ids) and an event
start as docs/events.md shows it. Over one window after a warm-up it measures messages/s published
and delivered end to end (received by the subscribers), the broker's CPU (psutil, user + system of
the mosquitto process) and so its CPU time per message, publish -> receive latency, and the CPU of
the clients and of the machine. On a small machine the Python clients run out of CPU long before
the broker does: the broker's cost per message, not the highest rate reached, is the figure to
scale by.

    flock /tmp/vistream-itest.lock .venv/bin/python benchmarks/mqtt_rate.py \\
        [--rates 1000,5000,10000,20000] [--qos 0,1] [--publishers 4] [--subscribers 1] \\
        [--extra 0:5000:4:2] [--seconds 10] [--warmup 2] [--out benchmarks/results/mqtt-rate.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import threading
import time
from array import array
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import psutil

from vistream.bench.measure import machine_busy_s, machine_info, version
from vistream.bench.mosquitto import MOSQUITTO, Mosquitto, missing_dependency
from vistream.events.engine import TrackedObject
from vistream.outputs.payload import detections_payload
from vistream.scheduler.messages import FrameResult

PREFIX = "vsrate"
STAMP = b'"published_at":'
STAMP_WIDTH = 14  # 1764300000.123: the payload keeps its size while the time in it changes


class QuietMosquitto(Mosquitto):
    """The harness's broker with its log at notice: `log_type all` writes a line per message in and
    out, which would be most of what the broker does at these rates. `tcp_nodelay`: Mosquitto's
    `set_tcp_nodelay true` (off by default, so Nagle's algorithm batches what it sends)."""

    def __init__(self, tcp_nodelay: bool = False) -> None:
        self.tcp_nodelay = tcp_nodelay
        super().__init__()

    def _write_config(self) -> None:
        super()._write_config()
        conf = self._dir / "mosquitto.conf"
        quiet = "log_type error\nlog_type warning\nlog_type notice\n"
        extra = "set_tcp_nodelay true\n" if self.tcp_nodelay else ""
        conf.write_text(conf.read_text().replace("log_type all\n", quiet) + extra)


def detections_bytes(objects: int) -> bytes:
    """A detections payload as the daemon sends it: `objects` persons with track ids on a 1080p frame."""
    now = 1764300000.123
    detections = [(0, 0.5 + 0.05 * i, 100.0 + 150 * i, 200.5, 230.0 + 150 * i, 610.0) for i in range(objects)]
    frame = FrameResult("camera-0001", 123456, now - 0.08, 0.0, 1920, 1080, detections)  # type: ignore[arg-type]
    tracked = [
        TrackedObject("person", cls, conf, (x1, y1, x2, y2), 100 + i)
        for i, (cls, conf, x1, y1, x2, y2) in enumerate(detections)
    ]
    return detections_payload(frame, {0: "person"}, now, tracked)


def event_bytes() -> bytes:
    """An event start as docs/events.md shows it (the stamp field is where the latency is read)."""
    doc = {
        "type": "start",
        "id": "0f0e7a52-3d0c-4b7a-9a43-2e1f0c7d7c11",
        "camera": "camera-0001",
        "rule": "person_in_driveway",
        "label": "person",
        "track_id": 17,
        "zone": "drive",
        "started_at": 1764300000.123,
        "ended_at": None,
        "max_confidence": 0.91,
        "box": [412.0, 200.5, 530.0, 610.0],
        "count": None,
        "snapshot": "vistream/camera-0001/person_in_driveway/snapshot",
        "published_at": 1764300000.123,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Run:
    qos: int
    offered_per_s: float  # all publishers together
    publishers: int
    subscribers: int
    tcp_nodelay: bool = False  # the broker's set_tcp_nodelay


def stamped(template: bytes) -> tuple[bytes, bytes]:
    """The payload split around its publish time, so a publisher stamps it without building JSON."""
    at = template.index(STAMP) + len(STAMP)
    return template[:at], template[at + STAMP_WIDTH :]


def connect(host: str, port: int, client_id: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(host, port)
    client.loop_start()
    if not connected.wait(10):
        raise TimeoutError(f"{client_id}: no CONNACK in 10 s")
    return client


def wait_clock(clock: Any) -> tuple[float, float, float, float]:
    """(start, window start, window end, stop) in time.time(), once the harness has set them."""
    while clock[0] == 0.0:
        time.sleep(0.01)
    return tuple(clock[:])  # type: ignore[return-value]


def publisher(
    index: int, host: str, port: int, run: Run, topics: list[str], template: bytes, clock: Any, out: Any
) -> None:
    """Publish at run.offered_per_s / run.publishers from start to stop, in step with the clock: what
    is due is sent at once, so a publisher that falls behind shows as published < offered."""
    client = connect(host, port, f"mqttrate-pub-{index}")
    out.put(("ready", index, None))
    head, tail = stamped(template)
    rate = run.offered_per_s / run.publishers
    sent = 0
    info = None
    start, _, _, stop = wait_clock(clock)
    time.sleep(max(0.0, start - time.time()))
    while (now := time.time()) < stop:
        due = int((now - start) * rate) - sent
        for _ in range(min(due, 200)):  # a burst at most; the clock is read again after it
            payload = head + f"{time.time():{STAMP_WIDTH}.3f}".encode() + tail
            info = client.publish(topics[sent % len(topics)], payload, qos=run.qos)
            sent += 1
        if due <= 0:
            time.sleep(0.0005)
    # Let paho hand over what it still holds (at QoS 1: until the last PUBACK) before disconnecting;
    # messages leave in order, so the last one done means all are.
    if info is not None:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()
    out.put(("pub", index, {"sent": sent, "published_per_s": sent / (stop - start)}))


def subscriber(index: int, host: str, port: int, clock: Any, out: Any) -> None:
    """Receive everything on `{prefix}/#` and, for the window, count and time it (publish -> receive)."""
    subscribed = threading.Event()
    window = [float("inf"), float("inf")]  # set once the harness gives the clock
    lock = threading.Lock()
    state = {"total": 0, "in_window": 0, "by_qos": {0: 0, 1: 0}}
    latency_ms = array("d")

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        payload = msg.payload
        with lock:
            state["total"] += 1
            if window[0] <= now < window[1]:
                state["in_window"] += 1
                state["by_qos"][msg.qos] += 1
                at = payload.find(STAMP) + len(STAMP)
                latency_ms.append(1000 * (now - float(payload[at : at + STAMP_WIDTH])))

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"mqttrate-sub-{index}", protocol=mqtt.MQTTv311
    )
    client.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/#", qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    client.connect(host, port)
    client.loop_start()
    if not subscribed.wait(10):
        raise TimeoutError(f"subscriber {index}: not subscribed in 10 s")
    out.put(("ready", index, None))
    _, window[0], window[1], quiet_after = wait_clock(clock)
    # Stay until nothing has arrived for a second after the publishers stopped (what was in flight).
    last, seen = time.time(), -1
    while time.time() < quiet_after or seen != state["total"] or time.time() - last < 1.0:
        if seen != state["total"]:
            seen, last = state["total"], time.time()
        time.sleep(0.1)
    client.disconnect()
    client.loop_stop()
    lat = np.frombuffer(latency_ms, dtype=np.float64) if latency_ms else np.zeros(1)
    out.put(
        (
            "sub",
            index,
            {
                **state,
                "latency_ms": {
                    "p50": float(np.percentile(lat, 50)),
                    "p99": float(np.percentile(lat, 99)),
                    "max": float(lat.max()),
                },
            },
        )
    )


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def measure(
    broker: Mosquitto, run: Run, args: argparse.Namespace, payloads: dict[int, bytes]
) -> dict[str, Any]:
    ctx = mp.get_context("fork")  # nothing runs threads here yet; spawn would re-import for seconds
    out = ctx.Queue()
    kind = "detections" if run.qos == 0 else "events"
    cameras = [f"camera-{i:04d}" for i in range(1, args.cameras + 1)]
    # Publisher i takes cameras i, i+P, ...: as shards do, each daemon publishes its own cameras.
    topics = [[f"{PREFIX}/{c}/{kind}" for c in cameras[i :: run.publishers]] for i in range(run.publishers)]
    clock = ctx.Array("d", 4)  # start, window start, window end, stop; 0 until every client is up
    subs = [
        ctx.Process(target=subscriber, args=(i, broker.host, broker.port, clock, out), daemon=True)
        for i in range(run.subscribers)
    ]
    pubs = [
        ctx.Process(
            target=publisher,
            args=(i, broker.host, broker.port, run, topics[i], payloads[run.qos], clock, out),
            daemon=True,
        )
        for i in range(run.publishers)
    ]
    for p in subs + pubs:
        p.start()
    ready = 0
    while ready < run.subscribers + run.publishers:  # connected and subscribed before anything is published
        tag, _, _ = out.get(timeout=60)
        ready += tag == "ready"
    t_start = time.time() + 0.5
    window = (t_start + args.warmup, t_start + args.warmup + args.seconds)
    clock[:] = [t_start, *window, window[1] + 0.5]
    mosq = psutil.Process(broker._proc.pid)  # type: ignore[union-attr]
    clients = [psutil.Process(p.pid) for p in subs + pubs]  # type: ignore[arg-type]
    time.sleep(max(0.0, window[0] - time.time()))
    b0, c0, m0, w0 = cpu_s([mosq]), cpu_s(clients), machine_busy_s(), time.monotonic()
    time.sleep(max(0.0, window[1] - time.time()))
    b1, c1, m1, wall = cpu_s([mosq]), cpu_s(clients), machine_busy_s(), time.monotonic() - w0
    results: dict[str, dict[int, dict[str, Any]]] = {"pub": {}, "sub": {}}
    while len(results["pub"]) < run.publishers or len(results["sub"]) < run.subscribers:
        tag, index, value = out.get(timeout=60)
        if tag in results:
            results[tag][index] = value
    for p in subs + pubs:
        p.join(10)
    broker_pct = 100 * (b1 - b0) / wall
    clients_pct = 100 * (c1 - c0) / wall
    machine_pct = 100 * (m1 - m0) / wall
    sent = sum(r["sent"] for r in results["pub"].values())
    published_per_s = sum(r["published_per_s"] for r in results["pub"].values())
    received = [r["in_window"] / args.seconds for r in results["sub"].values()]
    delivered_per_s = sum(received)
    total_received = sum(r["total"] for r in results["sub"].values())
    lost = sent * run.subscribers - total_received
    broker_cpu_s = broker_pct / 100  # per second of wall time
    return {
        **asdict(run),
        "kind": kind,
        "payload_bytes": len(payloads[run.qos]),
        "published_per_s": round(published_per_s, 1),
        "delivered_per_s": round(delivered_per_s, 1),  # all subscribers together
        "delivered_per_s_per_subscriber": [round(r, 1) for r in received],
        "sent": sent,
        "received": total_received,
        "lost": lost,
        "lost_fraction": round(lost / max(1, sent * run.subscribers), 5),
        "broker_cpu_pct": round(broker_pct, 2),
        # What one message costs the broker, counting it once in (published) or once per delivery.
        "broker_us_per_published": round(1e6 * broker_cpu_s / max(1.0, published_per_s), 2),
        "broker_us_per_in_plus_out": round(
            1e6 * broker_cpu_s / max(1.0, published_per_s + delivered_per_s), 2
        ),
        # One broker core at this cost per message (Mosquitto runs on one thread).
        "published_per_broker_core_s": round(published_per_s / broker_cpu_s) if broker_cpu_s > 0 else None,
        "latency_ms": {
            "p50": round(float(np.median([r["latency_ms"]["p50"] for r in results["sub"].values()])), 2),
            "p99": round(max(r["latency_ms"]["p99"] for r in results["sub"].values()), 2),
        },
        "clients_cpu_pct": round(clients_pct, 1),
        "machine_cpu_pct": round(machine_pct, 1),
        "others_cpu_pct": round(max(0.0, machine_pct - broker_pct - clients_pct), 1),
    }


def parse_extra(spec: str) -> Run:
    qos, rate, pubs, subs, *flags = spec.split(":")
    return Run(int(qos), float(rate), int(pubs), int(subs), tcp_nodelay="nodelay" in flags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rates", default="1000,5000,10000,20000", help="offered messages/s, all publishers")
    parser.add_argument(
        "--qos", default="0,1", help="QoS levels to run each rate at (0: detections, 1: events)"
    )
    parser.add_argument("--publishers", type=int, default=4, help="publisher clients (processes)")
    parser.add_argument("--subscribers", type=int, default=1, help="subscriber clients on PREFIX/#")
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        help="more runs as QOS:RATE:PUBLISHERS:SUBSCRIBERS[:nodelay] (repeatable; nodelay: a broker with "
        "set_tcp_nodelay true)",
    )
    parser.add_argument("--cameras", type=int, default=1000, help="distinct camera topics")
    parser.add_argument("--objects", type=int, default=5, help="objects in each detections payload")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="publishing before the window")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mqtt-rate.json")
    args = parser.parse_args()
    if (problem := missing_dependency()) is not None:
        raise SystemExit(f"cannot run: {problem}")
    payloads = {0: detections_bytes(args.objects), 1: event_bytes()}
    runs = [
        Run(q, float(r), args.publishers, args.subscribers)
        for q in (int(x) for x in args.qos.split(","))
        for r in args.rates.split(",")
    ] + [parse_extra(s) for s in args.extra]
    broker_version = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True).stdout.splitlines()[0]
    print(
        f"{broker_version}; detections payload {len(payloads[0])} B ({args.objects} objects), "
        f"event {len(payloads[1])} B"
    )
    head = (
        "qos pubs subs  offered  published  delivered  lost%  broker%  us/msg  msg/core-s  p50ms  p99ms "
        "clients% machine%"
    )
    print(head)
    rows = []
    with ExitStack() as stack:
        brokers = {
            nodelay: stack.enter_context(QuietMosquitto(nodelay)) for nodelay in {r.tcp_nodelay for r in runs}
        }
        for run in runs:
            r = measure(brokers[run.tcp_nodelay], run, args, payloads)
            rows.append(r)
            print(
                f"{r['qos']:>3} {r['publishers']:>4} {r['subscribers']:>4} {r['offered_per_s']:>8.0f} "
                f"{r['published_per_s']:>10.0f} {r['delivered_per_s']:>10.0f} "
                f"{100 * r['lost_fraction']:>6.2f} "
                f"{r['broker_cpu_pct']:>8.1f} {r['broker_us_per_published']:>7.1f} "
                f"{r['published_per_broker_core_s'] or 0:>11} {r['latency_ms']['p50']:>6.1f} "
                f"{r['latency_ms']['p99']:>6.1f} {r['clients_cpu_pct']:>8.1f} {r['machine_cpu_pct']:>8.1f}",
                flush=True,
            )
    result = {
        "benchmark": "mqtt_rate",
        "machine": machine_info(),
        "broker": {
            "version": broker_version,
            "config": "Mosquitto defaults (set_tcp_nodelay false unless a run says"
            " tcp_nodelay), one listener, log at notice, no persistence",
        },
        "client": f"paho-mqtt {version('paho-mqtt')}, MQTT 3.1.1, loop_start (its network thread)",
        "payload": {
            "detections_bytes": len(payloads[0]),
            "objects": args.objects,
            "events_bytes": len(payloads[1]),
            "detections_sample": payloads[0].decode(),
        },
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
