"""The RTSP test server that loops sample clips as live cameras: vistream/bench/rtsp_server.py (in the
package since `vistream bench` needs it too), where its protocol is described. And a server that
stalls mid-handshake, for the hostile stream tests."""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Self

from vistream.bench.rtsp_server import HOST, SCRIPT, SYSTEM_PYTHON, RtspServer, missing_dependency

__all__ = ["HOST", "SCRIPT", "SYSTEM_PYTHON", "RtspServer", "StallingRtspServer", "missing_dependency"]


class StallingRtspServer:
    """A TCP server that accepts RTSP clients and then stalls: `answer_options=False` never says a word;
    with True it answers OPTIONS like a real server and then never answers DESCRIBE. Connections are
    held open (never closed, never reset) until `stop()`; `accepted` counts them."""

    def __init__(self, answer_options: bool = False) -> None:
        self.answer_options = answer_options
        self.accepted = 0
        self._sock = socket.create_server((HOST, 0))
        self.port = self._sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = threading.Event()

    def url(self, name: str = "cam") -> str:
        return f"rtsp://{HOST}:{self.port}/{name}"

    def start(self) -> Self:
        threading.Thread(target=self._accept, name="stalling-rtsp", daemon=True).start()
        return self

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)
            if self.answer_options:
                threading.Thread(target=self._options_then_stall, args=(conn,), daemon=True).start()

    def _options_then_stall(self, conn: socket.socket) -> None:
        conn.settimeout(0.5)
        data = b""
        while not self._stop.is_set():
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            data += chunk
            while b"\r\n\r\n" in data:
                request, _, data = data.partition(b"\r\n\r\n")
                lines = request.decode(errors="replace").split("\r\n")
                if not lines[0].startswith("OPTIONS"):
                    continue  # DESCRIBE and the rest: never answered
                cseq = next(
                    (ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("cseq:")), "1"
                )
                conn.sendall(
                    f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n"
                    "Public: OPTIONS, DESCRIBE, SETUP, TEARDOWN, PLAY\r\n\r\n".encode()
                )

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
        for conn in self._held:
            conn.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
