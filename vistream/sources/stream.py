"""Opening a camera with PyAV: RTSP and files through the same code.

Open and read timeouts are PyAV's interrupt callback (`timeout=(open, read)`),
so a camera that stops answering makes the read raise within seconds instead
of blocking the reader forever. File sources are paced at their native frame
rate, so a clip behaves like a camera.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import av
import av.container

from vistream.config.models import CameraConfig
from vistream.ops.process import StopFlag
from vistream.sources.guard import StreamRefused, check_size

# Errors that mean "this session with the camera is over, try again later".
STREAM_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, OSError, EOFError, StopIteration)


def av_options(cam: CameraConfig) -> dict[str, str]:
    # FFmpeg's decoders refuse frames over `max_pixels` (AVCodecContext.max_pixels) before they allocate
    # them; given here, it binds the decoders that probe the stream while it is opened.
    guard = {"max_pixels": str(cam.max_pixels)}
    if cam.is_file:
        return guard
    return {
        **guard,
        "rtsp_transport": cam.transport,
        # Socket I/O timeout of FFmpeg's RTSP demuxer, in microseconds: the second line of defence
        # behind PyAV's interrupt-callback timeout, so a second later than both of its timeouts. At
        # read_timeout_s it ended a server that stalls mid-handshake before open_timeout_s did, and
        # the RTSP demuxer reports that as "Invalid data found", not as the timeout it is.
        "timeout": str(int((max(cam.open_timeout_s, cam.read_timeout_s) + 1) * 1_000_000)),
        # Start fast and do not buffer: frames are wanted now, not smoothly later.
        "fflags": "nobuffer",
        "analyzeduration": "1000000",
        "probesize": "1000000",
        "max_delay": "500000",
    }


@contextmanager
def open_camera(cam: CameraConfig) -> Iterator[av.container.InputContainer]:
    started = time.monotonic()
    try:
        container = av.open(
            cam.url, mode="r", options=av_options(cam), timeout=(cam.open_timeout_s, cam.read_timeout_s)
        )
    except av.FFmpegError as exc:
        # PyAV's open timeout interrupts FFmpeg, whose RTSP demuxer then reports a server that
        # stalled mid-handshake as "Invalid data found": say what it was.
        if time.monotonic() - started >= cam.open_timeout_s:
            raise TimeoutError(
                f"timed out: no answer within open_timeout_s ({cam.open_timeout_s:g}s)"
            ) from exc
        raise
    try:
        if not container.streams.video:
            raise av.FFmpegError(0, "no video stream")
        # ... and the decoder the frames come from (vistream.sources.guard checks the size first).
        container.streams.video[0].codec_context.options = {"max_pixels": str(cam.max_pixels)}
        yield container
    finally:
        container.close()


@dataclass
class StreamInfo:
    width: int
    height: int
    fps: float


def stream_info(container: av.container.InputContainer) -> StreamInfo:
    vs = container.streams.video[0]
    rate = vs.average_rate or vs.guessed_rate or 0
    return StreamInfo(vs.codec_context.width, vs.codec_context.height, float(rate))


def decoded_frames(
    container: av.container.InputContainer, *, paced: bool, stop: StopFlag, max_pixels: int | None = None
) -> Iterator[tuple[av.VideoFrame, float]]:
    """Every decoded frame of the first video stream with its stream time in seconds.

    A decoder error on a stream whose size grew past `max_pixels` is that stream's refusal
    (StreamRefused): FFmpeg's decoder, bound by the same limit, refuses to allocate such a frame.

    With `paced`, frames are released at the rate their timestamps say (files);
    a source that falls more than a second behind restarts the schedule rather
    than fast-forwarding, like a live camera would.
    """
    vs = container.streams.video[0]
    # Frame threading adds a frame of latency per thread; slice threading
    # adds none, and one reader per camera already spreads work across cores.
    vs.thread_type = "SLICE"
    # Raw elementary streams carry no timestamps: count frames at the nominal rate instead.
    rate = float(vs.average_rate or vs.guessed_rate or 25)
    start_wall = start_pts = None
    for n, frame in enumerate(_refusing_oversize(container.decode(vs), vs, max_pixels)):
        t = frame.time if frame.time is not None else n / rate
        if paced:
            now = time.monotonic()
            if (
                start_wall is None
                or start_pts is None
                or t < start_pts
                or now - (start_wall + t - start_pts) > 1.0
            ):
                start_wall, start_pts = now, t
            wait = start_wall + (t - start_pts) - now
            if wait > 0 and stop.sleep(wait, step=0.05):
                return
        if stop:
            return
        yield frame, t


def _refusing_oversize(
    frames: Iterator[av.VideoFrame], vs: av.video.stream.VideoStream, max_pixels: int | None
) -> Iterator[av.VideoFrame]:
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except av.FFmpegError as exc:
            if max_pixels is not None:
                try:
                    check_size(vs.codec_context.width, vs.codec_context.height, max_pixels)
                except StreamRefused as refused:
                    raise refused from exc
            raise
        yield frame
