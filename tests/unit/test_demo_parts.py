"""The parts of `vistream demo`: generated footage, the embedded MQTT broker, the live table."""

from __future__ import annotations

import io
import queue
import socket
import threading
import time
from pathlib import Path

import av
import paho.mqtt.client as mqtt
import pytest

from vistream.demo import footage, run
from vistream.demo.broker import EmbeddedBroker
from vistream.demo.table import (
    CameraRow,
    LiveTable,
    RecentEvents,
    SeenEvent,
    describe_event,
    format_objects,
    render,
)
from vistream.events.geometry import Line, Zone, anchor

CLIP_SECONDS = 2


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return footage.ensure_clips(tmp_path_factory.mktemp("demo-cache"), 2, seconds=CLIP_SECONDS)


# --- footage ---------------------------------------------------------------------------------


def test_clips_decode_with_expected_frames_size_and_rate(clips: list[Path]) -> None:
    """Two generated clips are H.264 MP4s PyAV decodes to 2 s x 25 fps of 1280x720 frames."""
    assert len(clips) == 2
    for path in clips:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = list(container.decode(stream))
            assert stream.codec_context.name == "h264"
            assert stream.average_rate == footage.FPS
        assert len(frames) == CLIP_SECONDS * footage.FPS
        assert (frames[0].width, frames[0].height) == (footage.WIDTH, footage.HEIGHT)
        # A keyframe every second, so a looping reader can seek and a late reader starts fast.
        assert [i for i, f in enumerate(frames) if f.key_frame] == [0, footage.FPS]


def test_second_call_reuses_clips(clips: list[Path]) -> None:
    """1. Clips exist from a first call. 2. A second call returns the same paths. 3. No file was
    rewritten (mtimes unchanged), so later demo runs start without regenerating."""
    before = [p.stat().st_mtime_ns for p in clips]
    again = footage.ensure_clips(clips[0].parent, 2, seconds=CLIP_SECONDS)
    assert again == clips
    assert [p.stat().st_mtime_ns for p in again] == before


def test_unreadable_clip_is_regenerated_and_no_temp_file_remains(tmp_path: Path) -> None:
    """1. A clip file holds garbage (e.g. from an older broken run). 2. ensure_clips replaces it
    with a decodable clip. 3. Only final clip names are left in the cache directory."""
    path = footage.clip_path(tmp_path, 0, seconds=1)
    path.write_bytes(b"not an mp4")
    [result] = footage.ensure_clips(tmp_path, 1, seconds=1)
    assert result == path
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == footage.FPS
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("count", [0, 5])
def test_clip_count_out_of_range_is_rejected(tmp_path: Path, count: int) -> None:
    """The demo has 1 to 4 cameras; any other count is a usage error, not an empty list."""
    with pytest.raises(ValueError, match=r"1\.\.4"):
        footage.ensure_clips(tmp_path, count)


def test_default_cache_dir_honours_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$XDG_CACHE_HOME wins; unset, the cache lives under ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert footage.default_cache_dir() == tmp_path / "vistream" / "demo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert footage.default_cache_dir() == Path.home() / ".cache" / "vistream" / "demo"


def test_yolo_sees_people_and_the_bus(clips: list[Path], model_path: Path) -> None:
    """YOLOv8n finds persons (and the bus in the bus clip) at conf > 0.5 in frames across each
    clip, so the demo shows detections and not an empty table."""
    from ultralytics import YOLO

    model = YOLO(str(model_path))
    for path, expected in zip(clips, ({"person", "bus"}, {"person"}), strict=True):
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
        picks = [frames[len(frames) * k // 4] for k in (1, 2, 3)]
        for result in model(picks, verbose=False, conf=0.5):
            labels = {result.names[int(c)] for c in result.boxes.cls}
            assert expected <= labels, f"{path.name}: {labels}"


def test_scenes_fit_the_footage(clips: list[Path], model_path: Path) -> None:
    """Over one loop of each clip (every 5th frame), YOLOv8n puts people's feet (the bottom-centre
    the rules use) both inside and outside the clip's zone, and on both sides of its line within
    the line's extent: the demo's zone and line rules have something to fire on."""
    from ultralytics import YOLO

    model = YOLO(str(model_path))
    every = footage.ensure_clips(clips[0].parent, footage.MAX_CLIPS, seconds=CLIP_SECONDS)
    for index, path in enumerate(every):
        scene = footage.scene(index)
        zone, line = Zone("area", scene.zone), Line("line", *scene.line)
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)][::5]
        feet = [
            anchor(tuple(box), footage.WIDTH, footage.HEIGHT)
            for result in model(frames, verbose=False, conf=0.5)
            for box, cls in zip(result.boxes.xyxy.tolist(), result.boxes.cls.tolist(), strict=True)
            if result.names[int(cls)] == "person"
        ]
        assert {zone.covers(p) for p in feet} == {True, False}, path.name
        assert {line.side(p) for p in feet if _within(line, p)} >= {-1, 1}, path.name


