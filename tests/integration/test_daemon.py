"""`vistream run` end to end with real parts: RTSP server, Mosquitto, PyAV, YOLOv8n on CPU."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, NotifySocket, base_config
from support.mosquitto import Message, Mosquitto, Subscriber
from support.procs import free_port
from support.rtsp_server import RtspServer

pytestmark = pytest.mark.integration

CAMERAS = ("street1", "street2", "crowd1", "crowd2")
PAYLOAD_KEYS = {"camera", "seq", "captured_at", "published_at", "width", "height", "objects"}
OBJECT_KEYS = {"label", "class_id", "confidence", "box", "track_id"}


def detections(sub: Subscriber, prefix: str) -> dict[str, list[Message]]:
    out: dict[str, list[Message]] = {}
    for m in sub.messages:
        parts = m.topic.split("/")
        if len(parts) == 3 and parts[0] == prefix and parts[2] == "detections":
            out.setdefault(parts[1], []).append(m)
    return out


def check_payload(doc: dict, camera: str, size: tuple[int, int]) -> None:
    """The detections payload as the spec has it: keys, types, units, boxes inside the frame."""
    assert set(doc) == PAYLOAD_KEYS
    assert doc["camera"] == camera
    assert isinstance(doc["seq"], int) and doc["seq"] > 0
    assert (doc["width"], doc["height"]) == size
    now = time.time()
    assert now - 120 < doc["captured_at"] <= doc["published_at"] <= now + 1
    for obj in doc["objects"]:
        assert set(obj) == OBJECT_KEYS
        assert isinstance(obj["label"], str) and isinstance(obj["class_id"], int)
        assert 0 < obj["confidence"] <= 1
        x1, y1, x2, y2 = obj["box"]
        assert 0 <= x1 <= x2 <= doc["width"] and 0 <= y1 <= y2 <= doc["height"]


def status(sub: Subscriber, topic: str) -> list[str]:
    return [m.payload.decode() for m in sub.messages if m.topic == topic]


def test_four_rtsp_cameras_to_mqtt(
    tmp_path: Path, rtsp_server: RtspServer, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. Four RTSP cameras (2 x 1080p street, 2 x 480p crowd) and the real model on CPU,
       `vistream run` started as systemd would (with a notify socket).
    2. READY=1 reaches the notify socket; `{prefix}/status` goes online.
    3. Detections arrive for all four cameras, payloads as in the spec; the street
       cameras report persons with confidence > 0.5; /metrics counts the frames.
    4. SIGTERM: exit 0 within 10 s, STOPPING=1, daemon and camera status retained
       `offline`, no shared-memory segment left behind."""
    prefix = "itest4"
    cams = [{"name": n, "url": rtsp_server.url(n), "detect_fps": 3} for n in CAMERAS]
    cfg = base_config(model_path, mosquitto.port, free_port(), prefix, cams)
    notify = NotifySocket(tmp_path / "notify.sock")
    with (
        Subscriber(mosquitto.host, mosquitto.port, f"{prefix}/#") as sub,
        DaemonProcess(cfg, tmp_path, env={"NOTIFY_SOCKET": str(notify.path)}) as daemon,
    ):
        sub.wait_for(lambda m: m.topic == f"{prefix}/status" and m.payload == b"online", timeout=90)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            per_cam = detections(sub, prefix)
            if all(len(per_cam.get(c, [])) >= 5 for c in CAMERAS):
                break
            time.sleep(0.5)
        per_cam = detections(sub, prefix)
        assert {c: len(per_cam.get(c, [])) >= 5 for c in CAMERAS} == dict.fromkeys(CAMERAS, True)
        assert any(m.startswith("READY=1") for m in notify.poll())

        for cam in CAMERAS:
            size = (1920, 1080) if cam.startswith("street") else (640, 480)
            docs = [m.json() for m in per_cam[cam]]
            for doc in docs:
                check_payload(doc, cam, size)
            seqs = [d["seq"] for d in docs]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            assert status(sub, f"{prefix}/{cam}/status")[-1] == "online"
        street_people = [
            o["confidence"] for m in per_cam["street1"] for o in m.json()["objects"] if o["label"] == "person"
        ]
        assert street_people and max(street_people) > 0.5
        assert sum(len(m.json()["objects"]) for m in per_cam["crowd1"]) > 0

        for cam in CAMERAS:
            assert daemon.metric("vistream_frames_decoded_total", camera=cam) > 0
            assert daemon.wait_metric("vistream_frames_inferred_total", 5, camera=cam) >= 5
            assert daemon.metric("vistream_camera_up", camera=cam) == 1
        assert daemon.metric("vistream_mqtt_connected") == 1
        # Every metric the daemon exposes is documented (docs drift check).
        documented = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
        families = {line.split()[2] for line in daemon.metrics().splitlines() if line.startswith("# TYPE")}
        for family in families:
            assert f"`{family}" in documented, f"{family} is missing from docs/metrics.md"
        assert daemon.wait_metric("vistream_batch_size_count", 1) > 0

        code, took = daemon.terminate()
        assert code == 0, daemon.log[-3000:]
        assert took < 10
        sub.wait_for(lambda m: m.topic == f"{prefix}/status" and m.payload == b"offline", timeout=5)
        for cam in CAMERAS:
            sub.wait_for(lambda m, cam=cam: m.topic == f"{prefix}/{cam}/status" and m.payload == b"offline")
        assert "STOPPING=1" in notify.poll()
    assert not list(Path("/dev/shm").glob(f"vistream.{prefix}.*"))
    notify.close()

    # The retained state a subscriber arriving later sees.
    with Subscriber(mosquitto.host, mosquitto.port, f"{prefix}/+/status") as late:
        late.wait_for(lambda m: m.retain and m.topic == f"{prefix}/street1/status")
        time.sleep(0.5)
        assert {m.topic: m.payload for m in late.messages if m.retain} == {
            **{f"{prefix}/{c}/status": b"offline" for c in CAMERAS}
        }


