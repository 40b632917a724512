"""The daemon's HTTP server on `metrics.host:metrics.port`: Prometheus, health, and a status page.

| path | answers |
|---|---|
| `/metrics` | prometheus-client's ASGI app over the daemon's collector (vistream.ops.metrics) |
| `/healthz` | 200 `ok`, or 503 and a one-line reason (`health`) |
| `/livez` | the same, except that a remote model (Triton) down or an unwritable outbox is no reason for 503 |
| `/api/status` | the daemon as a whole: health, model, MQTT, cameras online |
| `/api/cameras` | one object per camera: state, rates, drops by reason, the latest frame's seq |
| `/api/cameras/{name}/latest.jpg` | the latest inferred frame: boxes, track ids, zones, lines drawn |
| `/api/events` | the most recent events, newest first |
| `/` | the status page (static/: plain HTML, CSS and JS, nothing from outside) |

Before any of them (`Guard`): a `Host` that is not an address of the daemon or an allowed name gets
421 (DNS rebinding), then basic auth when `metrics.web_config_file` names users (401 without it).
TLS, when the web config has it, is the listening socket's; SIGHUP reads the web config again
(`HttpServer.reload`). `metrics.pictures: false` makes latest.jpg 404 and the page imageless.
Connections are bounded (`metrics.max_connections`: one more is closed at once) and so is idle
time (`metrics.idle_timeout_s`: also a connection that never sends a request), so idle sockets
cannot take the daemon's file descriptors (docs/security.md).

Starlette on uvicorn, with an event loop on a thread of its own. Everything is read from what
the daemon keeps anyway (ring headers, the scheduler's figures, the result pump's latest frame of
each camera), taking no lock longer than a copy; pictures are drawn and encoded on worker threads
(OpenCV lets go of the GIL while it works) and only when a newer frame is asked for.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from vistream.config.models import CameraConfig, MetricsConfig
from vistream.config.secrets import redact_text, redact_url
from vistream.ops.stats import DROP_REASONS
from vistream.ops.status import StatusSource, health
from vistream.ops.webconfig import BasicAuth, WebConfig, WebConfigError, load_web_config
from vistream.outputs.results import LatestFrame
from vistream.outputs.snapshot import box_label, read_snapshot, render_snapshot
from vistream.ring.shm import FrameRing

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
RATE_WINDOW_S = 5.0  # rates are averaged over this long
SAMPLE_EVERY_S = 1.0  # the scheduler's figures change once a second
RECENT_EVENTS = 20
STOP_S = 2.0
ZONE_COLOUR = (255, 255, 255)  # BGR
LINE_COLOUR = (255, 0, 255)


class Rates:
    """Frames per second decoded and inferred per camera, over the last RATE_WINDOW_S."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: dict[str, deque[tuple[float, int, int]]] = {}

    def sample(self, now: float, counts: dict[str, tuple[int, int]]) -> None:
        """`counts`: camera -> (frames decoded, frames inferred) so far."""
        for name in self._samples.keys() - counts.keys():
            del self._samples[name]
        for name, (decoded, inferred) in counts.items():
            samples = self._samples.setdefault(name, deque())
            samples.append((now, decoded, inferred))
            while len(samples) > 2 and now - samples[1][0] >= self.window_s:
                samples.popleft()

    def get(self, name: str) -> tuple[float | None, float | None]:
        """(decoded/s, inferred/s); None until a second has been seen. A counter that went back
        (a camera removed and added again) counts from where it is now."""
        samples = self._samples.get(name)
        if not samples or samples[-1][0] - samples[0][0] < 0.9:
            return None, None
        (t0, d0, i0), (t1, d1, i1) = samples[0], samples[-1]
        span = t1 - t0
        return round(max(0, d1 - d0) / span, 2), round(max(0, i1 - i0) / span, 2)


def counts(d: StatusSource) -> dict[str, tuple[int, int]]:
    stats = d.scheduler_stats()
    out = {}
    for cam in d.camera_status():
        c = stats.cameras.get(cam.name)
        out[cam.name] = (cam.field("frames_decoded"), c.inferred if c else 0)
    return out


