"""Clips a hostile or odd camera would send, made with ffmpeg (libx264) for the RTSP test server.

Each is small and quick to make: a flat or test-pattern picture, a few frames. `cached` keeps them
per test session (they take seconds to encode on a busy box).
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import av

FFMPEG = shutil.which("ffmpeg")


def missing_dependency() -> str | None:
    return None if FFMPEG else "ffmpeg not found (the hostile stream tests encode their clips with it)"


def _ffmpeg(*args: str) -> None:
    assert FFMPEG is not None
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", *args], check=True, timeout=300)


def flat_clip(out: Path, width: int, height: int, fps: int = 5, seconds: float = 2.0, gop: int = 5) -> Path:
    """A clip of width x height (a moving test pattern would only cost encoding time)."""
    _ffmpeg(
        "-f", "lavfi", "-i", f"color=c=gray:size={width}x{height}:rate={fps}",
        "-frames:v", str(int(fps * seconds)), "-c:v", "libx264", "-preset", "ultrafast",
        "-g", str(gop), "-pix_fmt", "yuv420p", str(out),
    )  # fmt: skip
    return out


def alternating_clip(
    out: Path, source: Path, period_s: float = 2.0, fps: int = 15, periods: int = 4, flips: bool = True
) -> Path:
    """Frames of `source`, 1280x720 and 720x1280 in turn every `period_s` seconds (`periods` of them,
    starting landscape; the server loops the clip): H.264 whose SPS changes size at each IDR.
    `flips=False`: the same clip, landscape throughout (the steady camera to compare with).

    Each period is encoded on its own (repeat-headers: SPS/PPS before every IDR), the raw streams
    are joined and put in an MP4 without re-encoding; qtdemux + h264parse pass the in-band SPS on."""
    parts = []
    for i in range(periods):
        raw = out.with_name(f"{out.stem}.{i}.h264")
        scale = "scale=1280:720,transpose=1" if flips and i % 2 else "scale=1280:720"
        _ffmpeg(
            "-ss", str(i * period_s), "-i", str(source), "-t", str(period_s), "-an",
            "-vf", f"{scale},fps={fps}", "-c:v", "libx264", "-preset", "ultrafast", "-g", str(fps),
            # Each size its own SPS/PPS id: h264parse and rtph264pay keep one set per id and would
            # otherwise send the first size's SPS with the second size's slices.
            "-x264-params", f"repeat-headers=1:sps-id={i % 2}", "-pix_fmt", "yuv420p", "-f", "h264", str(raw),
        )  # fmt: skip
        parts.append(raw.read_bytes())
        raw.unlink()
    joined = out.with_suffix(".h264")
    joined.write_bytes(b"".join(parts))
    _ffmpeg("-framerate", str(fps), "-f", "h264", "-i", str(joined), "-c:v", "copy", str(out))
    joined.unlink()
    return out


def garbage_clip(out: Path, width: int = 640, height: int = 360, fps: int = 10, frames: int = 50) -> Path:
    """A valid first frame (SPS, PPS, IDR), then access units of random bytes in slice NAL units:
    what a broken or malicious camera sends after a good handshake."""
    good = out.with_name(out.stem + ".good.mp4")
    flat_clip(good, width, height, fps, seconds=1 / fps, gop=1)
    rng = random.Random(20)
    with av.open(str(good)) as src, av.open(str(out), "w") as dst:
        istream = src.streams.video[0]
        ostream = dst.add_stream_from_template(istream)
        first = next(p for p in src.demux(istream) if p.size)
        tb, start = istream.time_base, first.pts
        assert tb is not None and start is not None
        step = int(1 / (fps * tb))
        first.stream = ostream
        dst.mux(first)
        for i in range(1, frames):
            body = bytes([0x41]) + rng.randbytes(rng.randint(200, 4000))  # nal_ref_idc 2, type 1 (slice)
            pkt = av.Packet(struct.pack(">I", len(body)) + body)
            pkt.stream, pkt.time_base = ostream, tb
            pkt.pts = pkt.dts = start + i * step
            dst.mux(pkt)
    good.unlink()
    return out


def frame_sizes(url: str, seconds: float) -> list[tuple[int, int]]:
    """The size of every frame decoded from `url` for `seconds` (to check what a clip really sends)."""
    import time

    sizes = []
    deadline = time.monotonic() + seconds
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=10) as container:
        for frame in container.decode(video=0):
            sizes.append((frame.width, frame.height))
            if time.monotonic() > deadline:
                break
    return sizes
