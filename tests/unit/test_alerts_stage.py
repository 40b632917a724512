"""The alerts stage (vistream/outputs/alerts.py): engine results into the outbox, snapshots, restarts.

A real Outbox in tmp_path and a real ring in /dev/shm; frames are 320x240 at 10 fps on a fake
clock. Camera `front` has its lower half as zone `yard` and a horizontal line `mid` across it.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from support.rings import temp_ring

from vistream.config.models import CameraConfig, Config
from vistream.ops.process import StopFlag
from vistream.outputs.alerts import LAST_SEEN_EVERY_S, Alerts
from vistream.outputs.outbox import Outbox, Row
from vistream.outputs.results import ResultPump
from vistream.ring.lifetime import fixed
from vistream.ring.shm import FrameRing
from vistream.scheduler.messages import BatchResult, FrameResult
from vistream.sources.reader import CameraReader, ReaderSpec

W, H = 320, 240
WALL0 = 1_763_700_000.0
NAMES = {0: "person"}


def config(model: str = "yolov8n.pt", labels: list[str] | None = None) -> Config:
    return Config.model_validate(
        {
            "model": {"path": model},
            "mqtt": {"topic_prefix": "vs"},
            "cameras": [
                {
                    "name": "front",
                    "url": "rtsp://cam.local/front",
                    "detect_fps": 10,
                    "zones": {"yard": [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]},
                    "lines": {"mid": [[0, 0.5], [1, 0.5]]},
                }
            ],
            "alerts": [
                {"name": "in_yard", "labels": labels or ["person"], "zone": "yard", "end_after_s": 1},
            ],
        }
    )


@pytest.fixture
def ring() -> Iterator[FrameRing]:
    with temp_ring(6) as r:
        yield r


def shade(seq: int) -> int:
    """The grey level of frame `seq`: each frame its own, so a snapshot tells which frame it shows."""
    return 20 + 30 * seq


def write_frames(ring: FrameRing, tmp_path: Path, n: int) -> None:
    """n grey camera frames into the ring, seq 1..n, each of its own shade (`shade(seq)`)."""
    cam = CameraConfig(name="front", url=str(tmp_path / "clip.mp4"), detect_fps=10)
    reader = CameraReader(ReaderSpec(cam, ring.name, threading.Semaphore(0)), ring, StopFlag())
    for seq in range(1, n + 1):
        grey = av.VideoFrame.from_ndarray(np.full((H, W, 3), shade(seq), np.uint8), format="rgb24")
        reader._write(grey.reformat(format="yuv420p"), WALL0 + (seq - 1) / 10, (seq - 1) / 10)


def frame(seq: int, y: float | None) -> FrameResult:
    """Frame `seq` (t = seq / 10 s) with a person whose bottom-centre is at (160, y), or nobody."""
    dets = [] if y is None else [(0, 0.9, 140.0, y - 60, 180.0, y)]
    return FrameResult("front", seq, WALL0 + seq / 10, seq / 10, W, H, dets)


def rows(outbox: Outbox) -> list[Row]:
    return outbox.pending_rows(limit=10_000)


def test_an_event_goes_into_the_outbox_snapshot_first(ring: FrameRing, tmp_path: Path) -> None:
    """1. Start: every rule's `active` is OFF and every line counter at 0, retained.
    2. A person walks down into the yard (crossing `mid` in): the frame that starts the event is
       rendered from the ring, and its snapshot row comes before the start event's rows.
    3. The person vanishes: 1 s later the event ends; the open event is gone from the state."""
    write_frames(ring, tmp_path, 6)  # a 6-slot ring keeps them all
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    alerts = Alerts(config(), outbox, fixed({"front": ring}))
    assert alerts.bind(NAMES) == [] and alerts.flush()
    start = [(r.topic, r.payload) for r in rows(outbox)]
    last = rows(outbox)[-1].id
    assert start == [
        ("vs/front/in_yard/active", b"OFF"),
        ("vs/front/mid/in/count", b"0"),
        ("vs/front/mid/out/count", b"0"),
    ]
    for seq, y in enumerate([100, 110, 130, 150, 160, 170], start=1):
        objects = alerts.process(frame(seq, y))
        assert objects is not None and len(objects) == 1
    for seq in range(7, 20):
        alerts.process(frame(seq, None))
    assert alerts.flush()
    topics = [r.topic for r in rows(outbox) if r.id > last]
    snap = topics.index("vs/front/in_yard/snapshot")
    assert topics[snap + 1 : snap + 3] == ["vs/events", "vs/front/events"]
    assert "vs/front/mid/in/count" in topics
    events = [json.loads(r.payload) for r in rows(outbox) if r.topic == "vs/events"]
    assert events[0]["type"] == "start" and events[-1]["type"] == "end"
    assert events[0]["snapshot"] == "vs/front/in_yard/snapshot"
    jpeg = next(r.payload for r in rows(outbox) if r.kind == "snapshot")
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (H, W, 3)
    # The snapshot is the frame that started the event (its capture time is the event's start),
    # not a neighbour: its shade, away from the drawn box, is that frame's.
    start_seq = round((events[0]["started_at"] - WALL0) * 10)
    assert 1 <= start_seq <= 6
    assert abs(int(image[10, 10].mean()) - shade(start_seq)) < 8, (start_seq, image[10, 10])
    assert outbox.states("open/") == {}
    assert outbox.get_state("counter/front/mid/in") == "1"
    started, counters, recent = alerts.figures()
    assert started == {("front", "in_yard"): 1} and counters[("front", "mid", "in")] == 1
    assert recent[-1]["type"] == "end"


def test_a_frame_gone_from_the_ring_gives_an_event_without_snapshot(ring: FrameRing, tmp_path: Path) -> None:
    """The start frame was never in the ring (or was overwritten): the event says `snapshot: null`,
    also in its later messages, and the loss is counted."""
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    alerts = Alerts(config(), outbox, fixed({"front": ring}))
    alerts.bind(NAMES)
    for seq in range(1, 4):
        alerts.process(frame(seq, 200))
    assert alerts.flush()
    events = [json.loads(r.payload) for r in rows(outbox) if r.topic == "vs/events"]
    assert events and all(e["snapshot"] is None for e in events)
    assert alerts.snapshots_lost == 1 and not any(r.kind == "snapshot" for r in rows(outbox))


def test_after_a_restart_counters_go_on_and_open_events_are_ended(ring: FrameRing, tmp_path: Path) -> None:
    """1. A run counts a crossing and starts an event, then stops without ending it (killed).
    2. The next run on the same outbox publishes the counter's stored value (not 0) and ends
       the open event with reason `restart`; its engine counts on from there."""
    write_frames(ring, tmp_path, 6)
    path = tmp_path / "outbox.sqlite3"
    first = Alerts(config(), Outbox(path), fixed({"front": ring}))
    first.bind(NAMES)
    for seq, y in enumerate([100, 110, 130, 150], start=1):
        first.process(frame(seq, y))
    first.stop()
    open_ids = set(first.outbox.states("open/")) if first.outbox else set()
    assert len(open_ids) == 1
    first.outbox.close()  # type: ignore[union-attr]

    outbox = Outbox(path)
    last = rows(outbox)[-1].id
    second = Alerts(config(), outbox, fixed({"front": ring}))
    second.bind(NAMES)
    assert second.flush()
    new = [r for r in rows(outbox) if r.id > last]
    ends = [json.loads(r.payload) for r in new if r.topic == "vs/events"]
    assert [(e["type"], e["reason"]) for e in ends] == [("end", "restart")]
    assert {f"open/{e['id']}" for e in ends} == open_ids
    assert ("vs/front/mid/in/count", b"1") in [(r.topic, r.payload) for r in new]
    assert outbox.states("open/") == {}
    assert second.engine is not None and second.engine.counters[("front", "mid", "in")] == 1


def test_labels_a_custom_model_lacks_are_reported_at_bind(tmp_path: Path) -> None:
    """A custom model's labels are only known once loaded: a rule naming another is a problem by key."""
    alerts = Alerts(config(model="custom.pt", labels=["person"]), None, fixed({}))
    assert alerts.bind({0: "widget", 1: "gadget"}) == [
        "alerts[0].labels[0]: 'person' is not a class the model reports"
    ]
    assert alerts.engine is None
    assert alerts.bind({0: "person"}) == [] and alerts.engine is not None


