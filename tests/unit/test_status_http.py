"""The HTTP server's parts without a daemon: the latest frame kept held, health reasons, rates,
the pictures drawn, and the app's answers (Starlette's TestClient) over a real ring."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, make_asgi_app
from support.rings import temp_ring

from vistream.config.models import CameraConfig
from vistream.ops.http import HttpServer, Rates, bind, build_app, draw_shapes
from vistream.ops.scheduler import Liveness
from vistream.ops.stats import SchedulerStats
from vistream.ops.status import CameraStatus, Figures, Vitals, health, vitals
from vistream.ops.supervise import Limits
from vistream.outputs.results import KEEP_S, ResultPump
from vistream.outputs.snapshot import COLOURS
from vistream.ring.lifetime import fixed
from vistream.ring.shm import FrameRing, State
from vistream.scheduler.loop import BEAT_BATCH_START, BEAT_READY, BEAT_TIME
from vistream.scheduler.messages import BatchResult, FrameResult

W, H = 640, 480
RED, GREY = (0, 0, 255), (128, 128, 128)  # BGR


@pytest.fixture
def ring() -> Iterator[FrameRing]:
    with temp_ring() as r:
        yield r


def write(ring: FrameRing, colour: tuple[int, int, int], mono: float | None = None) -> int:
    """The reader writes a W x H frame of one colour; returns its seq."""
    ring.begin()
    bgr = np.full((H, W, 3), colour, np.uint8)
    ring.plane_buffer(W, H)[:] = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
    return ring.commit(
        captured_at=time.time(), captured_mono=time.monotonic() if mono is None else mono,
        width=W, height=H, scale=0.1, pad_x=0, pad_y=0, plane_width=W, plane_height=H,
    )  # fmt: skip


def take(ring: FrameRing) -> int:
    """The scheduler takes the newest frame into a batch, holding it; returns its seq."""
    meta, _ = ring.read(np.empty((64, 64, 3), np.uint8), hold=True)
    assert meta is not None
    return meta.seq


def result(seq: int, mono: float | None = None, boxes: int = 1) -> BatchResult:
    detections = [(0, 0.9, 160.0, 120.0, 480.0, 360.0)] * boxes
    now = time.monotonic() if mono is None else mono
    return BatchResult([FrameResult("cam", seq, time.time(), now, W, H, detections)])


def publisher() -> Any:
    return SimpleNamespace(prefix="p", publish=lambda *args, **kwargs: True)


def pump_for(ring: FrameRing, released: list[int]) -> ResultPump:
    def release(camera: str, seq: int) -> None:
        released.append(seq)
        ring.release(seq)

    pump = ResultPump(publisher(), lambda: None, lambda msg: None, release=release)
    pump.names = {0: "person"}
    return pump


def test_latest_frame_stays_held_until_the_next_result(ring: FrameRing) -> None:
    """1. Frame 1 is inferred and its result handled: it stays held as the camera's latest.
    2. The reader writes many newer frames: frame 1 is still in the ring.
    3. Frame 2's result arrives: frame 1 is released (and soon overwritten), frame 2 is held.
    4. No result comes for KEEP_S: frame 2 is released before the ring's 5 s would count its
       hold as expired, once; the next result releases nothing more."""
    released: list[int] = []
    pump = pump_for(ring, released)
    pump._publish(result(take(ring) if write(ring, RED) else 0))
    latest = pump.latest("cam")
    assert latest is not None and latest.seq == 1 and latest.held and released == []
    assert [o.label for o in latest.objects] == ["person"]
    for _ in range(8):
        write(ring, GREY)
    assert ring.read_plane(1) is not None

    write(ring, GREY)
    seq2 = take(ring)
    pump._publish(result(seq2))
    assert released == [1]
    for _ in range(8):
        write(ring, GREY)
    assert ring.read_plane(1) is None and ring.read_plane(seq2) is not None

    latest = pump.latest("cam")
    assert latest is not None
    pump._let_go(latest.captured_mono + KEEP_S + 0.1)
    pump._let_go(latest.captured_mono + KEEP_S + 0.6)
    assert released == [1, seq2] and not pump.latest("cam").held  # type: ignore[union-attr]
    assert int(ring.header["holds_expired"]) == 0
    write(ring, GREY)
    pump._publish(result(take(ring)))
    assert released == [1, seq2]


class Part:
    def __init__(self, alive: bool = True, beat: float = 0.0) -> None:
        self.alive, self.beat = alive, beat


BEATS = {"beat_time": BEAT_TIME, "beat_batch": BEAT_BATCH_START, "beat_ready": BEAT_READY}


def fake_daemon(now: float, **changes: Any) -> Any:
    """What the daemon's vitals are made of: a looping scheduler, turning threads, a 2 s window."""
    beat = [0.0, 0.0, 0.0]
    beat[BEAT_TIME], beat[BEAT_READY] = now - 0.1, 1.0
    d = SimpleNamespace(
        stop_flag=False,
        ready=SimpleNamespace(device="cpu", half=False, backend="openvino", precision="fp32"),
        limits=Limits(stall_s=4.0, window_s=2.0, ping_s=4.0),
        scheduler=SimpleNamespace(alive=True, liveness=Liveness(beat)),
        pump=Part(beat=now),
        logs=Part(beat=now),
        backend_down="",
        outbox_down="",
    )
    for key, value in changes.items():
        if key.startswith("beat_"):
            beat[BEATS[key]] = value
        else:
            setattr(d, key, value)

    def vitals_at(t: float) -> Vitals:  # as the daemon reads its parts
        return vitals(
            t, d.limits.window_s, stopping=bool(d.stop_flag), ready=d.ready is not None,
            running=d.scheduler.alive, liveness=d.scheduler.liveness,
            threads={"result pump": d.pump, "log hub": d.logs},
            backend_down=d.backend_down, outbox_problem=d.outbox_down or None,
        )  # fmt: skip

    d.vitals = vitals_at
    return d


