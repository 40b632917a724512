"""An embedded MQTT broker for `vistream demo`, so the demo needs no Mosquitto.

amqtt runs on its own asyncio loop in a daemon thread. We own the listening socket and hand each
accepted connection to amqtt through its "external" listener (`Broker.external_connected`), which
lets us bind port 0, fall back to a free port, and read the bound port without touching amqtt
internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import threading
from types import TracebackType

log = logging.getLogger(__name__)

# amqtt logs every connection and packet at INFO/DEBUG; `transitions` logs its state machines.
_NOISY_LOGGERS = ("amqtt", "transitions")


class BrokerStartError(RuntimeError):
    """The embedded broker could not bind or start."""


class EmbeddedBroker:
    """amqtt on 127.0.0.1, anonymous access, MQTT 3.1.1 (retained messages, QoS 0-2, Last Will).

    `start()` returns the bound port; `stop()` is bounded by `stop_timeout_s` and leaves no thread
    or listening socket behind. Usable as a context manager.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def address(self) -> str:
        """`host:port` of the running broker, for logs and the demo table."""
        return f"{self.host}:{self.port}"

    def start(self) -> int:
        """Bind, start the broker thread and wait until it accepts connections; return the port."""
        if self._thread is not None:
            raise BrokerStartError("broker already started")
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        # Bind here, in the caller's thread, so a bind error surfaces as a plain exception.
        sock = _listen(self.host, self.requested_port)
        self.port = sock.getsockname()[1]
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name="vistream-mqtt-broker", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(self.start_timeout_s):
            self.stop()
            raise BrokerStartError(f"broker did not start within {self.start_timeout_s:.0f} s")
        if self._error is not None:
            error = self._error
            self._join()
            raise BrokerStartError(f"broker failed to start: {error}") from error
        log.info("embedded MQTT broker listening on %s", self.address)
        return self.port

    def stop(self) -> None:
        """Disconnect clients, close the listener and join the thread, all within `stop_timeout_s`."""
        if self._thread is None:
            return
        loop, stop_event = self._loop, self._stop_event
        if loop is not None and stop_event is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed on its own
                loop.call_soon_threadsafe(stop_event.set)
        self._join()

    def _join(self) -> None:
        assert self._thread is not None
        # The loop bounds amqtt's shutdown to stop_timeout_s; the extra second covers cancelling the rest.
        self._thread.join(self.stop_timeout_s + 1.0)
        if self._thread.is_alive():
            log.warning("embedded MQTT broker thread did not stop within %.0f s", self.stop_timeout_s + 1.0)
        self._thread = None
        self._loop = None
        self._stop_event = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self, sock: socket.socket) -> None:
        try:
            asyncio.run(self._serve(sock))
        except BaseException as exc:  # reported to start(); a daemon thread has nobody else to tell
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                log.exception("embedded MQTT broker crashed")
        finally:
            sock.close()

    async def _serve(self, sock: socket.socket) -> None:
        # Imported here: amqtt pulls in websockets, transitions, pwdlib... only the demo needs them.
        from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
        from amqtt.broker import Broker
        from amqtt.contexts import BrokerConfig, ListenerConfig, ListenerType

        config = BrokerConfig(
            listeners={"default": ListenerConfig(type=ListenerType.EXTERNAL)},
            # Only anonymous auth: the default plugin set adds $SYS publishing (needs psutil) and
            # packet loggers we do not want.
            plugins={"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        )
        broker = Broker(config)
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()

        connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections[task] = writer
            try:
                await broker.external_connected(
                    StreamReaderAdapter(reader), StreamWriterAdapter(writer), listener_name="default"
                )
            finally:
                connections.pop(task, None)
                writer.close()

        await broker.start()
        server = await asyncio.start_server(on_connection, sock=sock)
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            server.close()
            await self._drop_clients(connections)
            try:
                await asyncio.wait_for(broker.shutdown(), self.stop_timeout_s)
            except (TimeoutError, Exception):
                log.warning("embedded MQTT broker did not shut down cleanly", exc_info=True)
        # asyncio.run() then cancels whatever amqtt tasks are left.

    async def _drop_clients(self, connections: dict[asyncio.Task[None], asyncio.StreamWriter]) -> None:
        """Close every client socket and let amqtt see the EOF before Broker.shutdown runs.

        Broker.shutdown cancels each client's reader task and waits for it, but on Python 3.11
        `asyncio.wait_for` swallows a cancellation that lands just as a packet arrives
        (https://github.com/python/cpython/issues/86296), and the reader then waits for the next
        packet: up to a keep-alive interval. A reader that sees EOF ends on its own.
        """
        for writer in list(connections.values()):
            writer.transport.abort()
        if connections:
            _, pending = await asyncio.wait(list(connections), timeout=self.stop_timeout_s / 2)
            if pending:
                log.warning("%d MQTT client sessions did not end when their sockets closed", len(pending))


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; when that port is taken, on any free port instead."""
    try:
        return socket.create_server((host, port), backlog=64)
    except OSError as exc:
        if port == 0 or exc.errno != errno.EADDRINUSE:
            raise BrokerStartError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        sock = socket.create_server((host, 0), backlog=64)
        log.warning(
            "port %d on %s is busy, the demo broker uses %d instead", port, host, sock.getsockname()[1]
        )
        return sock
