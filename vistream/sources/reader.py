"""The reader process of one camera: decode, throttle, letterbox into the ring.

One OS process per camera, so a camera that misbehaves (hangs in a read,
crashes the decoder, leaks) affects nobody else, and decoding spreads over
cores. The reader does all per-frame CPU work that can run in parallel
(scaling and colour conversion in one swscale pass, straight into the ring
slot), so the scheduler only copies finished model inputs into a batch.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from av.video.plane import VideoPlane
from av.video.reformatter import VideoReformatter

from vistream.config.models import CameraConfig, ConfigError
from vistream.config.secrets import camera_url, redact_text, redact_url
from vistream.ops.process import StopFlag
from vistream.ring.shm import FrameRing, State
from vistream.sources.guard import RefusalLog, StreamRefused, check_size, limit_memory
from vistream.sources.letterbox import letterbox
from vistream.sources.motion import NOT_COMPUTED, FrameMotion
from vistream.sources.probe import PortWatch
from vistream.sources.stream import STREAM_ERRORS, decoded_frames, open_camera, stream_info
from vistream.sources.timing import Backoff, CaptureClock, Deferral, Throttle

log = logging.getLogger(__name__)

# A session that streamed this long resets the reconnect backoff; one that
# dies right after connecting keeps backing off.
HEALTHY_SESSION_S = 10.0


@dataclass(frozen=True)
class ReaderSpec:
    """Everything a reader process needs, picklable for `spawn`.

    Built in the daemon at each start of the reader: `url` is the URL to open with the camera's
    `password_file` read now and spliced in (`camera_url`). It reaches the reader through spawn's
    pipe, with the other arguments, never the environment, and is never shown (`repr=False`).
    """

    camera: CameraConfig
    ring_name: str
    wake: Any  # multiprocessing.Semaphore the scheduler sleeps on; released after each frame
    url: str = field(default="", repr=False)
    url_problem: str | None = None  # why `url` could not be built (an unreadable password_file)

    def __post_init__(self) -> None:
        if self.url:
            return
        try:
            object.__setattr__(self, "url", camera_url(self.camera))
        except ConfigError as exc:
            object.__setattr__(self, "url_problem", str(exc))


def run_reader(spec: ReaderSpec, *, stop: StopFlag) -> int:
    limit_memory(spec.camera.memory_limit_mb)  # before anything is decoded (vistream.sources.guard)
    if spec.url_problem is not None:  # exits; the supervisor restarts it with backoff, reading it again
        log.error("%s", spec.url_problem)
        return 2
    ring = FrameRing.attach(spec.ring_name)
    try:
        CameraReader(spec, ring, stop).run()
    finally:
        ring.header["state"] = State.STOPPED
        ring.close()
    return 0


class CameraReader:
    def __init__(self, spec: ReaderSpec, ring: FrameRing, stop: StopFlag) -> None:
        # The reader opens the URL with the credentials spliced in; everything it prints is `self.url`.
        cam = spec.camera
        self.cam = cam if spec.url == cam.url else cam.model_copy(update={"url": spec.url})
        self.ring = ring
        self.wake = spec.wake
        self.stop = stop
        self.hdr = ring.header
        self.throttle = Throttle(self.cam.detect_fps)
        self.clock = CaptureClock()
        self.backoff = Backoff(cap=self.cam.reconnect_max_s)
        self.watch = PortWatch.for_camera(self.cam)  # None for a file: nothing to probe
        self.url = redact_url(cam.url)  # as configured: the same as the API shows
        self.scaler = FrameScaler()
        self.motion = FrameMotion(self.cam.motion) if self.cam.motion.enabled else None
        # Motion gating scores every sampled frame, and its skips take no holds: nothing to defer there.
        self.deferral = None if self.motion else Deferral(self.throttle.interval)
        self.hdr["motion_min_area"] = self.cam.motion.min_area
        self.hdr["motion_keepalive_s"] = self.cam.motion.keepalive_s
        self.refusals = RefusalLog(self.cam.name)
        self.streamed = False  # the current session delivered a frame

    def _state(self, state: int) -> None:
        self.hdr["state"] = state
        self.hdr["heartbeat"] = time.monotonic()

    def run(self) -> None:
        self.hdr["writer_pid"] = os.getpid()
        looping, attempts = False, 0
        while not self.stop:
            if not looping:
                # A reconnect is an attempt after the first: a camera that cannot be reached at
                # start has made no reconnect yet, and a stop during the backoff makes none.
                if attempts:
                    self.hdr["reconnects"] += 1
                attempts += 1
                self._state(State.CONNECTING)
            started = time.monotonic()
            self.streamed = False  # set by the session at its first frame
            refused: StreamRefused | MemoryError | None = None
            try:
                frames = self._session(quiet=looping)
            except (StreamRefused, MemoryError) as exc:
                frames, refused = -1, exc
            except STREAM_ERRORS as exc:
                frames = -1
                self.hdr["errors"] += 1
                log.warning("camera %s: %s: %s", self.cam.name, self.url, redact_text(_describe(exc)))
            if self.streamed:
                self.refusals.streamed()  # a refusal from now on starts a new run of them
            if refused is not None:
                self._refused(refused)
            if self.stop:
                break
            # A clip that ended loops at once, still "streaming": it is not a reconnect.
            looping = self.cam.is_file and frames > 0
            if looping:
                continue
            if frames >= 0:
                log.warning("camera %s: stream ended after %d frames", self.cam.name, frames)
                if self.watch is not None:
                    self.watch.answered()
            if time.monotonic() - started > HEALTHY_SESSION_S and frames > 0:
                self.backoff.reset()
            delay = self.backoff.next()
            self._state(State.REFUSED if refused is not None else State.BACKOFF)
            log.info("camera %s: reconnecting in %.1fs", self.cam.name, delay)
            if self._sleep(delay):
                # Back after a long outage is like new: a camera whose port opens before its stream
                # is ready (booting, 503 for a few seconds) is tried again soon, not in 30 s.
                self.backoff.reset()

    def _refused(self, exc: StreamRefused | MemoryError) -> None:
        """Count and log (once per run of them) a stream the reader would not, or could not, decode."""
        if not isinstance(exc, StreamRefused):
            # The memory limit was reached (a Python MemoryError, or FFmpeg's ENOMEM).
            exc = StreamRefused("memory", f"out of memory (memory_limit_mb: {self.cam.memory_limit_mb})")
        self.hdr[f"refused_{exc.reason}"] += 1
        self.refusals.refused(exc)

    def _sleep(self, seconds: float) -> bool:
        """Wait out a backoff; True when it was cut short because the camera came back.

        An RTSP camera came back when its port accepts connections after refusing them. The
        backoff still spaces the full opens of a camera that stays down (or whose port is open
        while its stream fails); the probe only says when waiting longer is pointless.
        """
        deadline = time.monotonic() + seconds
        while not self.stop and (now := time.monotonic()) < deadline:
            self.hdr["heartbeat"] = now
            if self.watch is not None and self.watch.came_back(now):
                log.info(
                    "camera %s: %s accepts connections again: reconnecting now, %.1fs early",
                    self.cam.name,
                    self.url,
                    deadline - now,
                )
                return True
            self.stop.sleep(min(0.5, deadline - now))
        return False

    def _session(self, quiet: bool = False) -> int:
        """One connection to the camera; returns how many frames it decoded."""
        n = 0
        self.clock.reset()
        with open_camera(self.cam) as container:
            info = stream_info(container)
            # Before a frame is decoded: the codec parameters say how large they will be.
            check_size(info.width, info.height, self.cam.max_pixels)
            self.hdr["stream_fps"] = info.fps
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "camera %s: opened %s (%dx%d, %.1f fps)",
                self.cam.name,
                self.url,
                info.width,
                info.height,
                info.fps,
            )
            frames = decoded_frames(
                container, paced=self.cam.is_file, stop=self.stop, max_pixels=self.cam.max_pixels
            )
            for frame, t in frames:
                wall, mono = time.time(), time.monotonic()
                n += 1
                hdr = self.hdr
                hdr["frames_decoded"] += 1
                hdr["heartbeat"] = hdr["last_frame"] = mono
                if hdr["stream_width"] != frame.width or hdr["stream_height"] != frame.height:
                    check_size(frame.width, frame.height, self.cam.max_pixels)  # the stream grew
                    hdr["stream_width"], hdr["stream_height"] = frame.width, frame.height
                if n == 1:
                    hdr["state"] = State.STREAMING
                    self.streamed = True
                captured_at, captured_mono = self.clock.stamp(t, wall, mono)
                if not self.throttle.keep(t):
                    continue
                if self.deferral is not None:
                    self.deferral.observe(self.ring.last_taken(), mono)
                    if self.deferral.defer(self.ring.head, mono):
                        hdr["deferred"] += 1
                        continue
                self._write(frame, captured_at, captured_mono)
        return n

    def _write(self, frame: av.VideoFrame, captured_at: float, captured_mono: float) -> None:
        lay = self.ring.layout
        img = self.ring.begin()  # at the batch shape the scheduler asks for
        box = letterbox(frame.width, frame.height, img.shape[1], img.shape[0])
        # One swscale pass does the resize and the YUV -> RGB conversion; the
        # result is copied once, straight into the shared-memory slot.
        box.inner(img)[...] = _rgb_view(self.scaler.model(frame, box.new_w, box.new_h))
        box.fill_padding(img)
        # The snapshot plane: decoders output yuv420p, so this pass only scales
        # (about 0.8 ms of CPU for 1080p -> 720p); BGR is made only for a snapshot.
        plane_w, plane_h = lay.plane_size(frame.width, frame.height)
        if plane_w:
            _copy_i420(self.scaler.plane(frame, plane_w, plane_h), self.ring.plane_buffer(plane_w, plane_h))
        self.ring.commit(
            captured_at=captured_at,
            captured_mono=captured_mono,
            width=frame.width,
            height=frame.height,
            scale=box.scale,
            pad_x=box.left,
            pad_y=box.top,
            plane_width=plane_w,
            plane_height=plane_h,
            motion=self.motion.score(frame) if self.motion else NOT_COMPUTED,
        )
        self.wake.release()


class FrameScaler:
    """The reader's two swscale passes, each with a context kept from frame to frame.

    `frame.reformat` keeps its context on the frame, so every frame built a
    new one, and two passes on one frame rebuilt it twice. One thread each:
    a reader per camera already spreads the work over cores, and swscale's own
    threads cost more CPU than they save here (1080p -> 640x360 RGB: 2.2 ms
    of CPU with automatic threads, 2.1 ms with one; the plane pass adds 2 ms
    with automatic threads and per-frame contexts, 0.8 ms like this).
    """

    def __init__(self) -> None:
        self._model = VideoReformatter()
        self._plane = VideoReformatter()

    def model(self, frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
        return self._model.reformat(frame, width=width, height=height, format="rgb24", threads=1)

    def plane(self, frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
        return self._plane.reformat(frame, width=width, height=height, format="yuv420p", threads=1)


def _rows(plane: VideoPlane, height: int) -> np.ndarray:
    """A plane's bytes as (height, line_size) rows, without a copy; rows are padded past the pixels."""
    return np.frombuffer(memoryview(plane), np.uint8, count=height * plane.line_size).reshape(
        height, plane.line_size
    )


def _rgb_view(frame: av.VideoFrame) -> np.ndarray:
    """The pixels of an rgb24 frame as an (h, w, 3) view, without the copy `to_ndarray` makes."""
    rows = _rows(frame.planes[0], frame.height)
    return rows[:, : frame.width * 3].reshape(frame.height, frame.width, 3)


def _copy_i420(frame: av.VideoFrame, into: np.ndarray) -> None:
    """Copy a yuv420p frame of even size into a packed I420 (h*3/2, w) array: Y, then U, then V."""
    flat = into.reshape(-1)
    at = 0
    for plane in frame.planes:
        w, h = plane.width, plane.height
        flat[at : at + w * h].reshape(h, w)[...] = _rows(plane, h)[:, :w]
        at += w * h


def _describe(exc: BaseException) -> str:
    if isinstance(exc, av.FFmpegError) and "Immediate exit" in str(exc):
        return "timed out"  # PyAV's timeout interrupts FFmpeg, which reports an 'exit'
    return str(exc) or type(exc).__name__