def _within(line: Line, point: tuple[float, float]) -> bool:
    """Whether the point's projection onto the line falls between its two ends."""
    (x1, y1), (x2, y2) = line.p1, line.p2
    t = ((point[0] - x1) * (x2 - x1) + (point[1] - y1) * (y2 - y1)) / ((x2 - x1) ** 2 + (y2 - y1) ** 2)
    return 0 <= t <= 1


def test_demo_config_watches_every_camera(clips: list[Path], tmp_path: Path) -> None:
    """The demo's config is valid, gives each camera its clip's zone and line, applies both rules
    to every camera, and keeps its state in the directory it is given (not /var/lib/vistream)."""
    cfg = run.demo_config("yolov8n.pt", clips, 1883, "cpu", tmp_path / "state")
    assert cfg.state_dir == tmp_path / "state"
    for index, cam in enumerate(cfg.cameras):
        scene = footage.scene(index)
        assert cam.zones == {run.ZONE: list(scene.zone)}
        assert cam.lines == {run.LINE: scene.line}
    assert [cfg.rule_cameras(rule) for rule in cfg.alerts] == [[c.name for c in cfg.cameras]] * 2


# --- broker ----------------------------------------------------------------------------------


def _client(client_id: str) -> mqtt.Client:
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)


def _port_free(port: int) -> bool:
    try:
        socket.create_server(("127.0.0.1", port)).close()
    except OSError:
        return False
    return True


def test_broker_retained_qos1_and_last_will() -> None:
    """1. The broker starts on port 0 and reports the bound port.
    2. Client A, with a Last Will, publishes a retained QoS 1 `online` and gets its PUBACK.
    3. Client B subscribes afterwards and receives the retained `online`.
    4. A's socket dies without DISCONNECT: B receives A's will `offline`.
    5. stop(), with B still connected, returns within seconds; its thread is gone and the port
       can be bound again."""
    broker = EmbeddedBroker(port=0)
    port = broker.start()
    assert port > 0
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    a, b = _client("demo-test-a"), _client("demo-test-b")
    try:
        a.will_set("vistream/test/status", b"offline", qos=1, retain=True)
        a.connect("127.0.0.1", port, keepalive=30)
        a.loop_start()
        info = a.publish("vistream/test/status", b"online", qos=1, retain=True)
        info.wait_for_publish(timeout=5)
        assert info.is_published()

        b.on_connect = lambda client, *_: client.subscribe("vistream/test/#", qos=1)
        b.on_message = lambda _client, _userdata, message: received.put(message)
        b.connect("127.0.0.1", port, keepalive=30)
        b.loop_start()
        first = received.get(timeout=5)
        assert (first.topic, first.payload, first.retain, first.qos) == (
            "vistream/test/status",
            b"online",
            True,
            1,
        )

        a.loop_stop()  # stops paho's thread without sending DISCONNECT
        a.socket().shutdown(socket.SHUT_RDWR)
        will = received.get(timeout=5)
        assert (will.topic, will.payload) == ("vistream/test/status", b"offline")
    finally:
        a.loop_stop()
        started = time.monotonic()
        broker.stop()  # B is still connected: stop must not wait for clients to leave
        stop_s = time.monotonic() - started
        b.loop_stop()
        for client in (a, b):
            if (sock := client.socket()) is not None:
                sock.close()
    assert stop_s < 3.0
    assert not [t for t in threading.enumerate() if t.name == "vistream-mqtt-broker"]
    assert _port_free(port)


