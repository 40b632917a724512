"""Two real shards (`vistream run --shard 0/2` and `1/2`) of one config: RTSP cameras, Mosquitto, the model
on CPU. `flock /tmp/vistream-itest.lock .venv/bin/pytest tests/integration/test_shards.py`."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, base_config
from support.mosquitto import Mosquitto, Subscriber
from support.procs import free_port
from support.rtsp_server import RtspServer
from support.waiting import wait_until

from vistream.ops.shard import owner

pytestmark = pytest.mark.integration

PREFIX = "ishard"


def two_free_ports() -> int:
    """A port p with p + 1 free too: shard K listens on metrics.port + K."""
    for _ in range(50):
        port = free_port()
        if port < 65535:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise AssertionError("no two neighbouring free ports")


def two_each(count: int = 2) -> list[str]:
    """Camera names, two for each of 2 shards (the hash decides which, so pick names it splits)."""
    names: dict[int, list[str]] = {0: [], 1: []}
    i = 0
    while any(len(v) < count for v in names.values()):
        name = f"cam{i}"
        k = owner(name, 2)
        if len(names[k]) < count:
            names[k].append(name)
        i += 1
    return names[0] + names[1]


def seqs(sub: Subscriber, camera: str, since: float = 0.0) -> list[int]:
    topic = f"{PREFIX}/{camera}/detections"
    return [m.json()["seq"] for m in sub.messages if m.topic == topic and m.timestamp >= since]


def payloads(sub: Subscriber, topic: str) -> list[bytes]:
    return [m.payload for m in sub.messages if m.topic == topic]


def api_cameras(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/cameras", timeout=5) as resp:
        return sorted(c["name"] for c in json.loads(resp.read()))


def test_two_shards_split_the_cameras_and_each_has_its_own_will(
    tmp_path: Path, rtsp_server: RtspServer, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. One config with 4 cameras (detect_fps 2) and Home Assistant discovery; shard 0 started with
    `--shard 0/2`, shard 1 with `VISTREAM_SHARD=1/2`, both on the same state_dir.
    2. Every camera publishes detections, each from exactly one daemon: each daemon's /api/cameras
    (on metrics.port + K) and inferred-frame counters hold only the cameras the hash gives it,
    together all 4, and each camera's sequence numbers come from one reader (strictly increasing).
    3. `{prefix}/daemons/ishard-0/status` and `-1/status` are `online`, retained; `{prefix}/status` is
    not used by shards. Each shard has its own outbox file; discovery makes each entity available on
    the daemon topic of its camera's shard.
    4. SIGKILL of shard 1: the broker publishes its Last Will, `offline` on its daemon topic, within
    seconds, while shard 0's cameras keep publishing and its daemon topic stays `online`.
    5. SIGTERM of shard 0: exit 0, `offline` on its own daemon topic."""
    names = two_each()
    mounts = ["crowd1", "crowd2", "crowd1", "crowd2"]
    cams = [
        {"name": n, "url": rtsp_server.url(m), "detect_fps": 2, "lines": {"mid": [[0.02, 0.5], [0.98, 0.5]]}}
        for n, m in zip(names, mounts, strict=True)
    ]
    port = two_free_ports()
    cfg = base_config(model_path, mosquitto.port, port, PREFIX, cams)
    cfg["model"]["backend"] = "torch"
    cfg["mqtt"]["home_assistant"] = True
    cfg["state_dir"] = str(tmp_path / "state")
    mine = {k: [n for n in names if owner(n, 2) == k] for k in (0, 1)}
    daemon_topic = {k: f"{PREFIX}/daemons/{PREFIX}-{k}/status" for k in (0, 1)}
    (tmp_path / "d0").mkdir()
    (tmp_path / "d1").mkdir()
    with (
        Subscriber(mosquitto.host, mosquitto.port, "#") as sub,
        DaemonProcess(cfg, tmp_path / "d0", args=["--shard", "0/2"]) as d0,
        DaemonProcess(cfg, tmp_path / "d1", env={"VISTREAM_SHARD": "1/2"}, metrics_port=port + 1) as d1,
    ):
        assert d0.proc is not None and d1.proc is not None
        wait_until(lambda: all(len(seqs(sub, c)) >= 3 for c in names), 120, "every camera publishing")

        assert api_cameras(port) == sorted(mine[0])
        assert api_cameras(port + 1) == sorted(mine[1])
        for k, daemon in ((0, d0), (1, d1)):
            for name in names:
                # MQTT can show a frame before /metrics does (the scheduler reports its figures once
                # a second): the owner's counter is waited for; the other shard's stays 0 for good.
                if name in mine[k]:
                    inferred = daemon.wait_metric(
                        "vistream_frames_inferred_total", 1, timeout=10, camera=name
                    )
                else:
                    inferred = daemon.metric("vistream_frames_inferred_total", camera=name)
                assert (inferred > 0) == (name in mine[k]), (k, name, inferred)
        for name in names:
            got = seqs(sub, name)
            assert got == sorted(set(got)), f"{name}: sequence numbers from more than one reader: {got}"

        for k in (0, 1):
            wait_until(
                lambda k=k: payloads(sub, daemon_topic[k])[-1:] == [b"online"], 10, f"shard {k} online"
            )
        assert not payloads(sub, f"{PREFIX}/status")
        retained = Subscriber(mosquitto.host, mosquitto.port, f"{PREFIX}/daemons/+/status")
        with retained:
            wait_until(lambda: len(retained.messages) == 2, 10, "both daemon topics retained")
            assert {m.topic: m.payload for m in retained.messages} == {
                t: b"online" for t in daemon_topic.values()
            }
        assert sorted(p.name for p in (tmp_path / "state").glob("outbox*.sqlite3")) == [
            "outbox-0.sqlite3",
            "outbox-1.sqlite3",
        ]
        discovery = {
            m.topic: json.loads(m.payload)
            for m in sub.messages
            if m.topic.startswith(f"homeassistant/sensor/{PREFIX}/") and m.payload
        }
        assert len(discovery) == 4 * 2  # one line, two directions, each camera; from both shards
        for doc in discovery.values():
            camera = doc["state_topic"].split("/")[1]
            assert doc["availability"] == [{"topic": daemon_topic[owner(camera, 2)]}]

        d1.proc.send_signal(signal.SIGKILL)
        d1.proc.wait(5)
        killed = time.monotonic()
        wait_until(lambda: payloads(sub, daemon_topic[1])[-1:] == [b"offline"], 5, "shard 1's Last Will")
        will_s = next(
            m.timestamp
            for m in reversed(sub.messages)
            if m.topic == daemon_topic[1] and m.payload == b"offline"
        )
        assert will_s - killed < 3, f"the Last Will came {will_s - killed:.1f}s after the kill"
        wait_until(lambda: all(len(seqs(sub, c, killed)) >= 4 for c in mine[0]), 30, "shard 0 going on")
        assert payloads(sub, daemon_topic[0])[-1] == b"online"
        assert d0.proc.poll() is None

        code, _ = d0.terminate()
        assert code == 0
        wait_until(lambda: payloads(sub, daemon_topic[0])[-1:] == [b"offline"], 5, "shard 0 offline")
        assert "shard 0/2 (ishard-0): 2 of 4 camera(s)" in d0.log
        assert "Traceback" not in d0.log + d1.log