class Publisher:
    """What the result pump needs of MqttPublisher: detections are handed over, nothing else."""

    prefix = "vs"

    def publish(self, topic: str, payload: bytes, kind: str) -> bool:
        return True


def events_of(outbox: Outbox) -> list[dict[str, object]]:
    return [json.loads(r.payload) for r in rows(outbox) if r.topic == "vs/events"]


def test_frames_whose_outbox_write_failed_are_written_when_it_works_again(tmp_path: Path) -> None:
    """1. The outbox cannot be written (read-only: what a full or remounted disk gives).
    2. A person walks down into the yard (crossing `mid`), stays 1 s and leaves: the event starts,
       updates and ends, the counter counts, all while every write fails.
    3. The outbox works again: everything is written, in order: the start before its updates and
       end, `active` OFF, the counter's new value; nothing was lost, the open event is closed."""
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    alerts = Alerts(config(), outbox, fixed({}))
    pump = ResultPump(Publisher(), lambda: None, fixed({}), alerts=alerts)  # type: ignore[arg-type]
    alerts.bind(NAMES)
    assert alerts.flush()
    last = rows(outbox)[-1].id
    outbox._db.execute("PRAGMA query_only = 1")
    ys = [100, 110, 130, 150, 160, 170] + [170 + (i % 2) * 40 for i in range(10)] + [None] * 15
    for seq, y in enumerate(ys, start=1):
        pump._publish(BatchResult([frame(seq, y)]))
    alerts.flush(0.5)
    assert rows(outbox)[-1].id == last
    outbox._db.execute("PRAGMA query_only = 0")
    assert alerts.flush()
    new = [r for r in rows(outbox) if r.id > last]
    kinds = [json.loads(r.payload)["type"] for r in new if r.topic == "vs/events"]
    assert kinds[0] == "start" and kinds[-1] == "end" and "update" in kinds
    # ON was replaced by OFF before it went out, as the outbox does with unsent retained states
    assert [r.payload for r in new if r.topic == "vs/front/in_yard/active"] == [b"OFF"]
    assert [r.payload for r in new if r.topic == "vs/front/mid/in/count"] == [b"1"]
    assert outbox.states("open/") == {} and outbox.get_state("counter/front/mid/in") == "1"
    assert pump.alert_errors == 0
    assert alerts.writer is not None and alerts.writer.failures >= 1 and not alerts.writer.dropped
    alerts.stop()