def test_broker_falls_back_when_port_busy() -> None:
    """1. Something already listens on the requested port. 2. start() binds another free port
    instead of failing, and the context manager stops it again."""
    with socket.create_server(("127.0.0.1", 0)) as busy:
        taken = busy.getsockname()[1]
        with EmbeddedBroker(port=taken) as broker:
            assert broker.port not in (None, taken)
            with socket.create_connection(("127.0.0.1", broker.port), timeout=2):
                pass
        assert _port_free(broker.port)


# --- table -----------------------------------------------------------------------------------


def _rows() -> list[CameraRow]:
    return [
        CameraRow("front", True, 25.0, 5.0, 2, 1, {"bus": 1, "person": 3}, events=4, line_in=12, line_out=3),
        CameraRow("yard", False, 0.0, 0.0, 0, 7, {}),
    ]


def test_render_shows_every_cell() -> None:
    """Header with elapsed time and broker, one line per camera with status, rates, both drop
    counters, events started, line crossings in/out (`-`: the camera has no line) and objects most
    frequent first, then the totals footer."""
    text = render(
        _rows(),
        elapsed_s=3725,
        broker="127.0.0.1:1883",
        totals={"fps_inferred": 10.0, "mean_batch": 2.0, "p50_latency_ms": 41.6},
        width=100,
    )
    header, columns, front, yard, footer = text.splitlines()
    assert "1:02:05" in header and "127.0.0.1:1883" in header
    assert columns.split()[:2] == ["camera", "status"]
    assert columns.split()[-3:] == ["events", "in/out", "objects"]
    assert front.split() == ["front", "online", "25.0", "5.0", "2", "1", "4", "12/3", "person×3", "bus×1"]
    assert yard.split() == ["yard", "offline", "0.0", "0.0", "0", "7", "0", "-"]
    assert "10.0 fps" in footer and "2.00" in footer and "42 ms" in footer


@pytest.mark.parametrize("width", [40, 60, 80, 120])
def test_long_object_lists_are_cut_to_the_width(width: int) -> None:
    """Many labels never push a line past the width, also on a terminal narrower than the fixed
    columns; the most frequent label comes first and the cut shows as `…`."""
    many = {f"label{i}": 20 - i for i in range(20)}
    rows = [CameraRow("cam", True, 25.0, 5.0, 0, 0, many)]
    lines = render(rows, elapsed_s=0, broker="b", width=width).splitlines()
    assert max(len(line) for line in lines) <= width
    assert lines[2].endswith("…")
    assert width < 80 or "label0×20" in lines[2]


def _event(**fields: object) -> dict[str, object]:
    doc: dict[str, object] = {"type": "start", "id": "e1", "camera": "front", "rule": "person_in_area"}
    doc |= {"label": "person", "track_id": 7, "zone": "area", "count": None}
    return doc | fields


def _line_event(**fields: object) -> dict[str, object]:
    doc = _event(rule="person_crossing", line="gate", direction="both", count=1)
    del doc["zone"]
    return doc | fields


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (_event(), "person #7 in area"),
        (_event(track_id=None, count=3), "3 person in area"),  # a min_count event
        (_event(track_id=None, count=2, label=None), "2 objects in area"),
        (_event(zone=None), "person #7"),  # a whole-frame rule
        (_line_event(), "person #7 crossed gate"),
        (_line_event(type="update", count=4, track_id=9), "person #9 crossed gate (4 crossings)"),
    ],
)
def test_describe_event(doc: dict[str, object], expected: str) -> None:
    """One event payload in a few words: who (label and track, or the count), where."""
    assert describe_event(doc) == expected