def camera_list(d: StatusSource, rates: Rates, now: float) -> list[dict[str, Any]]:
    """What /api/cameras answers: one object per camera, in config order; URLs redacted."""
    stats = d.scheduler_stats()
    out = []
    for cam in d.camera_status():
        name = cam.name
        c = stats.cameras.get(name)
        fps_in, fps_inferred = rates.get(name)
        last = cam.seconds("last_frame")
        latest = d.latest(name)
        out.append(
            {
                "name": name,
                "url": redact_url(cam.cfg.url),
                "state": cam.state,
                # why it could not be started (state `failed`), else null; redacted like every string served
                "error": redact_text(cam.failed) if cam.failed is not None else None,
                "online": cam.online,
                "fps_in": fps_in,
                "fps_inferred": fps_inferred,
                "detect_fps": cam.cfg.detect_fps,
                "last_frame_age_s": round(now - last, 3) if last else None,
                "reconnects": cam.field("reconnects"),
                "dropped": {reason: getattr(c, reason) if c else 0 for reason in DROP_REASONS},
                "width": cam.field("stream_width") or None,
                "height": cam.field("stream_height") or None,
                "frame": _frame(latest),
            }
        )
    return out


def _frame(latest: LatestFrame | None) -> dict[str, Any] | None:
    """The latest inferred frame: its seq (what latest.jpg shows) and what was found in it."""
    if latest is None:
        return None
    return {
        "seq": latest.seq,
        "captured_at": round(latest.captured_at, 3),
        "objects": dict(Counter(obj.label for obj in latest.objects)),
    }


def status(d: StatusSource, now: float) -> dict[str, Any]:
    reason = health(d.vitals(now))
    ready = d.ready
    cameras = d.camera_status()
    return {
        "healthy": reason is None,
        "reason": redact_text(reason) if reason is not None else None,
        "ready": ready is not None,
        "device": ready.device if ready else None,
        "half": ready.half if ready else None,
        "backend": ready.backend if ready else None,
        "precision": ready.precision if ready else None,
        "mqtt_connected": d.figures().mqtt_connected,
        "cameras": len(cameras),
        "cameras_online": sum(cam.online for cam in cameras),
        "cameras_failed": sum(cam.failed is not None for cam in cameras),
    }


def draw_latest(
    use_ring: AbstractContextManager[FrameRing | None], cam: CameraConfig, latest: LatestFrame
) -> bytes | None:
    """The JPEG of the camera's latest inferred frame with its zones, lines and boxes (with track
    ids); None when the frame has left the ring, or the ring is gone (the camera is being removed).
    `use_ring`: the ring under its lease, held for the copy only."""
    with use_ring as ring:
        got = read_snapshot(ring, latest.seq) if ring is not None else None
    if got is None:
        return None
    image, cam_w, cam_h = got
    draw_shapes(image, cam)
    boxes = [(obj.box, _object_label(obj.label, obj.track_id, obj.confidence)) for obj in latest.objects]
    return render_snapshot(image, cam_w, cam_h, boxes)


def _object_label(label: str, track_id: int | None, confidence: float) -> str:
    return box_label(label if track_id is None else f"{label} #{track_id}", confidence)


def draw_shapes(image: np.ndarray, cam: CameraConfig) -> None:
    """The camera's zones (outlined, lightly filled) and lines (with an arrow p1 -> p2), in place."""
    h, w = image.shape[:2]
    thick = max(1, round(w / 640))
    if cam.zones:
        fill = image.copy()
        polys = [np.array([(x * w, y * h) for x, y in pts], np.int32) for pts in cam.zones.values()]
        cv2.fillPoly(fill, polys, ZONE_COLOUR)
        cv2.addWeighted(fill, 0.15, image, 0.85, 0, dst=image)
        for name, poly in zip(cam.zones, polys, strict=True):
            cv2.polylines(image, [poly], True, ZONE_COLOUR, thick, cv2.LINE_AA)
            _tag(image, name, tuple(poly.min(axis=0)), ZONE_COLOUR)
    for name, ((x1, y1), (x2, y2)) in cam.lines.items():
        p1, p2 = (round(x1 * w), round(y1 * h)), (round(x2 * w), round(y2 * h))
        cv2.arrowedLine(image, p1, p2, LINE_COLOUR, thick + 1, cv2.LINE_AA, tipLength=0.03)
        _tag(image, name, p1, LINE_COLOUR)