@pytest.mark.serial
def test_dead_camera_does_not_slow_the_others(
    tmp_path: Path, rtsp_server: RtspServer, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. Three live cameras at detect_fps 2 and one whose RTSP URL points at nothing.
    2. While the dead one tries to reconnect (counted) every live camera keeps publishing
       (a generous bound: a quarter of its detect_fps; the rates themselves are measured by
       `benchmarks/pipeline.py --dead 1`); the dead one publishes nothing and is `offline`."""
    prefix = "itestdead"
    dead_url = f"rtsp://127.0.0.1:{free_port()}/nothing"
    cams = [{"name": n, "url": rtsp_server.url(n), "detect_fps": 2} for n in ("street1", "crowd1", "crowd2")]
    cams.append({"name": "dead", "url": dead_url, "detect_fps": 2, "reconnect_max_s": 2})
    cfg = base_config(model_path, mosquitto.port, free_port(), prefix, cams)
    with (
        Subscriber(mosquitto.host, mosquitto.port, f"{prefix}/#") as sub,
        DaemonProcess(cfg, tmp_path) as daemon,
    ):
        sub.wait_for(lambda m: m.topic == f"{prefix}/crowd2/status" and m.payload == b"online", timeout=90)
        sub.wait_for(lambda m: m.topic == f"{prefix}/street1/status" and m.payload == b"online", timeout=30)
        time.sleep(2)
        sub.clear()
        reconnects = daemon.metric("vistream_camera_reconnects_total", camera="dead")
        window = 15.0
        time.sleep(window)
        counts = Counter({cam: len(msgs) for cam, msgs in detections(sub, prefix).items()})
        for cam in ("street1", "crowd1", "crowd2"):
            assert counts[cam] >= 0.25 * 2 * window, counts
        assert daemon.metric("vistream_camera_reconnects_total", camera="dead") > reconnects
        assert counts["dead"] == 0
        assert daemon.metric("vistream_camera_up", camera="dead") == 0
        assert daemon.metric("vistream_camera_reconnects_total", camera="dead") >= 2
        assert daemon.metric("vistream_frames_decoded_total", camera="dead") == 0
        code, _ = daemon.terminate()
        assert code == 0
    retained = {m.topic: m.payload for m in sub.messages if m.topic == f"{prefix}/dead/status"}
    assert retained == {f"{prefix}/dead/status": b"offline"}


def test_camera_that_stops_answering_is_noticed_and_comes_back(
    tmp_path: Path, make_rtsp_server, samples_dir: Path, mosquitto: Mosquitto, model_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """1. Two cameras on a private RTSP server; one of them freezes (keeps the connection open,
       sends nothing, like a hung camera).
    2. It is reported offline (read_timeout_s 2: within seconds; the bound here is generous);
       the other keeps publishing all along: before, while and after `a` is noticed.
    3. It thaws: the reader reconnects and the camera is online and publishing again."""
    server = make_rtsp_server({"a": samples_dir / "crowd-480p.mp4", "b": samples_dir / "crowd-480p.mp4"})
    prefix = "itestfreeze"
    cams = [
        {"name": n, "url": server.url(n), "detect_fps": 2, "read_timeout_s": 2, "reconnect_max_s": 2}
        for n in ("a", "b")
    ]
    cfg = base_config(model_path, mosquitto.port, free_port(), prefix, cams)
    with (
        Subscriber(mosquitto.host, mosquitto.port, f"{prefix}/#") as sub,
        DaemonProcess(cfg, tmp_path) as daemon,
    ):
        for cam in ("a", "b"):
            sub.wait_for(
                lambda m, c=cam: m.topic == f"{prefix}/{c}/status" and m.payload == b"online", timeout=90
            )
        sub.clear()
        server.freeze_mount("a")
        sub.wait_for(lambda m: m.topic == f"{prefix}/a/status" and m.payload == b"offline", timeout=60)
        b_while_frozen = len(detections(sub, prefix).get("b", []))
        # b never stalled while a hung: it published while a was being noticed, and goes on after.
        assert b_while_frozen >= 1
        b_seen: list[Message] = []

        def three_more_from_b(m: Message) -> bool:
            if m.topic == f"{prefix}/b/detections":
                b_seen.append(m)
            return len(b_seen) >= b_while_frozen + 3

        sub.wait_for(three_more_from_b, timeout=30)
        server.thaw_mount("a")
        sub.wait_for(lambda m: m.topic == f"{prefix}/a/status" and m.payload == b"online", timeout=20)
        sub.wait_for(lambda m: m.topic == f"{prefix}/a/detections", timeout=10)
        assert daemon.metric("vistream_camera_reconnects_total", camera="a") >= 1
        assert daemon.terminate()[0] == 0
