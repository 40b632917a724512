"""Sample footage for `vistream demo`, generated on first run from images Ultralytics ships.

Each clip moves a virtual camera over `bus.jpg` or `zidane.jpg` (pan, modest zoom, sliding in and
out) so the detector sees people and a bus that move. Every motion path is periodic over the clip,
so the last frame leads smoothly back into the first when a file camera loops.

Each clip also has a `Scene`: a zone its people walk into and out of and a line they cross, placed
by looking at where YOLOv8n puts their feet over the loop, so the demo's alert rules fire.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Bump when the generator's output changes: the tag is in the file name, so old caches regenerate.
GENERATOR_VERSION = 1
WIDTH, HEIGHT = 1280, 720
FPS = 25
SECONDS = 10.0
MAX_CLIPS = 4
_BACKGROUND = (40, 40, 40)  # BGR; plain, so the border can never look like an object to the detector


@dataclass(frozen=True)
class _Pose:
    """Where the image sits in the output frame: `scale` relative to fitting the image's height
    into the frame, and the output pixel (x, y) that the image's focus point lands on."""

    scale: float
    x: float
    y: float


Point = tuple[float, float]


@dataclass(frozen=True)
class Scene:
    """Where the demo watches a clip, in the config's normalised coordinates (0..1, y down).

    People's feet (the bottom-centre of their boxes) enter and leave `zone` within each loop and
    cross `line`; the comment on each clip says when.
    """

    zone: tuple[Point, ...]
    line: tuple[Point, Point]


@dataclass(frozen=True)
class _ClipSpec:
    image: str
    focus: tuple[float, float]  # source pixel the camera centres on: the middle of the people/bus
    path: Callable[[float], _Pose]  # loop phase u in [0, 1) -> pose; path(0) == path(1)
    scene: Scene


def _smoothstep(a: float, b: float, t: float) -> float:
    t = min(max(t, 0.0), 1.0)
    return a + (b - a) * t * t * (3.0 - 2.0 * t)


def _bus_ken_burns(u: float) -> _Pose:
    # Drift left-right while zooming in and out; the portrait image keeps most of its height.
    w = 2.0 * math.pi * u
    return _Pose(
        scale=1.05 + 0.1 * (1.0 - math.cos(w)) / 2.0,
        x=WIDTH * (0.5 + 0.22 * math.sin(w)),
        y=HEIGHT * (0.5 + 0.04 * math.sin(2.0 * w)),
    )


def _zidane_ken_burns(u: float) -> _Pose:
    # Zoomed in enough (>= 1.05) that the frame stays covered while the camera pans.
    w = 2.0 * math.pi * u
    scale = 1.15 + 0.1 * math.sin(w)
    slack = (scale - 1.0) / 2.0  # how far the focus may move before a border shows, as a frame fraction
    return _Pose(
        scale=scale,
        x=WIDTH * (0.5 + 0.9 * slack * math.cos(w)),
        y=HEIGHT * (0.5 + 0.6 * slack * math.sin(2.0 * w)),
    )


def _bus_drive_by(u: float) -> _Pose:
    # Slides in from the right, creeps left while zooming, slides out to the left: the clip starts
    # and ends on an empty frame, so the loop seam is invisible.
    scale = 1.0 + 0.12 * math.sin(math.pi * u)
    # Half the shown width of the 810x1080 image (its focus is centred), plus a few pixels.
    edge = (810 / 1080 * HEIGHT * scale / 2 + 8) / WIDTH
    if u < 0.2:
        x = _smoothstep(1.0 + edge, 0.62, u / 0.2)
    elif u < 0.8:
        x = _smoothstep(0.62, 0.38, (u - 0.2) / 0.6)
    else:
        x = _smoothstep(0.38, -edge, (u - 0.8) / 0.2)
    return _Pose(scale=scale, x=WIDTH * x, y=HEIGHT * 0.5)


def _zidane_drift(u: float) -> _Pose:
    # Zoomed out on a plain background, moving along a figure of eight.
    w = 2.0 * math.pi * u
    return _Pose(
        scale=0.78 + 0.08 * math.sin(w),
        x=WIDTH * (0.5 + 0.12 * math.sin(w)),
        y=HEIGHT * (0.5 + 0.07 * math.sin(2.0 * w)),
    )


