"""Does a camera answer again? A cheap check that cuts a long reconnect backoff short.

Opening a stream (TCP, the RTSP handshake, FFmpeg probing the codec) costs CPU and up to
`open_timeout_s`, so the reader backs full opens off up to `reconnect_max_s`. Sleeping out such a
backoff kept a camera that came back offline for up to that long. A TCP connect to the camera's
port costs a handshake (a refusal, while nothing listens) and says when it answers again.
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

from vistream.config.models import CameraConfig

DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322}
PROBE_EVERY_S = 2.0
PROBE_TIMEOUT_S = 1.0


def camera_address(cam: CameraConfig) -> tuple[str, int] | None:
    """host, port of an RTSP camera; None for a file (there is nothing to probe)."""
    if cam.is_file:
        return None
    parts = urlsplit(cam.url)
    assert parts.hostname is not None  # the config checked it
    return parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme]


def port_open(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Does something accept TCP connections on host:port?"""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            # A connect to a closed port of this very host can meet itself when the kernel picks the
            # same port as the source (TCP simultaneous open): that is nobody answering.
            return bool(sock.getsockname() != sock.getpeername())
    except OSError:
        return False


def _in_thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="port-probe", daemon=True).start()


class PortWatch:
    """Notices a camera's port opening again: a TCP connect every `every` s while the reader waits.

    Only a change counts, a probe that finds the port open after one that found it closed, so a
    camera that accepts connections while its stream keeps failing (a wrong path or password, an
    RTSP server whose camera is gone) never cuts a backoff short, and a camera that stays down only
    gets probes: its full opens stay backed off. A return is reported at most once per `quiet` s,
    so a port that flaps cannot bring full opens forward over and over.

    The probe runs off the caller's thread, one at a time: resolving a host name has no timeout, and
    the reader must keep its heartbeat and answer a stop meanwhile. `spawn` runs it (tests: inline).
    """

    def __init__(
        self,
        probe: Callable[[], bool],
        *,
        every: float = PROBE_EVERY_S,
        quiet: float = 0.0,
        spawn: Callable[[Callable[[], None]], None] = _in_thread,
    ) -> None:
        self.every, self.quiet = every, quiet
        self._reported = float("-inf")  # when came_back last said True
        self._probe, self._spawn = probe, spawn
        self._found: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._busy = False
        self._due = float("-inf")
        self.last: bool | None = None  # what the latest probe found; None before the first

    @classmethod
    def for_camera(cls, cam: CameraConfig) -> PortWatch | None:
        address = camera_address(cam)
        if address is None:
            return None
        return cls(lambda: port_open(*address), quiet=cam.reconnect_max_s)

    def came_back(self, now: float) -> bool:
        """Call it often while waiting; True when the latest probe found the port open again."""
        back = False
        if self._busy:
            try:
                found = self._found.get_nowait()
            except queue.Empty:
                return False
            self._busy = False
            back = found and self.last is False and now - self._reported >= self.quiet
            self.last = found
            if back:
                self._reported = now
        if now >= self._due:
            self._due = now + self.every
            self._busy = True
            self._spawn(self._run)
        return back

    def answered(self) -> None:
        """A full open succeeded: the port is open, whatever an older probe found."""
        self.last = True

    def _run(self) -> None:
        found = False
        try:
            found = self._probe()
        finally:
            self._found.put(found)
