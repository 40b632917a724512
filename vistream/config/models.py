"""The configuration schema: pydantic models, one per YAML section.

Every field carries a description; docs/config.md is generated from them
(`python -m vistream.config.docs`) and a test fails when it drifts.

What all sections share (the base model, key paths, problems, names, file
checks and the validation context) is in base.py; alert rules are in alerts.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from vistream.config.alerts import AlertRule, OutboxConfig, rule_applies, rule_problems, unknown_label
from vistream.config.base import (
    CLIENT_ID_RE,
    DEVICE_RE,
    NAME_RE,
    RELEASE_RE,
    SCHEME_RE,
    ConfigError,
    KeyProblems,
    Loc,
    Point,
    Section,
    _base_dir,
    _existing_file,
    checked_name,
    key_path,
    not_yet,
    section_of,
    shape_problems,
)
from vistream.config.labels import coco_names

# Re-exported: the loader, the docs generator and the rest of the package import them from here.
__all__ = [
    "NAME_RE",
    "AlertRule",
    "ConfigError",
    "KeyProblems",
    "Loc",
    "OutboxConfig",
    "Section",
    "checked_name",
    "key_path",
    "not_yet",
    "section_of",
    "unknown_label",
]


TRITON_SCHEMES = ("grpc", "http")


def is_triton_url(path: str) -> bool:
    """A model served by Triton: `grpc://...`, or an `http(s)://` URL whose last part names no file
    (`http://host:8000/yolov8n`; `https://.../yolov8n.pt` is a download)."""
    m = SCHEME_RE.match(path)
    scheme = m.group(1).lower() if m else ""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return scheme == "grpc" or (scheme in ("http", "https") and "." not in last)


def triton_url_problem(path: str) -> str | None:
    """Why a Triton URL is not usable (None when it is): grpc or http, a host and port, one model name."""
    parts = urlsplit(path)
    if parts.scheme.lower() not in TRITON_SCHEMES:
        return f"a Triton server is reached by grpc:// or http://, not {parts.scheme}:// (got {path!r})"
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        return f"a Triton URL needs a host and a port, e.g. grpc://triton:8001/yolov8n (got {path!r})"
    if parts.username or parts.password or parts.query or parts.fragment:
        return f"a Triton URL is scheme://HOST:PORT/MODEL, nothing else (got {path!r})"
    name = parts.path.strip("/")
    if not name or "/" in name:
        return f"a Triton URL names one model after the port, e.g. grpc://triton:8001/yolov8n (got {path!r})"
    return None


class ModelConfig(Section):
    """The detection model and how it runs."""

    path: str = Field(
        default="yolov8n.pt",
        description="Ultralytics detection model: .pt, .onnx, *_openvino_model/, .engine, or a model on a "
        "Triton Inference Server, `grpc://HOST:PORT/MODEL` or `http://HOST:PORT/MODEL` (see "
        "docs/scaling.md; `vistream export-triton` writes one). A bare release name such as `yolov8n.pt` is "
        "downloaded by Ultralytics on first use; a relative path that exists next to the config file is "
        "resolved against it.",
    )
    backend: Literal["auto", "torch", "onnxruntime", "openvino", "tensorrt", "triton"] = Field(
        default="auto",
        description="Inference backend. `auto`: an exported file runs on its own runtime (.onnx: "
        "onnxruntime, *_openvino_model/: openvino, .engine: tensorrt); a .pt model runs on TensorRT on "
        "CUDA when it is installed (else torch, fp16), on OpenVINO on a CPU when it is installed (else "
        "torch); a `grpc://` or `http://` URL runs on `triton`. For openvino, onnxruntime and tensorrt a .pt "
        "model is exported once and kept in `cache_dir`. A runtime that is not installed stops the daemon "
        "(exit 3) naming the extra: `pip install vistream[openvino]`, `vistream[onnxruntime]`, "
        "`vistream[tensorrt]`, `vistream[triton]`.",
    )
    max_inflight: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Batches that may be in flight at once to a Triton server: with 2 the scheduler builds "
        "and sends the next batch while Triton runs the last. Local backends run one batch at a time.",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="Where exports of the model (OpenVINO, ONNX, TensorRT) are kept, keyed by the model "
        "file's hash, input shape, batch size, precision and Ultralytics version, and reused on the next "
        "start; default: `$XDG_CACHE_HOME/vistream/exports` (`~/.cache/vistream/exports`). Relative to "
        "the config file's directory when relative. Entries no start used for 30 days are removed when "
        "a new one is built.",
    )
    device: str = Field(
        default="auto",
        description="`auto` (CUDA with fp16 when present, else CPU), `cpu`, `cuda`, `cuda:N`, `mps`.",
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        default="auto",
        description="Numeric precision of inference. `auto`: fp16 on CUDA (torch, TensorRT, ONNX Runtime); "
        "on a CPU fp32 for torch and ONNX Runtime, and for OpenVINO bf16 where its CPU plugin defaults to it "
        "(CPUs with AMX; 2.3x fp32 on a Xeon with AMX, the same persons found: docs/performance.md, "
        "Precision), fp32 elsewhere; for Triton, what the server's model config says. `fp32` on every "
        "backend, for the same numbers on every machine; `fp16` on CUDA, and on OpenVINO where the CPU "
        "has fp16 units; `bf16` on OpenVINO. A precision the backend cannot honour stops the daemon "
        "(exit 2), except on OpenVINO, whose plugin falls back to fp32 on a CPU without the units "
        "(logged). The precision the model runs at is in the startup log, `/api/status` and "
        "`vistream_model_info`.",
    )
    half: bool | None = Field(
        default=None,
        description="Older spelling of `precision`: true is `fp16`, false is `fp32`. Give one of the two.",
    )
    imgsz: int | tuple[int, int] = Field(
        default=640,
        description="Model input size in pixels, multiples of 32. One number is the long side: frames are "
        "scaled so that their long side fits it, and the batch shape is the smallest that holds every "
        "camera's frame (384x640 for 16:9 cameras at 640, 480x640 for 4:3 or a mix of both), refitted "
        "when cameras come, go or change resolution. [height, width] is an explicit batch shape.",
    )
    conf: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="Minimum confidence of a reported detection. The tracker sees weaker boxes too (down "
        "to 0.1, ByteTrack's low threshold): one under `conf` is reported only where it continues a "
        "confirmed track, and a new track starts only from a box at `conf` or above.",
    )
    iou: float = Field(default=0.45, gt=0, le=1, description="IoU threshold of non-maximum suppression.")
    classes: list[str | int] | None = Field(
        default=None,
        description="Only report these classes, by name or id; default: all classes of the model.",
    )
    max_det: int = Field(default=300, gt=0, description="Most detections kept per frame.")
    threads: int | None = Field(
        default=None,
        gt=0,
        le=256,
        description="CPU threads inference may use (torch's pool, OpenVINO's `INFERENCE_NUM_THREADS`, ONNX "
        "Runtime's intra-op pool); default: the runtime's own choice (one per core). "
        "On a CPU-only box the readers decode on the same cores: fewer threads can mean steadier batches.",
    )

    @field_validator("path")
    @classmethod
    def _path(cls, v: str, info: ValidationInfo) -> str:
        if not v:
            raise ValueError("must not be empty")
        m = SCHEME_RE.match(v)
        scheme = m.group(1).lower() if m else ""
        if is_triton_url(v):
            if problem := triton_url_problem(v):
                raise ValueError(problem)
            return v
        base = _base_dir(info)
        if not scheme and base is not None and not Path(v).is_absolute() and (base / v).exists():
            return os.path.normpath(base / v)
        return v

    @field_validator("cache_dir")
    @classmethod
    def _cache_dir(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        base = _base_dir(info)
        return v if v is None or base is None or v.is_absolute() else Path(os.path.normpath(base / v))

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE_RE.fullmatch(v):
            raise ValueError(f"must be auto, cpu, cuda, cuda:N or mps (got {v!r})")
        return v

    @field_validator("imgsz", mode="before")
    @classmethod
    def _imgsz(cls, v: Any) -> Any:
        # Checked before the union so a wrong shape gives one message, not one per union member.
        sides = v if isinstance(v, list | tuple) and len(v) == 2 else [v]
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in sides):
            raise ValueError(f"must be an integer or [height, width] (got {v!r})")
        for side in sides:
            if side < 32 or side > 4096 or side % 32:
                raise ValueError(f"must be a multiple of 32 between 32 and 4096 (got {side})")
        return v

    @field_validator("classes", mode="before")
    @classmethod
    def _classes(cls, v: Any) -> Any:
        if v is None:
            return v
        items = v if isinstance(v, list) else [v]
        if not items:
            raise ValueError("must not be empty (leave it out to report every class)")
        for item in items:
            if isinstance(item, bool) or not isinstance(item, str | int) or item == "":
                raise ValueError(f"must be class names or ids (got {item!r})")
            if isinstance(item, int) and item < 0:
                raise ValueError(f"class ids must be >= 0 (got {item})")
        return items

    def class_names(self) -> list[str] | None:
        """The labels this model can report, where known without loading it (else None).

        `classes` given by name bounds them; Ultralytics' release detection models (yolov8n.pt,
        yolo11s.onnx, ...) are trained on COCO. Other models are checked once loaded.
        """
        if self.classes is not None and all(isinstance(c, str) for c in self.classes):
            return [str(c) for c in self.classes]
        if self.classes is None and RELEASE_RE.fullmatch(Path(self.path).name):
            return coco_names()
        return None

    @model_validator(mode="before")
    @classmethod
    def _half_is_precision(cls, data: Any) -> Any:
        """`half: true|false` stands for `precision: fp16|fp32`; both given must agree."""
        if not isinstance(data, dict) or not isinstance(data.get("half"), bool):
            return data  # absent, null, or not a boolean (which the field's own check reports)
        said = "fp16" if data["half"] else "fp32"
        precision = data.get("precision", "auto")
        if precision not in ("auto", said):
            wrong = f"says {said} while model.precision says {precision}: give only precision"
            raise KeyProblems([(("half",), wrong)])
        return {**data, "precision": said}

    @model_validator(mode="after")
    def _triton_pairs(self) -> ModelConfig:
        url = is_triton_url(self.path)
        if self.backend == "triton" and not url:
            need = "backend triton needs a grpc://HOST:PORT/MODEL or http://HOST:PORT/MODEL URL"
            raise KeyProblems([(("path",), need)])
        if url and self.backend not in ("auto", "triton"):
            wrong = f"{self.backend!r} cannot run a Triton URL (use auto or triton)"
            raise KeyProblems([(("backend",), wrong)])
        if url and self.precision != "auto":
            wrong = "a Triton server runs the precision its model config says: leave this auto"
            raise KeyProblems([(("precision",), wrong)])
        return self

    @property
    def input_hw(self) -> tuple[int, int]:
        """Model input (height, width)."""
        return (self.imgsz, self.imgsz) if isinstance(self.imgsz, int) else (self.imgsz[0], self.imgsz[1])


class BatchingConfig(Section):
    """How frames of all cameras are grouped into inference calls."""

    max_batch: int = Field(
        default=8, gt=0, le=256, description="Most frames in one inference call, across cameras."
    )
    max_wait_ms: float = Field(
        default=10,
        ge=0,
        description="How long a partial batch may wait for more cameras once its first frame is ready; "
        "must be less than `max_frame_age_ms`.",
    )
    max_frame_age_ms: float = Field(
        default=500,
        gt=0,
        description="Frames older than this at batch time are dropped (counted), never inferred.",
    )
    reshape_after_s: float = Field(
        default=20,
        ge=0,
        description="A camera whose resolution changed moves the fitted batch shape (`model.imgsz` as "
        "one number) only once the new shape has been the better fit for this long; meanwhile its frames "
        "are letterboxed into the current shape. A refit drains the batches, re-warms the model and drops "
        "every camera's frames made for the old shape, so a stream that flips between portrait and "
        "landscape would otherwise stall all cameras. 0 refits at once. Cameras added, removed or "
        "reporting their first frame refit at once.",
    )

    @model_validator(mode="after")
    def _wait_below_age(self) -> BatchingConfig:
        # Waiting as long as a frame may live would let the wait itself make the first frame stale.
        if self.max_wait_ms >= self.max_frame_age_ms:
            raise KeyProblems([(("max_wait_ms",), f"must be < max_frame_age_ms ({self.max_frame_age_ms:g})")])
        return self


class TlsConfig(Section):
    """TLS towards the broker."""

    enabled: bool = Field(default=False, description="Use TLS; implied when any of the files below is set.")
    ca_file: Path | None = Field(default=None, description="CA bundle that signed the broker's certificate.")
    cert_file: Path | None = Field(
        default=None, description="Client certificate (mutual TLS); needs `key_file`."
    )
    key_file: Path | None = Field(
        default=None, description="Client private key (mutual TLS); needs `cert_file`."
    )
    insecure: bool = Field(
        default=False, description="Skip verification of the broker's host name (testing only)."
    )

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _files(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return None if v is None else _existing_file(v, info)

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if self.cert_file and not self.key_file:
            raise KeyProblems([(("cert_file",), "set without key_file (a client certificate needs its key)")])
        if self.key_file and not self.cert_file:
            raise KeyProblems([(("key_file",), "set without cert_file (a client key needs its certificate)")])
        return self

    @property
    def active(self) -> bool:
        return self.enabled or any((self.ca_file, self.cert_file, self.key_file))


class MqttConfig(Section):
    """The MQTT broker that receives detections and status."""

    host: str = Field(default="localhost", min_length=1, description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port.")
    topic_prefix: str = Field(
        default="vistream", description="First topic level(s) of everything vistream publishes."
    )
    client_id: str = Field(
        default="vistream",
        description="MQTT client id; must be unique per daemon on one broker. Also names this "
        "daemon's shared-memory segments.",
    )
    username: str | None = Field(default=None, description="Broker user name.")
    password_file: Path | None = Field(
        default=None,
        description="File holding the broker password (one trailing newline is ignored). When unset: env "
        "`VISTREAM_MQTT_PASSWORD`, then the systemd credential `mqtt_password` in `$CREDENTIALS_DIRECTORY`.",
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive interval in seconds.")
    queue_size: int = Field(
        default=1000,
        gt=0,
        description="Detection messages waiting for the publisher; beyond this they are dropped and counted.",
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS settings.")
    home_assistant: bool = Field(
        default=False,
        description="Publish Home Assistant MQTT discovery: one device per daemon, a binary sensor per "
        "camera and rule, a sensor per line counter, an image per snapshot topic.",
    )
    discovery_prefix: str = Field(
        default="homeassistant", description="Home Assistant's discovery topic prefix."
    )

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if "://" in v or "/" in v or any(c.isspace() for c in v):
            raise ValueError(f"must be a host name or address, not a URL (got {v!r})")
        return v

    @field_validator("topic_prefix", "discovery_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        bad = not v or v.startswith(("/", "$")) or v.endswith("/") or "//" in v
        if bad or any(c in v for c in "+#\0") or len(v) > 128:
            raise ValueError(
                f"must be an MQTT topic without wildcards, empty levels or leading $ (got {v!r})"
            )
        # Legal in MQTT, but no subscriber types them: a trailing newline is a templating slip.
        if any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError(f"must not hold control characters such as a newline (got {v!r})")
        return v

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, v: str) -> str:
        if not CLIENT_ID_RE.fullmatch(v) or len(v) > 64:
            raise ValueError(f"must be 1-64 characters of A-Z a-z 0-9 _ . - (got {v!r})")
        return v

    @field_validator("password_file")
    @classmethod
    def _password_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return None if v is None else _existing_file(v, info)


def is_loopback(host: str) -> bool:
    """Is `host` (an address or `localhost`) reachable from this machine only?"""
    import ipaddress

    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class MetricsConfig(Section):
    """The daemon's HTTP server: `/metrics` for Prometheus, `/healthz`, the status page `/` and its API."""

    enabled: bool = Field(
        default=True, description="Serve HTTP: metrics, health, status page (false: none of them)."
    )
    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address the HTTP server listens on; keep it local unless a scraper or browser "
        "elsewhere needs it, and then set `web_config_file` (docs/security.md).",
    )
    port: int = Field(
        default=9108, ge=0, le=65535, description="Port of the HTTP server (0: any free port, logged)."
    )
    web_config_file: Path | None = Field(
        default=None,
        description="TLS and basic auth, in the web-config format of Prometheus' exporter-toolkit "
        "(`tls_server_config`, `basic_auth_users`); read at start and on SIGHUP (docs/security.md).",
    )
    pictures: bool | None = Field(
        default=None,
        description="Serve camera pictures (`latest.jpg`, the status page's images). Unset: true when "
        "`host` is a loopback address or `web_config_file` is set, else false.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Names besides the daemon's own addresses, `localhost` and the machine's host name "
        "that requests may carry in `Host` (others get 421: DNS rebinding).",
    )
    max_connections: int = Field(
        default=64,
        ge=1,
        le=10000,
        description="Open HTTP connections at most; one more is closed at once.",
    )
    idle_timeout_s: float = Field(
        default=10,
        gt=0,
        le=3600,
        description="A connection that sends no request for this long is closed (keep-alive included).",
    )

    @field_validator("web_config_file")
    @classmethod
    def _web_config_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return None if v is None else _existing_file(v, info)

    @property
    def show_pictures(self) -> bool:
        """`pictures`, or its default: on loopback or behind a web config only."""
        if self.pictures is not None:
            return self.pictures
        return self.web_config_file is not None or is_loopback(self.host)