def _tag(image: np.ndarray, text: str, at: tuple[int, int], colour: tuple[int, int, int]) -> None:
    scale = image.shape[1] / 1600
    x, y = int(at[0]) + 4, max(int(at[1]) + 4, 0)
    (_, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(image, text, (x, y + th), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


class Pictures:
    """Each camera's latest picture: drawn when a newer frame is asked for, from the frame the
    result pump holds, and kept, so that a camera whose frame has left the ring (a hold expires
    after 5 s) still shows its last picture."""

    def __init__(self, d: StatusSource) -> None:
        self.d = d
        self._jpegs: dict[str, tuple[int, bytes]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, name: str) -> tuple[int, bytes] | None:
        """(seq, JPEG) of the camera's latest picture; None before its first inferred frame."""
        cfg = self.d.camera_config(name)
        if cfg is None:
            self._jpegs.pop(name, None)
            return None
        async with self._locks.setdefault(name, asyncio.Lock()):
            latest = self.d.latest(name)
            kept = self._jpegs.get(name)
            if latest is None or (kept and kept[0] == latest.seq):
                return kept
            jpeg = await run_in_threadpool(draw_latest, self.d.ring(name), cfg, latest)
            if jpeg is not None:
                self._jpegs[name] = kept = (latest.seq, jpeg)
            return kept


class _AsgiEndpoint:
    """An ASGI app as a route's endpoint: a Mount would answer /metrics with a redirect to /metrics/."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def build_app(
    d: StatusSource,
    metrics_app: ASGIApp,
    clock: Callable[[], float] = time.monotonic,
    *,
    show_pictures: bool = True,
) -> Starlette:
    rates, pictures = Rates(), Pictures(d)

    async def sample_rates() -> None:
        while True:
            rates.sample(clock(), counts(d))
            await asyncio.sleep(SAMPLE_EVERY_S)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(sample_rates())
        try:
            yield
        finally:
            task.cancel()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def healthz(request: Request) -> Response:
        reason = health(d.vitals(clock()))
        if reason is None:
            return PlainTextResponse("ok\n")
        return PlainTextResponse(f"{redact_text(reason)}\n", status_code=503)

    async def livez(request: Request) -> Response:
        # /healthz without the remote model: what an orchestrator's liveness probe asks, since
        # restarting this daemon would not bring a Triton server back.
        reason = health(d.vitals(clock()), remote=False)
        if reason is None:
            return PlainTextResponse("ok\n")
        return PlainTextResponse(f"{redact_text(reason)}\n", status_code=503)

    async def api_status(request: Request) -> Response:
        return JSONResponse({**status(d, clock()), "pictures": show_pictures})

    async def api_cameras(request: Request) -> Response:
        return JSONResponse(camera_list(d, rates, clock()))

    async def api_events(request: Request) -> Response:
        _, _, recent = d.events()
        return JSONResponse(recent[::-1][:RECENT_EVENTS])

    async def latest_jpg(request: Request) -> Response:
        name = request.path_params["name"]
        if not show_pictures:
            return PlainTextResponse("pictures are off (metrics.pictures)\n", status_code=404)
        if d.camera_config(name) is None:
            return PlainTextResponse(f"no camera named {name!r}\n", status_code=404)
        got = await pictures.get(name)
        if got is None:
            return PlainTextResponse(
                f"camera {name}: no frame inferred yet\n", status_code=503, headers={"Retry-After": "2"}
            )
        seq, jpeg = got
        etag = f'"{seq}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Frame-Seq": str(seq)}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(jpeg, media_type="image/jpeg", headers=headers)

    routes = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/livez", livez),
        Route("/metrics", _AsgiEndpoint(metrics_app)),
        Route("/api/status", api_status),
        Route("/api/cameras", api_cameras),
        Route("/api/cameras/{name}/latest.jpg", latest_jpg),
        Route("/api/events", api_events),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


class HostCheck:
    """Is a request's `Host` one of the daemon's own? (DNS rebinding: a page from evil.example, its
    name re-pointed at 127.0.0.1, would otherwise read this server as its own origin.)

    Allowed: an address literal that is the listen address, a loopback address, or the address
    the connection came in on (with `0.0.0.0`, every address of the machine); `localhost`, the
    machine's host name, and `allowed_hosts`. No `Host` at all (HTTP/1.0) is allowed: nothing
    to rebind."""

    def __init__(self, listen: str, allowed: list[str], hostname: str | None = None) -> None:
        self.listen = _address(listen)
        hostname = socket.gethostname() if hostname is None else hostname
        self.names = {_norm(n) for n in (*allowed, "localhost", hostname) if n}

    def allows(self, host: str | None, local: str | None) -> bool:
        if host is None:
            return True
        name = _norm(_strip_port(host))
        ip = _address(name)
        if ip is None:
            return name in self.names
        return ip.is_loopback or ip == self.listen or (local is not None and ip == _address(local))


def _norm(name: str) -> str:
    return name.strip().lower().rstrip(".")


def _strip_port(host: str) -> str:
    if host.startswith("["):  # [v6]:port
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.strip("[]").split("%")[0])
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped or ip


class Guard:
    """The checks before the app: Host (421), then basic auth (401) when the web config has users.

    `web()` is the web config in force (swapped whole by a reload); bcrypt runs on a thread of
    its own, never on the event loop."""

    def __init__(
        self, app: ASGIApp, hosts: HostCheck, web: Callable[[], tuple[WebConfig, BasicAuth]]
    ) -> None:
        self.app, self.hosts, self.web = app, hosts, web

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host, local = headers.get(b"host"), scope.get("server")
        if not self.hosts.allows(host.decode("latin-1") if host else None, local[0] if local else None):
            response: Response = PlainTextResponse("misdirected request: unknown Host\n", status_code=421)
            await response(scope, receive, send)
            return
        _, auth = self.web()
        if auth.users and not await self._authorised(auth, headers.get(b"authorization")):
            response = PlainTextResponse(
                "401 Unauthorized\n", status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="vistream", charset="UTF-8"'},
            )  # fmt: skip
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _authorised(self, auth: BasicAuth, header: bytes | None) -> bool:
        creds = BasicAuth.credentials(header.decode("latin-1") if header is not None else None)
        if creds is None:
            return False
        if auth.cached(*creds):
            return True
        return await asyncio.get_running_loop().run_in_executor(None, auth.check, *creds)


class BoundedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the two bounds it lacks:

    * a connection whose first request has not fully arrived within `timeout_keep_alive` is
      closed (uvicorn times out only the wait between requests, so a socket opened and left
      silent, or sending its headers a byte a minute, stayed forever);
    * over `limit_concurrency` connections, the one waiting longest for a request is closed to
      make room, or the new one when every other is busy with a request (uvicorn would keep it,
      and its descriptor, answering 503). Idle sockets then cannot lock out a scraper or a health
      probe either."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.opened_at = self.loop.time()
        self._first_request = self.loop.call_later(self.timeout_keep_alive, self._first_request_due)
        # uvicorn answers 503 from `limit_concurrency` connections on: one fewer stay open, so that
        # it never does for want of a connection (HttpServer sets it to max_connections + 1).
        limit = self.limit_concurrency
        live = [c for c in self.connections if not getattr(c, "transport", transport).is_closing()]
        if limit is None or len(live) < limit:
            return
        idle = [c for c in live if isinstance(c, BoundedH11) and c is not self and c.waiting]
        if idle:
            min(idle, key=lambda c: c.opened_at).drop()
        else:
            self.drop()

    @property
    def waiting(self) -> bool:
        """No request in progress: none complete yet, or the last one answered."""
        return self.cycle is None or self.cycle.response_complete

    def drop(self) -> None:
        """Close the connection now (whatever h11 thinks: nothing more is sent on it)."""
        self._first_request.cancel()
        self._unset_keepalive_if_required()
        if not self.transport.is_closing():
            self.transport.close()

    def _first_request_due(self) -> None:
        if self.cycle is None:  # no request head complete yet
            self.drop()

    def connection_lost(self, exc: Exception | None) -> None:
        self._first_request.cancel()
        super().connection_lost(exc)


class HttpServer:
    """uvicorn serving the app on an already bound socket, on a thread of its own.

    `web_config_file`: read now (WebConfigError when it cannot be used) and again at `reload()`."""

    def __init__(
        self,
        app: ASGIApp,
        sock: socket.socket,
        cfg: MetricsConfig | None = None,
        web_config_file: Path | None = None,
    ) -> None:
        cfg = cfg or MetricsConfig()
        self._sock = sock
        self.port: int = sock.getsockname()[1]
        self._web_file = web_config_file
        web = load_web_config(web_config_file) if web_config_file else WebConfig()
        self._web = (web, BasicAuth(web.users))
        self.tls: ssl.SSLContext | None = web.tls.context() if web.tls else None
        hosts = HostCheck(cfg.host, cfg.allowed_hosts)
        config = uvicorn.Config(
            Guard(app, hosts, lambda: self._web),
            loop="asyncio",
            http=BoundedH11,
            lifespan="on",
            log_config=None,  # the daemon's logging, as it is
            log_level=logging.WARNING,
            access_log=False,  # a browser polling the status page is not worth a journal line a second
            timeout_graceful_shutdown=1,
            limit_concurrency=cfg.max_connections + 1,  # see BoundedH11
            # asyncio's listen backlog, and how many connections it accepts in one go before any
            # is handled (uvicorn's 2048 would let a burst take 2048 descriptors at once).
            backlog=min(cfg.max_connections, 128),
            timeout_keep_alive=cfg.idle_timeout_s,  # type: ignore[arg-type]
        )
        config.load()
        # Our context, not one uvicorn would build from file names: `reload` loads new certificates
        # into it in place, and connections accepted from then on use them.
        config.ssl = self.tls
        self._server = uvicorn.Server(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._server.serve(sockets=[self._sock])

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def start(self) -> None:
        self._thread.start()

    def reload(self) -> bool:
        """Read the web config file again (SIGHUP). A bad one is logged and the old one stays;
        False then. TLS cannot be switched on or off in place: that one change waits for a restart."""
        if self._web_file is None:
            return True
        try:
            web = load_web_config(self._web_file)
        except WebConfigError as exc:
            log.error("reload: metrics.web_config_file: %s; the previous web config stays in force", exc)
            return False
        if (web.tls is None) != (self.tls is None):
            log.warning("reload: %s turns TLS %s: a restart of the service applies that", self._web_file,
                        "on" if web.tls else "off")  # fmt: skip
        elif web.tls is not None and self.tls is not None:
            self._on_loop(web.tls.apply, self.tls)
        self._web = (web, BasicAuth(web.users))
        log.info("reload: web config %s read (TLS %s, %d basic auth user(s))", self._web_file,
                 "on" if self.tls else "off", len(web.users))  # fmt: skip
        return True

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Run `fn` on the server's event loop (where the context is used), and wait for it."""
        loop = self._loop
        if loop is None or not loop.is_running():
            fn(*args)
            return

        async def call() -> None:
            fn(*args)

        asyncio.run_coroutine_threadsafe(call(), loop).result(5.0)

    def stop(self, timeout: float = STOP_S) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0: any free port); OSError as bind(2) reports it.

    Bound here, not by uvicorn, so that a port in use is an error the daemon can report (uvicorn
    would log it and exit its thread) and `port: 0` tells which port it got."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restarts within TIME_WAIT
        sock.bind(addr)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def serve(d: StatusSource, host: str, port: int, metrics_app: ASGIApp) -> HttpServer:
    """Bind, then serve in a thread; returns the server (`.port`, `.stop()`, `.reload()`).

    OSError when it cannot listen; WebConfigError when `metrics.web_config_file` cannot be used."""
    cfg = d.cfg.metrics
    app = build_app(d, metrics_app, show_pictures=cfg.show_pictures)
    sock = bind(host, port)
    try:
        server = HttpServer(app, sock, cfg, cfg.web_config_file)
    except BaseException:
        sock.close()
        raise
    server.start()
    return server
