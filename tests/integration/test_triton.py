"""The Triton backend against a real Triton Inference Server (PyTriton's tritonserver, the model
exported by `vistream export-triton` and run with onnxruntime in a bound callable).

Run it under the shared lock:
`flock /tmp/vistream-itest.lock .venv/bin/pytest tests/integration/test_triton.py`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import missing
from support import triton_server
from support.daemon import VISTREAM, DaemonProcess, base_config, metric_sum
from support.mosquitto import Mosquitto, Subscriber
from support.procs import free_port
from support.triton_server import TritonServer
from support.waiting import settled, wait_until

from vistream.config.models import ModelConfig
from vistream.detector import load_detector

from .test_backends import letterboxed_street_frame

pytestmark = pytest.mark.integration

MAX_BATCH = 4
RESULTS = Path(os.environ.get("VISTREAM_TEST_RESULTS", "test-artifacts"))


def export_entry(root: Path, model_path: Path, name: str, *extra: str) -> Path:
    """`vistream export-triton` of the test model into root/models/NAME (export cache in root/cache)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(root / "cache")}
    cmd = [*VISTREAM, "export-triton", "--model", str(model_path), "--out", str(root / "models")]
    out = subprocess.run(
        [*cmd, "--name", name, "--max-batch", str(MAX_BATCH), *extra],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "models" / name


@pytest.fixture(scope="session")
def triton_entry(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Path:
    """The default entry (float32 NCHW input), once per session, with its own export cache."""
    if reason := triton_server.missing_dependency():
        missing(reason)
    return export_entry(tmp_path_factory.mktemp("triton"), model_path, "yolov8n")


@pytest.fixture(scope="session")
def triton_entry_uint8(triton_entry: Path, model_path: Path) -> Path:
    """The `--input uint8` entry of the same export (taken from the same cache)."""
    return export_entry(triton_entry.parents[1], model_path, "yolov8n_uint8", "--input", "uint8")


@pytest.fixture
def make_triton(triton_entry: Path) -> Iterator[Callable[..., TritonServer]]:
    """Start the test Triton server on given (or free) ports; every one is stopped after the test."""
    servers: list[TritonServer] = []

    def make(
        grpc_port: int = 0, http_port: int = 0, metrics_port: int = 0, entry: Path | None = None
    ) -> TritonServer:
        server = TritonServer(
            entry or triton_entry,
            grpc_port or free_port(),
            http_port or free_port(),
            metrics_port or free_port(),
        )
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.mark.parametrize("wire", ["float32", "uint8"])
def test_triton_finds_what_onnxruntime_finds_over_grpc_and_http(
    make_triton: Callable[..., TritonServer], triton_entry: Path, samples_dir: Path, wire: str,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    """1. The exported entry's model.onnx in-process on ONNX Runtime: the reference.
    2. The same entry served by Triton (or, `uint8`, the `--input uint8` entry, which takes the
       batch as bytes and does the preprocessing itself), as `grpc://` and as `http://`: the
       backend reads class names and stride from the config's metadata, and finds the same persons
       (same boxes, preprocessing and NMS being the same operations), rows of the batch kept apart.
    3. Two batches in flight at once come back each with its own frames."""
    frame = letterboxed_street_frame(samples_dir)
    local = load_detector(
        ModelConfig(path=str(triton_entry / "1" / "model.onnx"), device="cpu", classes=["person"]), MAX_BATCH
    )
    local.input_buffer[[0, 2]] = frame
    local.input_buffer[1] = 114
    reference = local.infer(3)
    local.close()
    assert len(reference[0]) >= 3 and len(reference[1]) == 0

    entry = triton_entry if wire == "float32" else request.getfixturevalue("triton_entry_uint8")
    server = make_triton(entry=entry)
    for url in (
        f"grpc://127.0.0.1:{server.grpc_port}/{entry.name}",
        f"http://127.0.0.1:{server.http_port}/{entry.name}",
    ):
        det = load_detector(ModelConfig(path=url, device="cpu", classes=["person"]), MAX_BATCH)
        assert det.backend == "triton" and det.names[0] == "person" and len(det.names) == 80  # type: ignore[attr-defined]
        assert det.max_inflight == 2
        assert det.info.raw_bytes == (wire == "uint8")  # type: ignore[attr-defined]
        det.input_buffer[[0, 2]] = frame
        det.input_buffer[1] = 114
        rows = det.infer(3)
        for got, want in zip(rows, reference, strict=True):
            assert got.shape == want.shape, url
            assert not len(got) or np.abs(got - want).max() < 1e-3, url
        det.input_buffer[0] = frame
        first = det.submit(1)
        det.input_buffer[0] = 114  # free again once submitted
        second = det.submit(1)
        assert len(det.collect(first)[0]) == len(reference[0]) and len(det.collect(second)[0]) == 0
        det.close()


def healthz(port: int, path: str = "/healthz") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode().strip()


@pytest.mark.serial
def test_daemon_on_triton_survives_a_server_restart(
    tmp_path: Path,
    mosquitto: Mosquitto,
    make_rtsp_server: Callable,
    make_triton: Callable[..., TritonServer],
    model_path: Path,
    samples_dir: Path,
) -> None:
    """1. Triton serves the exported entry; the daemon runs two street cameras (RTSP, 5 fps) with
       model.path grpc://127.0.0.1:PORT/yolov8n, and publishes persons by class name.
    2. Triton stops: the daemon keeps running, frames are dropped with reason `backend`, /healthz
       answers 503 saying the backend is unavailable, and nothing is published.
    3. After ~15 s Triton starts again on the same ports: within seconds the daemon publishes
       again (the recovery time is measured) and /healthz is ok.
    4. The cameras stop: every frame the daemon counts inferred since the restart is one Triton
       counted in its own statistics (and the batches Triton executed give the mean batch size).
    5. SIGTERM: exit 0, no traceback in the log."""
    prefix = "itesttriton"
    street = samples_dir / "street-1080p.mp4"
    rtsp = make_rtsp_server({"street1": street, "street2": street})
    server = make_triton()
    ports = (server.grpc_port, server.http_port, server.metrics_port)
    cams = [{"name": n, "url": rtsp.url(n), "detect_fps": 5} for n in ("street1", "street2")]
    cfg = base_config(model_path, mosquitto.port, free_port(), prefix, cams)
    cfg["model"] = {"path": f"grpc://127.0.0.1:{server.grpc_port}/yolov8n", "conf": 0.4}
    cfg["batching"] = {"max_batch": MAX_BATCH, "max_wait_ms": 20, "max_frame_age_ms": 1500}
    port = cfg["metrics"]["port"]
    with (
        Subscriber(mosquitto.host, mosquitto.port, f"{prefix}/#") as sub,
        DaemonProcess(cfg, tmp_path) as daemon,
    ):
        msg = sub.wait_for(
            lambda m: (
                m.topic.endswith("/detections") and any(o["label"] == "person" for o in m.json()["objects"])
            ),
            timeout=180,
        )
        assert msg.json()["camera"] in ("street1", "street2")
        time.sleep(5)
        assert healthz(port) == (200, "ok")

        server.stop()
        stopped = time.monotonic()
        wait_until(
            lambda: metric_sum(daemon.metrics(), "vistream_frames_dropped_total", reason="backend") > 0,
            30,
            "frames dropped with reason backend",
        )
        code, body = healthz(port)
        assert code == 503 and "the model backend is unavailable" in body and "yolov8n" in body, body
        assert healthz(port, "/livez") == (200, "ok")  # a liveness probe must not restart the daemon
        before = settled(lambda: metric_sum(daemon.metrics(), "vistream_frames_inferred_total"), "inferred")
        assert daemon.proc.poll() is None
        time.sleep(max(0.0, 15 - (time.monotonic() - stopped)))
        outage_s = time.monotonic() - stopped

        server = make_triton(*ports)
        back = time.time()
        first = sub.wait_for(
            lambda m: m.topic.endswith("/detections") and m.json()["captured_at"] > back, timeout=60
        )
        recovery_s = first.json()["published_at"] - back
        wait_until(lambda: healthz(port) == (200, "ok"), 30, "/healthz ok again")
        dropped = metric_sum(daemon.metrics(), "vistream_frames_dropped_total", reason="backend")
        time.sleep(10)

        rtsp.stop_mount("street1"), rtsp.stop_mount("street2")
        after = settled(lambda: metric_sum(daemon.metrics(), "vistream_frames_inferred_total"), "inferred")
        stats = server.statistics()
        metrics = daemon.metrics()
        code, _ = daemon.terminate()
        assert code == 0, daemon.log[-3000:]
    # (Triton's own error text, quoted in the warnings, may hold a traceback of its Python stub.)
    assert not re.search(r"^Traceback", daemon.log, re.M), daemon.log[-5000:]
    assert stats["inference_count"] == after - before, (stats, before, after)
    figures = {
        "outage_s": round(outage_s, 1),
        "recovery_s": round(recovery_s, 2),
        "dropped_backend": dropped,
        "inferred_after_restart": after - before,
        "triton_inference_count": stats["inference_count"],
        "triton_execution_count": stats["execution_count"],
        "triton_mean_batch": round(stats["inference_count"] / max(1, stats["execution_count"]), 2),
        "daemon_mean_batch": round(
            metric_sum(metrics, "vistream_batch_size_sum")
            / max(1, metric_sum(metrics, "vistream_batch_size_count")),
            2,
        ),
    }
    print("triton restart:", json.dumps(figures))
    assert recovery_s < 10, figures
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "triton-restart.json").write_text(json.dumps(figures, indent=2) + "\n")
