"""Snapshots: the reader's plane, the scheduler's holds, and the JPEG of the very frame a result came from."""

from __future__ import annotations

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

from vistream.config.models import BatchingConfig, CameraConfig, ModelConfig
from vistream.detector import Detector
from vistream.ops.process import StopFlag
from vistream.outputs.snapshot import COLOURS, box_label, read_snapshot, render_snapshot, snapshot_jpeg
from vistream.ring.shm import FrameRing, RingConsumer
from vistream.scheduler.loop import Scheduler, SchedulerSpec
from vistream.sources.reader import CameraReader, ReaderSpec

RED, BLUE, GREY = (0, 0, 255), (255, 0, 0), (128, 128, 128)  # BGR


@pytest.fixture
def ring() -> Iterator[FrameRing]:
    with temp_ring() as r:
        yield r


def reader_for(ring: FrameRing, tmp_path: Path) -> CameraReader:
    cam = CameraConfig(name="cam", url=str(tmp_path / "clip.mp4"), detect_fps=30)
    return CameraReader(ReaderSpec(cam, ring.name, threading.Semaphore(0)), ring, StopFlag())


def halves(w: int, h: int, left: tuple[int, int, int], right: tuple[int, int, int]) -> np.ndarray:
    """An RGB image: left half one colour, right half another (colours given as BGR)."""
    img = np.empty((h, w, 3), np.uint8)
    img[:, : w // 2] = left[::-1]
    img[:, w // 2 :] = right[::-1]
    return img


def near(pixel: np.ndarray, bgr: tuple[int, int, int], tol: int = 16) -> bool:
    return bool(np.abs(pixel.astype(int) - bgr).max() <= tol)


@pytest.mark.parametrize(
    ("size", "fmt", "plane"),
    [
        ((1920, 1080), "yuv420p", (1280, 720)),  # what an H.264 decoder gives: the plane is only scaled
        ((640, 480), "rgb24", (640, 480)),  # never upscaled; any pixel format is converted
    ],
)
def test_reader_writes_the_snapshot_plane(
    ring: FrameRing, tmp_path: Path, size: tuple[int, int], fmt: str, plane: tuple[int, int]
) -> None:
    """1. The reader writes a camera frame (red left half, blue right half) into the ring.
    2. The slot's plane has the expected size, and converted to BGR shows the same picture;
       the model input is written as before."""
    w, h = size
    frame = av.VideoFrame.from_ndarray(halves(w, h, RED, BLUE), format="rgb24").reformat(format=fmt)
    reader_for(ring, tmp_path)._write(frame, 1000.0, 5.0)
    got = read_snapshot(ring, ring.head)
    assert got is not None
    image, cam_w, cam_h = got
    assert (cam_w, cam_h) == size and image.shape == (plane[1], plane[0], 3)
    pw, ph = plane
    assert near(image[ph // 2, pw // 4], RED) and near(image[ph // 2, pw * 3 // 4], BLUE)
    into = np.empty((64, 64, 3), np.uint8)
    meta = ring.read(into)[0]
    assert meta is not None and near(into[32, 10][::-1], RED) and near(into[32, 54][::-1], BLUE)


def test_snapshot_shows_the_frame_of_the_result(ring: FrameRing, tmp_path: Path) -> None:
    """1. A 30 fps camera: the reader writes frame 1 (red), the scheduler takes and holds it.
    2. While its result is on the way, the reader writes 20 newer frames (blue) into the 4-slot ring.
    3. The main process renders the snapshot of frame 1: a JPEG 1280 px wide of the red frame
       with the box drawn, not a newer frame; then it releases the hold."""
    reader = reader_for(ring, tmp_path)
    red, blue = (
        av.VideoFrame.from_ndarray(halves(1920, 1080, c, c), format="rgb24").reformat(format="yuv420p")
        for c in (RED, BLUE)
    )
    reader._write(red, 1000.0, time.monotonic())
    consumer = RingConsumer(ring)
    consumer.last_seq = 0
    meta = consumer.take(np.empty((64, 64, 3), np.uint8), hold=True)
    assert meta is not None and meta.seq == 1
    for k in range(20):
        reader._write(blue, 1000.0 + k / 30, time.monotonic())
    jpeg = snapshot_jpeg(ring, 1, [((480.0, 270.0, 1440.0, 810.0), box_label("person", 0.87))])
    assert jpeg is not None
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (720, 1280, 3)
    assert near(image[600, 100], RED) and near(image[360, 640], RED)
    assert near(image[360, 320], COLOURS[0], tol=40)  # the box's left edge, scaled from camera pixels
    ring.release(1)
    for k in range(4):
        reader._write(blue, 1001.0 + k / 30, time.monotonic())
    assert snapshot_jpeg(ring, 1, []) is None
    assert int(ring.header["snapshots_lost"]) == 1 and int(ring.header["holds_broken"]) == 0


@pytest.mark.parametrize("width", [1280, 1920])
def test_render_snapshot_draws_boxes_where_they_are(width: int) -> None:
    """1. A grey image (the plane, or a wider one) of a 1920x1080 camera, a box given in camera pixels.
    2. The JPEG decodes, is at most 1280 px wide, has the box's edges where the box is (scaled),
       the picture untouched inside and outside it, and the label band above it."""
    height = width * 9 // 16
    image = np.full((height, width, 3), GREY, np.uint8)
    jpeg = render_snapshot(image, 1920, 1080, [((480.0, 270.0, 1440.0, 810.0), "person 87%")])
    out = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert out.shape == (720, 1280, 3)
    x1, y1, x2, y2 = 320, 180, 960, 540  # the box in the 1280x720 picture
    for y, x in ((360, x1), (360, x2), (y2, 640), (y1, 640)):
        assert near(out[y, x], COLOURS[0], tol=40), (y, x)
    for y, x in ((360, 640), (360, 100), (650, 640)):
        assert near(out[y, x], GREY), (y, x)
    band = out[y1 - 20 : y1 - 2, x1 : x1 + 100].astype(int)  # the label: text on a band of the box's colour
    assert (np.abs(band - COLOURS[0]).max(axis=2) <= 40).mean() > 0.4
    assert (band.max(axis=2) < 60).mean() > 0.05  # dark text
    assert (image == GREY).all(), "the caller's image is left alone"


class FakeDetector(Detector):
    fixed_input = (64, 64)

    def __init__(self, fail: bool) -> None:
        self.input_buffer = np.zeros((2, 64, 64, 3), np.uint8)
        self.fail = fail

    def infer(self, n: int) -> list[np.ndarray]:
        if self.fail:
            raise RuntimeError("the model fell over")
        return [np.array([[8.0, 8.0, 32.0, 32.0, 0.9, 0.0]], np.float32)] * n


@pytest.mark.parametrize(
    ("case", "held"),
    [
        ("handed_off", True),  # the main process will release it once it has handled the result
        ("results_full", False),  # no result will arrive: the scheduler gives the hold up
        ("batch_failed", False),
    ],
)
def test_scheduler_holds_a_frame_until_its_result_is_handed_off(
    ring: FrameRing, tmp_path: Path, case: str, held: bool
) -> None:
    """1. The scheduler takes frame 1 into a batch (holding it) and infers it.
    2. Its result goes into the results queue; or the queue is full; or the batch fails.
    3. After 6 newer frames in the 4-slot ring, frame 1 is still there only when its result was handed off."""
    reader = reader_for(ring, tmp_path)
    frame = av.VideoFrame.from_ndarray(halves(640, 480, RED, BLUE), format="rgb24")
    reader._write(frame, 1000.0, time.monotonic())
    results: queue.Queue = queue.Queue(maxsize=1)
    if case == "results_full":
        results.put("an older batch nobody took")
    spec = SchedulerSpec(
        model=ModelConfig(path="fake.pt"), batching=BatchingConfig(), rings={"cam": ring.name},
        wake=threading.Semaphore(0), results=results, stats=queue.Queue(), control=queue.Queue(),
        beat=[0.0] * 3,
    )  # fmt: skip
    scheduler = Scheduler(spec, FakeDetector(fail=case == "batch_failed"), StopFlag())
    try:
        feed = scheduler.feeds["cam"]
        feed.consumer.last_seq = 0
        scheduler._run_batch([feed])
        scheduler.drain()
        for k in range(6):
            reader._write(frame, 1000.0 + k / 30, time.monotonic())
        assert (ring.read_plane(1) is not None) is held
        assert int(ring.header["holds_broken"]) == 0
        assert scheduler.stats.results_overflow == (1 if case == "results_full" else 0)
        assert feed.counts.failed == (1 if case == "batch_failed" else 0)
    finally:
        scheduler.close()
