"""Logs for people and for log shippers: the text and JSON formatters, the camera on every camera
line (also from a child process, through the log hub), the journal, and the offline warning."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vistream.config.models import Config
from vistream.events.engine import FrameOutcome
from vistream.events.rules import Event
from vistream.ops.cameras import OFFLINE_WARN_S, CameraRuntime, Cameras
from vistream.ops.logs import JsonFormatter, LogHub, PipeHandler, TextFormatter, make_formatter, on_journal
from vistream.ops.process import SPAWN, Child, StopFlag
from vistream.outputs.alerts import Alerts, describe
from vistream.ring.lifetime import fixed
from vistream.ring.shm import RingLayout, State


def record(
    msg: str, *args: Any, level: int = logging.WARNING, exc: bool = False, **extra: Any
) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad frame")
        except ValueError as e:
            exc_info = (type(e), e, e.__traceback__)
    rec = logging.LogRecord("vistream.sources.reader", level, __file__, 1, msg, args or None, exc_info)
    rec.processName = "reader door"
    rec.__dict__.update(extra)
    return rec


@pytest.mark.parametrize(
    ("msg", "args", "extra", "expected"),
    [
        ("camera %s: timed out", ("door",), {"camera": "door"}, "camera door: timed out"),  # not doubled
        ("reconnecting in %.1fs", (2.0,), {"camera": "door"}, "camera door: reconnecting in 2.0s"),
        ("model warm after %.1fs", (1.5,), {}, "model warm after 1.5s"),  # no camera, no prefix
    ],
)
def test_text_puts_the_camera_before_every_camera_message(
    msg: str, args: tuple[Any, ...], extra: dict[str, Any], expected: str
) -> None:
    line = TextFormatter().format(record(msg, *args, **extra))
    assert line.endswith(f" WARNING [reader door] vistream.sources.reader: {expected}")
    datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")  # starts with its timestamp


def test_text_appends_the_traceback_after_its_line() -> None:
    lines = TextFormatter().format(record("decode failed", camera="door", exc=True)).splitlines()
    assert lines[0].endswith("camera door: decode failed")
    assert lines[1] == "Traceback (most recent call last):" and lines[-1] == "ValueError: bad frame"


def test_text_for_the_journal_has_no_timestamp_and_a_priority_on_every_line() -> None:
    """journald stamps lines itself and files each under the `<N>` priority it starts with."""
    fmt = TextFormatter(journal=True)
    assert fmt.format(record("up", level=logging.INFO, camera="door")) == (
        "<6>INFO    [reader door] vistream.sources.reader: camera door: up"
    )
    lines = fmt.format(record("decode failed", level=logging.ERROR, exc=True)).splitlines()
    assert lines[0].startswith("<3>ERROR ") and len(lines) > 2
    assert all(line.startswith("<3>") for line in lines)


def test_json_has_one_object_per_line_with_the_camera_as_a_field() -> None:
    rec = record("camera %s: opened %s", "door", "rtsp://***@cam/s1", camera="door")
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc == {
        "time": doc["time"],
        "level": "WARNING",
        "logger": "vistream.sources.reader",
        "process": "reader door",
        "message": "opened rtsp://***@cam/s1",  # the prefix is the field now
        "camera": "door",
    }
    assert doc["time"].endswith("Z")
    assert datetime.fromisoformat(doc["time"]).timestamp() == pytest.approx(rec.created, abs=0.001)


def test_json_keeps_a_traceback_in_one_string_and_leaves_out_fields_it_lacks() -> None:
    doc = json.loads(JsonFormatter().format(record("decode failed", level=logging.ERROR, exc=True)))
    assert "camera" not in doc and "rule" not in doc
    assert doc["message"] == "decode failed"
    assert doc["exc_info"].startswith("Traceback") and doc["exc_info"].endswith("ValueError: bad frame")


def test_json_event_lines_carry_rule_and_event_id() -> None:
    rec = record("camera %s: event start", "door", camera="door", rule="r", event_id="e1", frame=object())
    doc = json.loads(JsonFormatter().format(rec))
    assert (doc["camera"], doc["rule"], doc["event_id"]) == ("door", "r", "e1")
    assert doc["message"] == "event start"
    assert "frame" not in doc


def test_journal_detected_only_when_journal_stream_names_this_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd sets JOURNAL_STREAM=DEV:INODE of the stream it connected; a redirect elsewhere keeps
    the timestamps (systemd.exec(5))."""
    with open(tmp_path / "log", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert on_journal(stream) and not on_journal(other)
        assert isinstance(make_formatter("text", stream), TextFormatter)
        assert make_formatter("text", stream).journal  # type: ignore[attr-defined]
        assert not make_formatter("text", other).journal  # type: ignore[attr-defined]
        assert not on_journal(io.StringIO())  # no file descriptor
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not on_journal(stream)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not on_journal(stream)
    assert isinstance(make_formatter("json", io.StringIO()), JsonFormatter)
    with pytest.raises(ValueError, match="xml"):
        make_formatter("xml", io.StringIO())


def test_a_child_record_keeps_its_fields_through_the_pipe_and_drops_what_does_not_pickle() -> None:
    """1. A child logs with args, a traceback, its process context (camera) and an `extra=` field
       that cannot be pickled.
    2. The parent receives one record: message merged, traceback as text, camera and the plain
       fields kept, the unpicklable one left out (it would have ended the sender thread)."""
    r, w = SPAWN.Pipe(duplex=False)
    handler = PipeHandler(w, context={"camera": "door"})
    try:
        handler.handle(record("frame %d: %s", 7, "bad", exc=True, rule="r1", lock=threading.Lock()))
        handler.handle(record("camera %s: own camera", "yard", camera="yard"))
        assert r.poll(5)
        got = r.recv()
        assert got.getMessage() == "frame 7: bad" and got.exc_info is None
        assert got.exc_text.endswith("ValueError: bad frame")
        assert (got.camera, got.rule, hasattr(got, "lock")) == ("door", "r1", False)
        assert r.poll(5)
        assert r.recv().camera == "yard"  # a record's own field wins over the process context
        text = TextFormatter().format(got)
        assert "camera door: frame 7: bad\nTraceback" in text
    finally:
        handler.close()
        r.close()


def child_that_logs(*, stop: StopFlag) -> int:
    """Runs in a spawned child (this module is imported there)."""
    log = logging.getLogger("vistream.sources.reader")
    log.info("opened %s", "file.mp4")
    try:
        raise ValueError("bad frame")
    except ValueError:
        log.exception("decode failed")
    return 0


def test_a_reader_child_tags_every_record_with_its_camera_on_the_way_to_the_parent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. A child started like a reader (`log_context`: its camera) logs a line and a traceback.
    2. Both reach the parent's loggers through the log hub with `camera`, the child's process
       name, and the traceback as text that the JSON formatter puts in `exc_info`."""
    hub = LogHub()
    hub.start()
    child = Child("reader door", child_that_logs, (), hub, logging.INFO, log_context={"camera": "door"})
    try:
        with caplog.at_level(logging.INFO, logger="vistream.sources.reader"):
            child.start()
            assert child.join(60) and child.exitcode == 0
            deadline = time.monotonic() + 10
            while len(caplog.records) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        child.stop(1.0)
        child.close()
        hub.stop()
    docs = [json.loads(JsonFormatter().format(rec)) for rec in caplog.records]
    assert [(d["message"], d["camera"], d["process"]) for d in docs] == [
        ("opened file.mp4", "door", "reader door"),
        ("decode failed", "door", "reader door"),
    ]
    assert docs[1]["exc_info"].endswith("ValueError: bad frame") and "exc_info" not in docs[0]


class FakeMqtt:
    def __init__(self) -> None:
        self.status: list[tuple[str, bool]] = []

    def camera_status(self, name: str, online: bool) -> None:
        self.status.append((name, online))


def test_a_camera_offline_for_a_minute_gets_one_warning_and_its_return_says_how_long(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On a fake clock, as the daemon's tick sees it:
    1. t=0 the camera is first seen offline (connecting): an INFO line.
    2. Still offline at t=59: nothing; at t=60: one WARNING with the reader's state; t=61..200: no
       more warnings.
    3. Online at t=200: an INFO line saying it was offline for 200 s.
    4. Offline again at t=300, back at t=310: no warning (under a minute), an INFO line for 10 s.
    Every line carries the camera."""
    cfg = Config.model_validate(
        {"mqtt": {"client_id": f"t{uuid.uuid4().hex[:6]}"}, "cameras": [{"name": "door", "url": "/dev/null"}]}
    )
    cameras, mqtt = Cameras("t", RingLayout(2, 32, 32), lambda cam, ring: None), FakeMqtt()  # type: ignore[arg-type, return-value]
    header = {"state": State.BACKOFF, "reconnects": 4}
    rt = CameraRuntime(cfg.cameras[0], SimpleNamespace(header=header), None)  # type: ignore[arg-type]
    timeline = [(0, False), (59, False), (OFFLINE_WARN_S, False), *((t, False) for t in range(61, 200))]
    timeline += [(200, True), (250, True), (300, False), (305, False), (310, True)]
    with caplog.at_level(logging.INFO, logger="vistream.ops.cameras"):
        for t, online in timeline:
            if cameras.observe(rt, online, 1000.0 + t):  # news: the daemon's tick announces it
                mqtt.camera_status(rt.name, online)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("INFO", "camera door: offline"),
        ("WARNING", "camera door: offline for 60s (reader backoff, 4 reconnects)"),
        ("INFO", "camera door: online, after 200s offline"),
        ("INFO", "camera door: offline"),
        ("INFO", "camera door: online, after 10s offline"),
    ]
    assert all(getattr(r, "camera", None) == "door" for r in caplog.records)
    assert mqtt.status == [("door", False), ("door", True), ("door", False), ("door", True)]