NOW = 1000.0


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"stop_flag": True}, "stopping"),
        ({"ready": None}, "starting: the model is not loaded yet"),
        ({"scheduler": SimpleNamespace(alive=False, liveness=None)},
         "the scheduler is not running (it is being restarted)"),
        ({"beat_ready": 0.0}, "the scheduler is loading the model"),
        ({"beat_time": NOW - 3, "beat_batch": NOW - 3},
         "the scheduler has been stuck in one batch for 3.0s (limit 2s)"),
        ({"beat_time": NOW - 2.5}, "the scheduler made no progress for 2.5s (limit 2s)"),
        ({"pump": Part(alive=False, beat=NOW)}, "the result pump thread is dead"),
        ({"logs": Part(beat=NOW - 5)}, "the log hub thread made no progress for 5.0s (limit 2s)"),
        ({"backend_down": "Triton model 'm' at grpc://t:8001: connection refused"},
         "the model backend is unavailable: Triton model 'm' at grpc://t:8001: connection refused"),
        ({"outbox_down": "SQLITE_FULL: database or disk is full"},
         "the event outbox cannot be written: SQLITE_FULL: database or disk is full"),
    ],
)  # fmt: skip
def test_health_says_why_in_one_line(changes: dict[str, Any], reason: str | None) -> None:
    """/healthz: ok only while the model is loaded and results flow within the window; otherwise the
    first thing that is wrong, in one line."""
    assert health(fake_daemon(NOW, **changes).vitals(NOW)) == reason


def test_liveness_does_not_hang_on_a_remote_model() -> None:
    """/livez: the same verdict as /healthz, except that Triton being down is no reason for 503
    (restarting the daemon would not bring it back); anything wrong in the daemon still is."""
    down = {"backend_down": "Triton model 'm' at grpc://t:8001: connection refused"}
    assert health(fake_daemon(NOW, **down).vitals(NOW), remote=False) is None
    both = down | {"pump": Part(alive=False, beat=NOW)}
    assert health(fake_daemon(NOW, **both).vitals(NOW), remote=False) == "the result pump thread is dead"
    full = {"outbox_down": "SQLITE_FULL: database or disk is full"}  # a restart frees no disk either
    assert health(fake_daemon(NOW, **full).vitals(NOW), remote=False) is None


def test_rates_over_the_last_seconds() -> None:
    """1. One sample: no rate yet. 2. Samples a second apart: frames per second over the window (5 s),
    older samples forgotten. 3. A counter that went back counts as 0, not negative. 4. A camera that
    is gone is forgotten."""
    rates = Rates(window_s=5.0)
    rates.sample(0.0, {"a": (0, 0)})
    assert rates.get("a") == (None, None)
    for t in range(1, 11):
        rates.sample(float(t), {"a": (30 * t if t < 8 else 100 * t, 5 * t)})
    decoded, inferred = rates.get("a")
    assert inferred == 5.0 and decoded is not None and decoded > 30
    rates.sample(11.0, {"a": (0, 0)})
    assert rates.get("a") == (0.0, 0.0)
    rates.sample(12.0, {})
    assert rates.get("a") == (None, None)


def test_zones_and_lines_are_drawn_where_they_are() -> None:
    """A zone over the left half is outlined and lightly filled (brighter inside, untouched outside);
    a line down the right side is drawn in the line colour."""
    cam = CameraConfig(
        name="cam", url="rtsp://cam/x",
        zones={"left": [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]},
        lines={"gate": [[0.75, 0.1], [0.75, 0.9]]},
    )  # fmt: skip
    image = np.full((H, W, 3), GREY, np.uint8)
    draw_shapes(image, cam)
    assert (image[240, 100] > 128).all() and (image[240, 400] == GREY).all()
    assert (image[240, 320] > 230).all()  # the zone's right edge (anti-aliased)
    assert tuple(image[240, 480]) == (255, 0, 255)


