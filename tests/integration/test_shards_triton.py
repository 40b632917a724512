"""Two shards of one camera list sharing one real Triton Inference Server (PyTriton's tritonserver
serving the `vistream export-triton` entry), with Mosquitto and the RTSP test server.

`flock /tmp/vistream-itest.lock .venv/bin/pytest tests/integration/test_shards_triton.py`.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, base_config, metric_sum
from support.mosquitto import Mosquitto, Subscriber
from support.triton_server import TritonServer
from support.waiting import settled, wait_until

from vistream.ops.shard import owner

from .test_shards import payloads, seqs, two_free_ports
from .test_triton import MAX_BATCH, make_triton, triton_entry  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

PREFIX = "ishard"  # test_shards' helpers read this prefix's topics
CLIPS = {"street": "street-1080p.mp4", "crowd": "crowd-480p.mp4"}


def three_each() -> dict[str, int]:
    """Six camera names, three the hash gives each of 2 shards, a street camera on each shard first."""
    names: dict[int, list[str]] = {0: [], 1: []}
    i = 0
    while any(len(v) < 3 for v in names.values()):
        name = f"cam{i}"
        if len(names[owner(name, 2)]) < 3:
            names[owner(name, 2)].append(name)
        i += 1
    return {name: k for k, group in names.items() for name in group}


def inferred(daemons: list[DaemonProcess]) -> float:
    """Both shards' inferred frames, once they stopped moving."""
    return settled(
        lambda: sum(metric_sum(d.metrics(), "vistream_frames_inferred_total") for d in daemons), "inferred"
    )


def test_two_shards_on_one_triton(
    tmp_path: Path,
    mosquitto: Mosquitto,
    make_rtsp_server: Callable,
    make_triton: Callable[..., TritonServer],  # noqa: F811 (the fixture imported above)
    model_path: Path,
    samples_dir: Path,
) -> None:
    """1. Six RTSP cameras (a street camera and two crowd cameras on each shard), one config with
       model.path grpc://.../yolov8n; `vistream run --shard 0/2` and `--shard 1/2`.
    2. Every camera is published, each by exactly one daemon (its sequence numbers from one reader,
       inferred only by the shard the hash gives it); persons are found on the street cameras, by
       class name.
    3. Triton stops for 15 s: both daemons keep running (frames dropped as `backend`); it starts
       again on the same ports and both publish again.
    4. The cameras stop: every frame the two daemons counted inferred since the restart is one
       Triton counted (its own statistics), so all inference ran there.
    5. SIGKILL of shard 1: `offline` on its daemon topic at once (its Last Will) while shard 0's
       cameras go on; SIGTERM of shard 0: exit 0."""
    shard_of = three_each()
    street = [n for n in shard_of if shard_of[n] == 0][:1] + [n for n in shard_of if shard_of[n] == 1][:1]
    mounts = {n: samples_dir / CLIPS["street" if n in street else "crowd"] for n in shard_of}
    rtsp = make_rtsp_server(mounts)
    server = make_triton()
    ports = (server.grpc_port, server.http_port, server.metrics_port)
    cams = [{"name": n, "url": rtsp.url(n), "detect_fps": 2} for n in shard_of]
    port = two_free_ports()
    cfg = base_config(model_path, mosquitto.port, port, PREFIX, cams)
    cfg["model"] = {"path": f"grpc://127.0.0.1:{server.grpc_port}/yolov8n", "conf": 0.4}
    cfg["batching"] = {"max_batch": MAX_BATCH, "max_wait_ms": 20, "max_frame_age_ms": 1500}
    cfg["state_dir"] = str(tmp_path / "state")
    topic = {k: f"{PREFIX}/daemons/{PREFIX}-{k}/status" for k in (0, 1)}
    (tmp_path / "d0").mkdir()
    (tmp_path / "d1").mkdir()
    with (
        Subscriber(mosquitto.host, mosquitto.port, "#") as sub,
        DaemonProcess(cfg, tmp_path / "d0", args=["--shard", "0/2"]) as d0,
        DaemonProcess(cfg, tmp_path / "d1", args=["--shard", "1/2"], metrics_port=port + 1) as d1,
    ):
        daemons = [d0, d1]
        wait_until(lambda: all(len(seqs(sub, c)) >= 3 for c in shard_of), 180, "every camera publishing")
        for name, k in shard_of.items():
            got = seqs(sub, name)
            assert got == sorted(set(got)), f"{name}: sequence numbers from more than one reader: {got}"
            # MQTT can show a frame before /metrics does (the scheduler reports its figures once a
            # second): the owner's counter is waited for; the other shard's stays 0 for good.
            owner = daemons[k].wait_metric("vistream_frames_inferred_total", 1, timeout=10, camera=name)
            assert owner > 0, f"{name}: shard {k} publishes it but counts no inferred frame"
            assert daemons[1 - k].metric("vistream_frames_inferred_total", camera=name) == 0, name
        for name in street:
            sub.wait_for(
                lambda m, name=name: (
                    m.topic == f"{PREFIX}/{name}/detections"
                    and any(o["label"] == "person" for o in m.json()["objects"])
                ),
                timeout=30,
            )

        server.stop()
        stopped = time.monotonic()
        for d in daemons:
            wait_until(
                lambda d=d: metric_sum(d.metrics(), "vistream_frames_dropped_total", reason="backend") > 0,
                30,
                "frames dropped with reason backend",
            )
        before = inferred(daemons)
        time.sleep(max(0.0, 15 - (time.monotonic() - stopped)))
        assert all(d.proc is not None and d.proc.poll() is None for d in daemons)
        server = make_triton(*ports)
        back = time.time()
        for k in (0, 1):
            mine = [n for n in shard_of if shard_of[n] == k]
            sub.wait_for(
                lambda m, mine=mine: (
                    m.topic.split("/")[1] in mine
                    and m.topic.endswith("/detections")
                    and m.json()["captured_at"] > back
                ),
                timeout=60,
            )
        time.sleep(5)
        for name in shard_of:
            rtsp.stop_mount(name)
        after = inferred(daemons)
        stats = server.statistics()
        assert stats["inference_count"] == after - before, (stats, before, after)

        for name in shard_of:
            rtsp.start_mount(name)
        assert d1.proc is not None
        d1.proc.send_signal(signal.SIGKILL)
        d1.proc.wait(5)
        killed = time.monotonic()
        wait_until(lambda: payloads(sub, topic[1])[-1:] == [b"offline"], 5, "shard 1's Last Will")
        mine0 = [n for n in shard_of if shard_of[n] == 0]
        wait_until(lambda: all(len(seqs(sub, c, killed)) >= 2 for c in mine0), 60, "shard 0 going on")
        assert payloads(sub, topic[0])[-1] == b"online"
        code, _ = d0.terminate()
        assert code == 0, d0.log[-3000:]
    # (Triton's own error text, quoted in the warnings, may hold a traceback of its Python stub.)
    assert not re.search(r"^Traceback", d0.log + d1.log, re.M), (d0.log + d1.log)[-5000:]