def test_a_stall_reads_the_queued_frames_before_ending_events(tmp_path: Path) -> None:
    """1. A person stands in the yard; their event (end_after_s 1) runs, frames 5 s old by now.
    2. The results thread stalled: 3 s of frames that still show the person are queued.
    3. The thread resumes: it reads them before ending anything, so the event goes on (no end,
       no second start); it ends once the queue is read, as of the last frame that showed them."""
    t0 = time.monotonic() - 5.0

    def at(seq: int) -> FrameResult:
        dets = [(0, 0.9, 140.0, 140.0, 180.0, 200.0)]
        return FrameResult("front", seq, WALL0 + seq / 10, t0 + seq / 10, W, H, dets)

    backlog: queue.Queue[BatchResult] = queue.Queue()
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    alerts = Alerts(config(), outbox, fixed({}))
    pump = ResultPump(Publisher(), lambda: backlog, fixed({}), alerts=alerts)  # type: ignore[arg-type]
    alerts.bind(NAMES)
    for seq in range(1, 16):
        pump._publish(BatchResult([at(seq)]))
    for seq in range(16, 46):
        backlog.put(BatchResult([at(seq)]))
    pump.start()
    deadline = time.monotonic() + 5
    while (backlog.qsize() or not any(e["type"] == "end" for e in events_of(outbox))) and (
        time.monotonic() < deadline
    ):
        alerts.flush()
        time.sleep(0.05)
    pump.stop()
    events = events_of(outbox)
    assert [e["type"] for e in events if e["type"] != "update"] == ["start", "end"]
    assert events[-1]["ended_at"] == round(WALL0 + 4.5, 3)