def event(**fields: Any) -> Event:
    base: dict[str, Any] = {
        "type": "start", "id": "e1", "camera": "door", "rule": "r", "label": "person", "track_id": 12,
        "zone": None, "line": None, "direction": None, "started_at": 100.0, "ended_at": None,
        "max_confidence": 0.9, "box": None, "count": None, "snapshot": None, "seq": 1,
    }  # fmt: skip
    return Event(**(base | fields))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"zone": "porch"}, "rule r, person #12 in zone porch (id e1)"),
        ({"type": "end", "ended_at": 108.24}, "rule r, person #12, 8.2s (id e1)"),
        (
            {"track_id": None, "count": 3, "zone": "porch"},
            "rule r, 3 x person in zone porch (id e1)",
        ),
        (
            {"line": "gate", "direction": "in", "count": 2},
            "rule r, person #12 crossing line gate (in), 2 crossing(s) (id e1)",
        ),
    ],
)
def test_an_event_line_says_what_was_seen_where(fields: dict[str, Any], expected: str) -> None:
    assert describe(event(**fields)) == expected


def test_the_alerts_stage_logs_one_line_per_event_start_and_end(caplog: pytest.LogCaptureFixture) -> None:
    """A frame causes a start, an update and an end: two INFO lines (updates go to MQTT only), each
    with the camera, rule and event id as fields."""
    cfg = Config.model_validate({"cameras": [{"name": "door", "url": "/dev/null"}]})
    alerts = Alerts(cfg, None, fixed({}))
    outcome = FrameOutcome(events=[event(), event(type="update"), event(type="end", ended_at=101.0)])
    with caplog.at_level(logging.INFO, logger="vistream.outputs.alerts"):
        alerts._queue(outcome)
    assert [r.getMessage() for r in caplog.records] == [
        "camera door: event start: rule r, person #12 (id e1)",
        "camera door: event end: rule r, person #12, 1.0s (id e1)",
    ]
    assert all((r.camera, r.rule, r.event_id) == ("door", "r", "e1") for r in caplog.records)  # type: ignore[attr-defined]
