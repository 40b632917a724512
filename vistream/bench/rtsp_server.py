"""An RTSP server that serves sample clips as endless live cameras, and the class that runs it.

Used by `vistream bench`, the benchmarks and the integration tests (through tests/support/rtsp_server.py).

The server half runs under the system interpreter (`/usr/bin/python3`, which has python3-gi and
GstRtspServer; the project's venv has neither) and imports `gi` only there:

    /usr/bin/python3 vistream/bench/rtsp_server.py --port 0 --mount cam=clip.mp4 [--mount ...]

It prints `READY <port>` once listening, then reads commands on stdin, one a line, answering each with
`OK <command> <mount>` on stdout:

    STOP name    the camera goes away: new clients get 404, clients watching it are disconnected
    START name   the camera is back
    FREEZE name  the camera stops sending but keeps its connections open (a hung camera)
    THAW name    it sends again; timestamps jump over the silence, as a live camera's do

EOF on stdin (the process that started it died) or SIGTERM stops the server.

Why the clips are not simply looped by a demuxer pipeline: qtdemux does not loop, and a stream that
ends is a camera that went away. The server reads each clip's H.264 access units once and every client
gets its own live `appsrc` fed by a thread at the clip's frame rate, starting at the first IDR and
wrapping around to it at the end, with timestamps that keep increasing across the wrap.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

SYSTEM_PYTHON = "/usr/bin/python3"
HOST = "127.0.0.1"
SCRIPT = Path(__file__).resolve()
# The GStreamer elements the server needs, and the Debian packages that ship them.
ELEMENTS = {
    "qtdemux": "gstreamer1.0-plugins-good",
    "h264parse": "gstreamer1.0-plugins-bad",
    "rtph264pay": "gstreamer1.0-plugins-good",
    "appsrc": "gstreamer1.0-plugins-base",
    "appsink": "gstreamer1.0-plugins-base",
    "filesrc": "gstreamer1.0 (core)",
}


# --- The client side (the venv's interpreter) ---------------------------------------------------


def missing_dependency() -> str | None:
    """Why the server cannot run on this machine, or None when it can."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} not found (the RTSP test server needs it with python3-gi)"
    check = subprocess.run(
        [SYSTEM_PYTHON, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    return None if check.returncode == 0 else (check.stderr.strip() or check.stdout.strip())


class RtspServer:
    """Runs the server script as a subprocess: `with RtspServer({"cam": path}) as srv: srv.url("cam")`."""

    def __init__(self, mounts: Mapping[str, Path], port: int = 0) -> None:
        self.mounts = dict(mounts)
        self.port = port
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()  # None: the server closed stdout
        self._stderr: IO[str] | None = None
        self._lock = threading.Lock()

    def url(self, name: str) -> str:
        return f"rtsp://{HOST}:{self.port}/{name}"

    def start(self, timeout: float = 20.0) -> Self:
        """Start the server; after `stop()`, on the port it had (a camera's server coming back)."""
        args = [SYSTEM_PYTHON, str(SCRIPT), "--port", str(self.port)]
        for name, path in self.mounts.items():
            args += ["--mount", f"{name}={path}"]
        # stderr goes to a file: a pipe nobody drains would block the server once it fills.
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in stop())
        self._proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1
        )
        # A queue of this run's own: the previous run's reader thread ends it with None.
        self._lines = queue.Queue()
        threading.Thread(target=self._read_stdout, args=(self._proc.stdout, self._lines), daemon=True).start()
        ready = self._expect("READY ", timeout)
        self.port = int(ready.split()[1])
        return self

    def stop(self, timeout: float = 5.0) -> None:
        # Imported here, not at the top: this file also runs as a script, outside its package.
        from .procs import stop_process

        if self._proc is not None:
            stop_process(self._proc, timeout)
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop_mount(self, name: str) -> None:
        """The camera goes away: watchers are disconnected, new clients get 404 Not Found."""
        self._command("STOP", name)

    def start_mount(self, name: str) -> None:
        """The camera is back after `stop_mount`."""
        self._command("START", name)

    def freeze_mount(self, name: str) -> None:
        """The camera hangs: connections stay open and no frame arrives."""
        self._command("FREEZE", name)

    def thaw_mount(self, name: str) -> None:
        """The hung camera sends frames again."""
        self._command("THAW", name)

    def stderr(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()

    def _command(self, verb: str, name: str, timeout: float = 5.0) -> None:
        assert self._proc is not None and self._proc.stdin is not None, "server not started"
        with self._lock:
            self._proc.stdin.write(f"{verb} {name}\n")
            self._proc.stdin.flush()
            answer = self._expect("", timeout)
        if answer != f"OK {verb} {name}":
            raise RuntimeError(f"RTSP test server answered {answer!r} to {verb} {name}")

    def _read_stdout(self, stdout: IO[str], lines: queue.Queue[str | None]) -> None:
        for line in stdout:
            lines.put(line.strip())
        lines.put(None)

    def _expect(self, prefix: str, timeout: float) -> str:
        """The next line the server prints; it must start with `prefix`."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            line = "nothing"
        if line is None:
            self._lines.put(None)  # gone for every later caller too
            line = "end of output"
        if not line.startswith(prefix):
            error = f"RTSP test server: expected {prefix!r}, got {line!r}; stderr:\n{self.stderr()}"
            self.stop()  # a server that misbehaves is not left running
            raise RuntimeError(error)
        return line


# --- The server side (the system interpreter, with gi) ----------------------------------------

# Bound by import_gi(): the client side imports this module where gi does not exist.
GLib: Any = None
Gst: Any = None
GstRtspServer: Any = None


def import_gi() -> None:
    global GLib, Gst, GstRtspServer
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)


class Clip:
    """A clip's H.264 access units in byte-stream form, SPS/PPS repeated before every IDR."""

    def __init__(self, path: Path) -> None:
        pipeline = Gst.parse_launch(
            "filesrc name=file ! qtdemux ! h264parse config-interval=-1"
            " ! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
        )
        pipeline.get_by_name("file").set_property("location", str(path))
        sink, bus = pipeline.get_by_name("sink"), pipeline.get_bus()
        pipeline.set_state(Gst.State.PLAYING)
        self.units: list[bytes] = []
        self.caps: Any = None
        # Not a blocking pull-sample: after a demuxer error, appsink would wait forever.
        while (error := bus.pop_filtered(Gst.MessageType.ERROR)) is None and not sink.props.eos:
            sample = sink.emit("try-pull-sample", Gst.SECOND // 10)
            if sample is None:
                continue
            buf = sample.get_buffer()
            keyframe = not buf.has_flags(Gst.BufferFlags.DELTA_UNIT)
            if self.units or keyframe:  # the loop restarts at units[0], so it must be a keyframe
                self.units.append(buf.extract_dup(0, buf.get_size()))
            self.caps = sample.get_caps()
        pipeline.set_state(Gst.State.NULL)
        if error is not None or not self.units:
            reason = error.parse_error()[0].message if error else "no H.264 keyframe"
            raise SystemExit(f"cannot read {path}: {reason}")
        ok, num, den = self.caps.get_structure(0).get_fraction("framerate")
        if not ok or num <= 0:
            num, den = 30, 1
        self.frame_ns = Gst.SECOND * den // num


class Mount:
    """One camera: a clip, a media factory, and whether the camera is frozen."""

    def __init__(self, name: str, clip: Clip) -> None:
        self.path, self.clip = f"/{name}", clip
        self.frozen = False
        self.factory = GstRtspServer.RTSPMediaFactory()
        self.factory.set_launch(
            "( appsrc name=src is-live=true format=time"
            " ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
        )
        self.factory.set_shared(False)  # each client its own media, so each starts at the IDR
        self.factory.connect("media-configure", self.on_media_configure)

    def on_media_configure(self, _factory: Any, media: Any) -> None:
        appsrc = media.get_element().get_by_name("src")
        appsrc.set_property("caps", self.clip.caps)
        feeder = Feeder(self, appsrc)
        appsrc.connect("need-data", feeder.on_need_data)
        media.connect("unprepared", lambda _media: feeder.closed.set())


class Feeder:
    """Feeds one client's appsrc with its mount's clip at the clip's frame rate, looping forever."""

    def __init__(self, mount: Mount, appsrc: Any) -> None:
        self.mount, self.appsrc = mount, appsrc
        self.closed = threading.Event()
        self.started = False

    def on_need_data(self, _appsrc: Any, _length: int) -> None:
        # A live source asks for data once its pipeline plays, when its clock and base time exist.
        if not self.started:
            self.started = True
            threading.Thread(target=self.run, daemon=True).start()

    def running_time(self) -> int | None:
        clock = self.appsrc.get_clock()
        return None if clock is None else clock.get_time() - self.appsrc.get_base_time()

    def run(self) -> None:
        clip, frame_ns = self.mount.clip, self.mount.clip.frame_ns
        index = 0  # the next access unit
        sent = 0  # frames sent since the schedule was last set
        origin_ns = origin_pts = last_pts = -1
        while not self.closed.is_set():
            if self.mount.frozen:
                origin_ns = -1
                time.sleep(0.02)
                continue
            now = time.monotonic_ns()
            if origin_ns < 0 or now - (origin_ns + sent * frame_ns) > Gst.SECOND:
                # First frame, after a freeze, or after a stall: restart the schedule at the present,
                # so timestamps jump forward (as a live camera's do) rather than a backlog being sent.
                running = self.running_time()
                if running is None:
                    return  # the pipeline is being torn down
                origin_ns, origin_pts, sent = now, max(running, last_pts + frame_ns), 0
            due = origin_ns + sent * frame_ns
            if due > now:
                time.sleep((due - now) / 1e9)
            buf = Gst.Buffer.new_wrapped(clip.units[index])
            buf.pts = buf.dts = last_pts = origin_pts + sent * frame_ns
            buf.duration = frame_ns
            if self.appsrc.emit("push-buffer", buf) != Gst.FlowReturn.OK:
                return  # flushing: the client left
            sent += 1
            index = (index + 1) % len(clip.units)


class Server:
    """The RTSP server with its mounts, driven by commands on stdin."""

    def __init__(self, port: int, mounts: dict[str, Path]) -> None:
        self.rtsp = GstRtspServer.RTSPServer()
        self.rtsp.set_address(HOST)
        self.rtsp.set_service(str(port))
        clips: dict[Path, Clip] = {}
        self.mounts: dict[str, Mount] = {}
        for name, path in mounts.items():
            if path not in clips:  # two mounts of one clip share its access units
                clips[path] = Clip(path)
            self.mounts[name] = Mount(name, clips[path])
            self.rtsp.get_mount_points().add_factory(f"/{name}", self.mounts[name].factory)
        self.loop = GLib.MainLoop()

    def run(self) -> None:
        if self.rtsp.attach(None) == 0:
            raise SystemExit(f"cannot listen on {HOST}:{self.rtsp.get_service()}")
        # Sessions of clients that vanished without TEARDOWN expire only when someone asks the pool.
        GLib.timeout_add_seconds(2, self.expire_sessions)
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, self.loop.quit)
        threading.Thread(target=self.read_commands, daemon=True).start()
        print(f"READY {self.rtsp.get_bound_port()}", flush=True)
        self.loop.run()

    def expire_sessions(self) -> bool:
        self.rtsp.get_session_pool().cleanup()
        return True  # keep the timer

    def read_commands(self) -> None:
        for line in sys.stdin:
            GLib.idle_add(self.handle, line.strip())  # the main loop owns the server's objects
        GLib.idle_add(self.loop.quit)  # stdin closed: whoever started us is gone

    def handle(self, line: str) -> bool:
        verb, _, name = line.partition(" ")
        mount = self.mounts.get(name)
        if mount is None or verb not in ("STOP", "START", "FREEZE", "THAW"):
            print(f"ERR {line}", flush=True)
            return False
        if verb == "STOP":
            self.rtsp.get_mount_points().remove_factory(mount.path)
            self.disconnect(mount.path)
        elif verb == "START":
            self.rtsp.get_mount_points().add_factory(mount.path, mount.factory)
        else:
            mount.frozen = verb == "FREEZE"
        print(f"OK {line}", flush=True)
        return False  # an idle callback: run once

    def disconnect(self, path: str) -> None:
        """Close the connections of clients watching `path`.

        The server tears down a closed client's sessions, which stops RTP on UDP transport as well.
        """
        keep, remove = GstRtspServer.RTSPFilterResult.KEEP, GstRtspServer.RTSPFilterResult.REMOVE

        def watching(client: Any) -> bool:
            found = []

            def visit(_client: Any, session: Any, *_: Any) -> Any:
                found.append(session.get_media(path)[0] is not None)
                return keep

            client.session_filter(visit)
            return any(found)

        self.rtsp.client_filter(lambda _server, client, *_: remove if watching(client) else keep)


def check() -> None:
    """Exit non-zero, saying what is missing, when this interpreter cannot run the server."""
    try:
        import_gi()
    except (ImportError, ValueError) as exc:
        raise SystemExit(f"{sys.executable}: {exc} (needs python3-gi, gir1.2-gst-rtsp-server-1.0)") from exc
    missing = [f"{e} ({pkg})" for e, pkg in ELEMENTS.items() if Gst.ElementFactory.find(e) is None]
    if missing:
        raise SystemExit(f"GStreamer elements missing: {', '.join(missing)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="TCP port for RTSP; 0 picks a free one")
    parser.add_argument("--mount", action="append", default=[], metavar="NAME=PATH", help="serve a clip")
    parser.add_argument("--check", action="store_true", help="only check that the server can run here")
    args = parser.parse_args()
    if args.check:
        check()
        return
    mounts = {}
    for spec in args.mount:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).is_file():
            parser.error(f"--mount {spec}: expected NAME=PATH to an existing file")
        mounts[name] = Path(path).resolve()
    import_gi()
    Server(args.port, mounts).run()


if __name__ == "__main__":
    main()