def without_lines_and_rules() -> Config:
    cfg = config()
    cfg.cameras[0] = cfg.cameras[0].model_copy(update={"lines": {}})
    return cfg.model_copy(update={"alerts": []})


def killed(alerts: Alerts) -> None:
    """What survives a kill: what was written (the writer's queue is gone with the process)."""
    assert alerts.flush()
    alerts.stop()
    assert alerts.outbox is not None
    alerts.outbox.close()


def test_an_event_ended_by_a_restart_ends_when_its_object_was_last_seen(tmp_path: Path) -> None:
    """1. A person walks into the yard and stays 10 s; the result thread ticks as it does (0.5 s).
    2. The power goes; the box comes back 3 hours later.
    3. The restart ends the event as of the last time the person was seen (to within
       LAST_SEEN_EVERY_S), not 3 hours later."""
    path = tmp_path / "outbox.sqlite3"
    first = Alerts(config(), Outbox(path), fixed({}))
    first.bind(NAMES)
    for seq in range(1, 101):
        first.process(frame(seq, 200))
        if seq % 5 == 0:
            first.tick(seq / 10)
    killed(first)

    outbox = Outbox(path)
    second = Alerts(config(), outbox, fixed({}), clock=lambda: WALL0 + 3 * 3600)
    second.bind(NAMES)
    assert second.flush()
    end = events_of(outbox)[-1]
    assert (end["type"], end["reason"]) == ("end", "restart")
    assert WALL0 + 10.0 - LAST_SEEN_EVERY_S <= end["ended_at"] <= WALL0 + 10.0  # type: ignore[operator]
    second.stop()


def test_a_line_removed_and_added_again_by_reloads_goes_on_from_its_count(tmp_path: Path) -> None:
    """1. A person crosses `mid`: its `in` counter is 1.
    2. A reload removes the line, another adds it back.
    3. The counter goes on from 1, as after a restart, and the retained topic says so."""
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    alerts = Alerts(config(), outbox, fixed({}))
    alerts.bind(NAMES)
    for seq, y in enumerate([100, 110, 130, 150], start=1):
        alerts.process(frame(seq, y))
    for seq, cfg in enumerate([without_lines_and_rules(), config()], start=5):
        alerts.reconfigure(cfg)
        alerts.process(frame(seq, None))
    assert alerts.flush()
    assert alerts.engine is not None and alerts.engine.counters[("front", "mid", "in")] == 1
    counts = [r.payload for r in rows(outbox) if r.topic == "vs/front/mid/in/count"]
    assert counts[-1] == b"1"
    alerts.stop()


def test_an_outbox_opened_late_by_a_reload_ends_the_previous_runs_open_events(tmp_path: Path) -> None:
    """1. A run with a rule starts an event and is killed.
    2. The next run starts with a config without rules or lines: no outbox.
    3. A reload brings the rule back: the outbox opens late, and the event left open by the first
       run is ended (`restart`) as a restart with that config would have done; the line
       counter goes on from its stored value."""
    path = tmp_path / "outbox.sqlite3"
    first = Alerts(config(), Outbox(path), fixed({}))
    first.bind(NAMES)
    for seq, y in enumerate([100, 110, 130, 150], start=1):
        first.process(frame(seq, y))
    killed(first)

    second = Alerts(without_lines_and_rules(), None, fixed({}))
    second.bind(NAMES)
    second.process(frame(1, None))
    outbox = Outbox(path)
    last = rows(outbox)[-1].id
    second.reconfigure(config(), outbox)
    second.process(frame(2, None))
    assert second.flush()
    new = [r for r in rows(outbox) if r.id > last]
    ends = [json.loads(r.payload) for r in new if r.topic == "vs/events"]
    assert [(e["type"], e["reason"]) for e in ends] == [("end", "restart")]
    assert outbox.states("open/") == {}
    assert ("vs/front/mid/in/count", b"1") in [(r.topic, r.payload) for r in new]
    second.stop()