def test_render_lists_recent_events_under_the_table() -> None:
    """1. Without events yet the section says so in one line.
    2. With events, one line each, oldest first: the time the demo saw it, camera, rule, type and
       what it is about, in aligned columns.
    3. A narrow terminal cuts the event lines too; none is longer than the width."""
    empty = render(_rows(), elapsed_s=1, broker="b", recent=[], width=100)
    assert empty.splitlines()[-1] == "recent events: none yet"

    at = 1_700_000_000.0
    recent = [
        SeenEvent(at, _event()),
        SeenEvent(at + 61, _line_event(type="update", count=3, camera="yard")),
    ]
    lines = render(_rows(), elapsed_s=1, broker="b", recent=recent, width=100).splitlines()
    assert lines[-3] == "recent events"
    first, second = lines[-2], lines[-1]
    clock = [time.strftime("%H:%M:%S", time.localtime(t)) for t in (at, at + 61)]
    assert first.split() == [clock[0], "front", "person_in_area", "start", "person", "#7", "in", "area"]
    assert second.split()[:4] == [clock[1], "yard", "person_crossing", "update"]
    assert second.endswith("person #7 crossed gate (3 crossings)")
    assert first.index("start") == second.index("update")  # columns line up

    narrow = render(_rows(), elapsed_s=1, broker="b", recent=recent, width=40).splitlines()
    assert max(len(line) for line in narrow) <= 40 and narrow[-1].endswith("…")


def test_recent_events_stamps_each_event_once() -> None:
    """The daemon hands over its whole recent list (bounded: old ones fall off the front) each tick.
    1. The first list: every event is new, stamped with the clock.
    2. The same list again: nothing new, stamps unchanged.
    3. Two events appended and the oldest fallen off: only those two are new, with the new time.
    4. Only the last `keep` are returned, oldest first."""
    now = [100.0]
    recent = RecentEvents(keep=3, clock=lambda: now[0])
    a, b, c, d = (_event(id=x) for x in "abcd")
    assert recent.update([a, b]) == [SeenEvent(100.0, a), SeenEvent(100.0, b)]
    now[0] = 101.0
    assert recent.update([a, b]) == [SeenEvent(100.0, a), SeenEvent(100.0, b)]
    now[0] = 102.0
    b_update = _event(id="b", type="update")
    assert recent.update([b, c, b_update]) == [
        SeenEvent(100.0, b),
        SeenEvent(102.0, c),
        SeenEvent(102.0, b_update),
    ]
    now[0] = 103.0
    shown = recent.update([c, b_update, d])
    assert shown == [SeenEvent(102.0, c), SeenEvent(102.0, b_update), SeenEvent(103.0, d)]


@pytest.mark.parametrize(
    ("objects", "width", "expected"),
    [
        ({"person": 3, "bus": 1}, 40, "person×3 bus×1"),
        ({"person": 3, "bus": 1, "car": 1}, 12, "person×3 …"),
        ({"motorcycle": 12}, 6, "motor…"),
        ({"person": 3, "bus": 1}, 9, "person×3…"),
        ({}, 10, ""),
    ],
)
def test_format_objects(objects: dict[str, int], width: int, expected: str) -> None:
    """Ordering by count, cutting at whole items, and cutting a single item that cannot fit."""
    assert format_objects(objects, width) == expected


def test_live_table_throttles_when_not_a_tty() -> None:
    """1. On a pipe the first table prints at once. 2. Updates within 5 s are skipped. 3. After
    5 s the next one prints. 4. force=True prints regardless (the final table). No ANSI codes."""
    now = [0.0]
    out = io.StringIO()
    live = LiveTable(out, clock=lambda: now[0])
    live.update("t1")
    now[0] = 4.0
    live.update("t2")
    now[0] = 5.5
    live.update("t3")
    live.update("t4", force=True)
    assert out.getvalue() == "t1\n\nt3\n\nt4\n"


def test_live_table_redraws_in_place_on_a_tty() -> None:
    """On a terminal the second draw moves the cursor up over the first one and clears leftovers."""
    out = io.StringIO()
    live = LiveTable(out, tty=True)
    live.update("a\nb")
    live.update("c")
    assert out.getvalue() == "a\x1b[K\nb\x1b[K\n\x1b[J" + "\x1b[2Fc\x1b[K\n\x1b[J"