class MotionConfig(Section):
    """Motion gating: frames in which nothing moves are not sent to the model."""

    enabled: bool = Field(
        default=False,
        description="Score motion in the reader and skip frames without it (counted as skipped `no_motion`).",
    )
    keepalive_s: float = Field(
        default=10, gt=0, description="Infer a frame at least this often, motion or not."
    )
    pixel_threshold: float = Field(
        default=25,
        gt=0,
        le=255,
        description="A pixel of the small grey copy changed when it differs from the running-average "
        "background by more than this (0-255).",
    )
    min_area: float = Field(
        default=0.001,
        ge=0,
        le=1,
        description="A frame has motion when its changed pixels cover at least this fraction of the "
        "unmasked frame.",
    )
    alpha: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="How fast the background learns each sampled frame (accumulateWeighted's alpha): "
        "higher forgets a change sooner.",
    )
    width: int = Field(default=160, ge=16, le=1920, description="Width of the grey copy motion is scored on.")
    mask: list[list[Point]] = Field(
        default_factory=list,
        description="Polygons where changes never count (a clock, trees in the wind), normalised like zones.",
    )

    @field_validator("mask", mode="before")
    @classmethod
    def _mask(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v  # pydantic says "must be a list"
        problems: list[tuple[Loc, str]] = []
        for i, points in enumerate(v):
            problems += [((i, *loc), msg) for loc, msg in shape_problems("mask", points, "zones")]
        if problems:
            raise KeyProblems(problems)
        return v


class CameraConfig(Section):
    """One camera: an RTSP stream or a video file."""

    name: str = Field(description="Unique name, `[a-z0-9_-]+`; used in topics and metric labels.")
    url: str = Field(
        description="`rtsp://` or `rtsps://` URL, or a video file path (looped, paced at its native frame "
        "rate; relative to the config file's directory). Credentials in the URL (`rtsp://user:pass@...`, "
        "`?token=...`) are redacted wherever the URL is logged or shown, but keep the password out of the "
        "config with `username` and `password_file`."
    )
    username: str | None = Field(
        default=None,
        min_length=1,
        description="RTSP user name, spliced into the URL (percent-encoded) for the reader only; the URL "
        "must then hold no credentials of its own.",
    )
    password_file: Path | None = Field(
        default=None,
        description="File holding the camera's password (one trailing newline is ignored; relative to the "
        "config file's directory), like `mqtt.password_file`; needs `username`. Read at start, at each "
        "reload (a changed password restarts the camera's reader) and at each start of the reader, and "
        "handed to the reader through its spawn pipe, never in its command line or environment.",
    )
    detect_fps: float = Field(default=5, gt=0, le=120, description="Frames per second sent to the detector.")
    enabled: bool = Field(default=True, description="A disabled camera is not opened.")
    transport: Literal["tcp", "udp"] = Field(default="tcp", description="RTSP transport.")
    open_timeout_s: float = Field(default=10, gt=0, description="Give up opening the stream after this long.")
    read_timeout_s: float = Field(
        default=5, gt=0, description="A stream that delivers nothing for this long is reconnected."
    )
    reconnect_max_s: float = Field(
        default=30, gt=0, description="Cap of the exponential reconnect backoff (with jitter)."
    )
    zones: dict[str, list[Point]] = Field(
        default_factory=dict,
        description="Named polygons for alert rules: at least 3 (x, y) points, normalised 0..1 of the "
        "frame's width and height (so they survive a resolution change). An object is in a zone when the "
        "bottom-centre of its box is (edges included).",
    )
    lines: dict[str, tuple[Point, Point]] = Field(
        default_factory=dict,
        description="Named segments p1 -> p2 for line crossing counts and rules, normalised like zones. "
        "`in` is a crossing from the left of p1 -> p2 to its right, as seen on the image.",
    )
    motion: MotionConfig = Field(
        default_factory=MotionConfig, description="Motion gating of this camera's frames."
    )
    max_pixels: int = Field(
        default=7680 * 4320,
        gt=0,
        description="Largest frame (width x height) the reader decodes; default 8K UHD, 7680x4320. A stream "
        "whose codec parameters say more is closed before its first frame is decoded, and so is one whose "
        'frames grow past it: counted in `vistream_streams_refused_total{reason="too_large"}`, logged '
        "once, camera state `refused`, retried with the reconnect backoff.",
    )
    memory_limit_mb: int | None = Field(
        default=2048,
        ge=256,
        description="The reader process's memory limit (RLIMIT_DATA: heap and private mappings, MiB), so a "
        "hostile stream cannot make the kernel's OOM killer pick another process. Measured: a 1080p reader's "
        "data segment peaks at about 300 MiB (most of it Python and its libraries), an 8K one's at about 450 "
        "MiB. An allocation over it fails in the reader and ends its session, as a decode error or "
        '`vistream_streams_refused_total{reason="memory"}`. null: no limit.',
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return checked_name(v)

    @field_validator("zones", "lines", mode="before")
    @classmethod
    def _shapes(cls, v: Any, info: ValidationInfo) -> Any:
        if not isinstance(v, dict):
            return v  # pydantic says "must be a mapping"
        problems: list[tuple[Loc, str]] = []
        for name, points in v.items():
            problems += [((name, *loc), msg) for loc, msg in shape_problems(name, points, info.field_name)]
        if problems:
            raise KeyProblems(problems)
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str, info: ValidationInfo) -> str:
        if not v:
            raise ValueError("must not be empty")
        m = SCHEME_RE.match(v)
        if m is None:
            return str(_existing_file(Path(v), info))
        scheme = m.group(1).lower()
        if scheme not in ("rtsp", "rtsps"):
            raise ValueError(f"unsupported scheme '{scheme}://' (use rtsp://, rtsps:// or a file path)")
        v = scheme + v[len(scheme) :]  # is_file and the readers compare the scheme in lower case
        parts = urlsplit(v)
        if not parts.hostname:
            raise ValueError(f"{scheme} URL has no host")
        try:
            parts.port  # noqa: B018 - the property raises on a port that is not a number in range
        except ValueError:
            raise ValueError(f"{scheme} URL has an invalid port") from None
        return v

    _password_digest: str | None = PrivateAttr(default=None)

    @field_validator("password_file")
    @classmethod
    def _password_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return None if v is None else _existing_file(v, info)

    @model_validator(mode="after")
    def _credentials(self) -> CameraConfig:
        if self.username is None and self.password_file is None:
            return self
        key = "password_file" if self.password_file is not None else "username"
        if self.is_file:
            raise KeyProblems([((key,), "only for an rtsp:// or rtsps:// URL, not a file")])
        parts = urlsplit(self.url)
        if parts.username is not None or parts.password is not None:
            in_url = "the URL already holds credentials: give them in one place"
            raise KeyProblems([((key,), f"set while {in_url} (remove them from url)")])
        if self.username is None:
            raise KeyProblems([(("password_file",), "set without username (the password needs its user)")])
        if self.password_file is not None and self.password_file.is_absolute():
            # So that a reload sees a changed password (vistream.ops.reload); never shown. An unreadable
            # file: the reader's start says why (vistream.config.secrets.camera_url).
            with contextlib.suppress(OSError):
                self._password_digest = hashlib.sha256(self.password_file.read_bytes()).hexdigest()
        return self

    @property
    def password_digest(self) -> str | None:
        """A digest of the password file's content when the config was loaded (None without one)."""
        return self._password_digest

    @property
    def is_file(self) -> bool:
        return not self.url.startswith(("rtsp://", "rtsps://"))


class Config(Section):
    """The whole file."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="The detector.")
    batching: BatchingConfig = Field(default_factory=BatchingConfig, description="Cross-camera batching.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="Where results go.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus endpoint.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log verbosity (case does not matter)."
    )
    cameras: Annotated[list[CameraConfig], Field(min_length=1)] = Field(
        description="The cameras to watch; at least one must be enabled."
    )
    alerts: list[AlertRule] = Field(default_factory=list, description="Alert rules (events).")
    state_dir: Path = Field(
        default=Path("/var/lib/vistream"),
        description="Where the event outbox and line counters survive restarts (systemd `StateDirectory=`); "
        "relative to the config file's directory when relative.",
    )
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="Bounds of the event outbox.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("cameras")
    @classmethod
    def _cameras(cls, cameras: list[CameraConfig]) -> list[CameraConfig]:
        # A field validator, not a model one, so it runs even when another section is broken.
        problems: list[tuple[Loc, str]] = []
        first: dict[str, int] = {}
        for i, cam in enumerate(cameras):
            if cam.name in first:
                problems.append(
                    ((i, "name"), f"duplicate camera name {cam.name!r} (also cameras[{first[cam.name]}])")
                )
            first.setdefault(cam.name, i)
        if not any(cam.enabled for cam in cameras):
            problems.append(((), "no camera is enabled"))
        if problems:
            raise KeyProblems(problems)
        return cameras

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, v: Path, info: ValidationInfo) -> Path:
        base = _base_dir(info)
        return v if base is None or v.is_absolute() else Path(os.path.normpath(base / v))

    @model_validator(mode="after")
    def _rules(self) -> Config:
        problems: list[tuple[Loc, str]] = []
        first: dict[str, int] = {}
        cameras = {c.name: c for c in self.cameras}
        known_labels = self.model.class_names()
        for i, rule in enumerate(self.alerts):
            if rule.name in first:
                also = f"also alerts[{first[rule.name]}]"
                problems.append((("alerts", i, "name"), f"duplicate rule name {rule.name!r} ({also})"))
            first.setdefault(rule.name, i)
            problems += [
                (("alerts", i, *loc), msg) for loc, msg in rule_problems(rule, cameras, known_labels)
            ]
        if problems:
            raise KeyProblems(problems)
        return self

    @property
    def enabled_cameras(self) -> list[CameraConfig]:
        return [c for c in self.cameras if c.enabled]

    def rule_cameras(self, rule: AlertRule) -> list[str]:
        """The enabled cameras a rule applies to."""
        return [c.name for c in self.enabled_cameras if rule_applies(rule, c)]