# Feet positions below are YOLOv8n's over one loop (u in 0..1) of each path; x, y as fractions.
_CLIPS = (
    # Three people on the pavement (feet at y 0.74-0.90) pan right, left and back: each crosses
    # x = 0.5 once each way; the two on the left are in x < 0.3 for about u 0.55-0.95.
    _ClipSpec(
        "bus.jpg",
        (405.0, 565.0),
        _bus_ken_burns,
        Scene(zone=((0.0, 0.6), (0.3, 0.6), (0.3, 1.0), (0.0, 1.0)), line=((0.5, 0.55), (0.5, 1.0))),
    ),
    # Cut off by the bottom edge (feet at y 0.99): Zidane crosses x = 0.5 at about u 0.25 and 0.75,
    # Ancelotti is in x > 0.75 for about u 0.8-1.3.
    _ClipSpec(
        "zidane.jpg",
        (640.0, 360.0),  # centred: the pan slack assumes it
        _zidane_ken_burns,
        Scene(zone=((0.75, 0.5), (1.0, 0.5), (1.0, 1.0), (0.75, 1.0)), line=((0.5, 0.4), (0.5, 1.0))),
    ),
    # Everyone slides in from the right, creeps left and slides out: they cross x = 0.5 right to
    # left only (`in`) at u 0.15-0.85, and the first is in x < 0.4 from about u 0.45 until it leaves.
    _ClipSpec(
        "bus.jpg",
        (405.0, 565.0),
        _bus_drive_by,
        Scene(zone=((0.0, 0.6), (0.4, 0.6), (0.4, 1.0), (0.0, 1.0)), line=((0.5, 0.55), (0.5, 1.0))),
    ),
    # The figure of eight takes both men's feet (y 0.76-0.96) across y = 0.85 four times a loop,
    # down and up; Ancelotti is in x > 0.65 for about u 0.95-1.55.
    _ClipSpec(
        "zidane.jpg",
        (640.0, 380.0),
        _zidane_drift,
        Scene(zone=((0.65, 0.5), (1.0, 0.5), (1.0, 1.0), (0.65, 1.0)), line=((0.2, 0.85), (0.95, 0.85))),
    ),
)


def scene(index: int) -> Scene:
    """The zone and line of clip `index` (the order `ensure_clips` returns them in)."""
    return _CLIPS[index].scene


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/vistream/demo`, or `~/.cache/vistream/demo` when it is unset or empty."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vistream" / "demo"


def clip_path(cache_dir: Path, index: int, *, seconds: float = SECONDS, fps: int = FPS) -> Path:
    """Where clip `index` lives; the name carries every parameter that changes its content."""
    stem = Path(_CLIPS[index].image).stem
    return cache_dir / f"clip{index}-{stem}-{WIDTH}x{HEIGHT}-{fps}fps-{seconds:g}s-g{GENERATOR_VERSION}.mp4"


def ensure_clips(cache_dir: Path, count: int, *, seconds: float = SECONDS, fps: int = FPS) -> list[Path]:
    """Return `count` (1..4) demo clips in `cache_dir`, generating the ones that are missing or
    unreadable. Clips are written under a temporary name and renamed, so a crash or a second demo
    running at the same time never leaves a half-written clip under the final name."""
    if not 1 <= count <= MAX_CLIPS:
        raise ValueError(f"count must be 1..{MAX_CLIPS}, got {count}")
    if seconds <= 0 or fps <= 0:
        raise ValueError("seconds and fps must be > 0")
    cache_dir.mkdir(parents=True, exist_ok=True)
    frames = max(1, round(seconds * fps))
    paths = []
    for index in range(count):
        path = clip_path(cache_dir, index, seconds=seconds, fps=fps)
        if not _is_valid_clip(path, frames):
            log.info("generating demo clip %s", path.name)
            _write_clip(path, _CLIPS[index], frames, fps)
        paths.append(path)
    return paths


def assets_dir() -> Path:
    """Ultralytics' bundled sample images, found without importing ultralytics (and torch)."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the ultralytics package is not installed; it ships the demo images")
    return Path(next(iter(spec.submodule_search_locations))) / "assets"


def _is_valid_clip(path: Path, frames: int) -> bool:
    import av

    if not path.is_file():
        return False
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return (stream.frames, stream.codec_context.width, stream.codec_context.height) == (
                frames,
                WIDTH,
                HEIGHT,
            )
    except (av.FFmpegError, IndexError, OSError):
        return False


def _write_clip(path: Path, spec: _ClipSpec, frames: int, fps: int) -> None:
    import av
    import cv2

    image_path = assets_dir() / spec.image
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read demo source image {image_path}")
    fit = HEIGHT / image.shape[0]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            stream.time_base = Fraction(1, fps)
            # A keyframe every second and no B-frames, like an IP camera; veryfast keeps generation
            # at a few seconds per clip on two cores.
            stream.options = {
                "preset": "veryfast",
                "tune": "zerolatency",
                "crf": "23",
                "x264-params": f"keyint={fps}:min-keyint={fps}:scenecut=0:bframes=0",
            }
            for i in range(frames):
                bgr = _render(image, spec, fit, i / frames)
                frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
                frame.pts = i
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _render(image: np.ndarray, spec: _ClipSpec, fit: float, u: float) -> np.ndarray:
    import cv2

    pose = spec.path(u)
    s = fit * pose.scale
    fx, fy = spec.focus
    matrix = np.array([[s, 0.0, pose.x - s * fx], [0.0, s, pose.y - s * fy]], dtype=np.float64)
    return cv2.warpAffine(
        image,
        matrix,
        (WIDTH, HEIGHT),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=_BACKGROUND,
    )