class Client:
    """GET against the app served for real: uvicorn on a free port, on its own thread."""

    def __init__(self, port: int) -> None:
        self.port = port

    def get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                body = resp.read()
                code, hdrs, url = resp.status, resp.headers, resp.geturl()
        except urllib.error.HTTPError as exc:
            body, code, hdrs, url = exc.read(), exc.code, exc.headers, exc.geturl()
        return SimpleNamespace(
            status_code=code, headers=hdrs, url=url, content=body, text=body.decode(errors="replace"),
            json=lambda: json.loads(body),
        )  # fmt: skip


@pytest.fixture
def app_daemon(ring: FrameRing) -> Any:
    """A daemon as the app sees it: one camera with a password in its URL, a zone, a real ring and
    result pump; the model loaded and results flowing."""
    cam = CameraConfig(
        name="cam", url="rtsp://viewer:hunter2@cam.local/live", detect_fps=5,
        zones={"door": [[0.6, 0.6], [0.9, 0.6], [0.9, 0.9], [0.6, 0.9]]},
    )  # fmt: skip
    d = SimpleNamespace(ready=SimpleNamespace(device="cpu", half=False, backend="openvino", precision="fp32"))
    released: list[int] = []
    d.pump = pump = pump_for(ring, released)  # fed by hand below, not running
    d.vitals = lambda t: Vitals(2.0, ready=True, flowing=True)
    d.latest = pump.latest
    d.pipeline = pump.snapshot
    d.camera_status = lambda: [CameraStatus(cam, online=True, header=ring.header.copy())]
    d.camera_config = {"cam": cam}.get
    d.ring = fixed({"cam": ring})
    d.scheduler_stats = SchedulerStats
    d.events = lambda: ({}, {}, [{"type": "start", "rule": "r"}, {"type": "end"}])
    d.figures = lambda: Figures(mqtt_connected=True)
    return d


def test_app_answers(app_daemon: Any, ring: FrameRing) -> None:
    """1. /healthz `ok`; /metrics served where it is (no redirect); the page, its script, /api/events
       (newest first).
    2. /api/cameras: state, online, drops by reason, the URL without its password, no frame yet;
       latest.jpg is 503 before the first inferred frame and 404 for an unknown camera.
    3. A frame is inferred (red, one person box): latest.jpg is its JPEG with the box and the zone
       drawn; asked with its ETag, 304.
    4. A newer frame is inferred but leaves the ring before anyone asks: latest.jpg still shows the
       last picture drawn."""
    d, ring.header["state"] = app_daemon, State.STREAMING
    server = HttpServer(build_app(d, make_asgi_app(CollectorRegistry())), bind("127.0.0.1", 0))
    server.start()
    client = Client(server.port)
    try:
        r = client.get("/healthz")
        assert (r.status_code, r.text) == (200, "ok\n")
        r = client.get("/metrics")
        assert r.url.endswith("/metrics")  # not redirected to /metrics/, as a Mount would
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert "static/app.js" in client.get("/").text and client.get("/static/app.js").status_code == 200
        assert client.get("/api/events").json() == [{"type": "end"}, {"type": "start", "rule": "r"}]

        (cam,) = client.get("/api/cameras").json()
        assert cam["name"] == "cam" and cam["state"] == "streaming" and cam["online"] is True
        assert cam["url"] == "rtsp://***@cam.local/live" and cam["frame"] is None
        assert cam["dropped"] == {
            "stale": 0,
            "overwritten": 0,
            "failed": 0,
            "unattached": 0,
            "reshape": 0,
            "backend": 0,
        }
        assert client.get("/api/cameras/cam/latest.jpg").status_code == 503
        assert client.get("/api/cameras/nosuch/latest.jpg").status_code == 404

        write(ring, RED)
        d.pump._publish(result(take(ring)))
        r = client.get("/api/cameras/cam/latest.jpg")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        image = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (H, W, 3)
        assert np.abs(image[240, 160].astype(int) - COLOURS[0]).max() < 40  # the box's left edge
        assert np.abs(image[460, 620].astype(int) - RED).max() < 30  # outside the zone: the frame
        assert image[400, 520, 0] > 25 and image[400, 520, 2] > 200  # inside the zone: red, lightened
        assert client.get("/api/cameras").json()[0]["frame"]["objects"] == {"person": 1}
        etag = r.headers["etag"]
        assert client.get("/api/cameras/cam/latest.jpg", headers={"If-None-Match": etag}).status_code == 304

        write(ring, GREY)
        d.pump._publish(result(take(ring)))  # a newer frame, which leaves the ring before it is drawn
        d.pump._let_go(time.monotonic() + KEEP_S + 1)
        for _ in range(8):
            write(ring, GREY)
        again = client.get("/api/cameras/cam/latest.jpg")
        assert again.status_code == 200 and again.content == r.content
        assert again.headers["x-frame-seq"] == r.headers["x-frame-seq"]
    finally:
        server.stop()
