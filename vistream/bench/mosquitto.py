"""A real Mosquitto broker on a free port, and an MQTT subscriber that records what arrives."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt

from .procs import ServerProcess

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"


def missing_dependency() -> str | None:
    """Why no broker can be started on this machine, or None when one can."""
    if not os.access(MOSQUITTO, os.X_OK):
        return f"{MOSQUITTO} not found (Debian package mosquitto)"
    return None


@dataclass(frozen=True)
class TlsFiles:
    """Makes the broker's listener a TLS one: the CA bundle it trusts, its certificate and its key."""

    cafile: Path
    certfile: Path
    keyfile: Path


class Mosquitto(ServerProcess):
    """`with Mosquitto() as broker:` a broker on broker.host:broker.port until the block ends.

    stop() and start() (or restart()) keep the port, so a test can take the broker away and bring it
    back where clients expect it. With `users` ({name: password}) anonymous clients are refused.
    With `persistent=True` sessions (subscriptions of clean_session=False clients, their queued QoS 1
    messages) are saved at stop() and restored at start(), as a broker with persistence on does.
    With `tls` the listener speaks TLS only (clients then need the CA that signed `tls.certfile`).
    """

    program = "mosquitto"

    def __init__(
        self,
        port: int = 0,
        users: Mapping[str, str] | None = None,
        persistent: bool = False,
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__(port)
        self.users = dict(users or {})
        self.persistent = persistent
        self.tls = tls
        self._write_config()

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            *(
                [f"cafile {self.tls.cafile}", f"certfile {self.tls.certfile}", f"keyfile {self.tls.keyfile}"]
                if self.tls
                else []
            ),
            # Run as whoever runs the tests: as root, mosquitto would switch to user `mosquitto`,
            # which cannot read our temp dir.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            *(
                ["persistence true", f"persistence_location {self._dir}/"]
                if self.persistent
                else ["persistence false"]
            ),
            "log_dest stderr",
            "log_type all",
            "connection_messages true",
        ]
        if self.users:
            passwd = self._dir / "passwd"
            for name, password in self.users.items():
                create = [] if passwd.exists() else ["-c"]
                subprocess.run([MOSQUITTO_PASSWD, *create, "-b", passwd, name, password], check=True)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        (self._dir / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [MOSQUITTO, "-c", str(self._dir / "mosquitto.conf")]

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    timestamp: float  # time.monotonic() when it arrived

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """Subscribes to `topic` and keeps every message; reconnects and resubscribes after an outage.

    `wait_for(lambda m: m.topic == "a/b")` returns the first message received so far, or later, that
    matches; `clear()` forgets what came before.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic: str = "#",
        *,
        qos: int = 1,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        clean_session: bool = True,
        ca_file: Path | None = None,
    ) -> None:
        """`client_id` with `clean_session=False`: a persistent session that misses nothing while away.

        `ca_file`: connect with TLS, verifying the broker against this CA bundle."""
        self.topic, self.qos = topic, qos
        self._messages: list[Message] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self._offline = threading.Event()
        self._refused: str | None = None  # the broker's CONNACK reason when it refused us
        self._client = mqtt.Client(  # a random client id unless named
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "", clean_session=clean_session
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        if ca_file is not None:
            self._client.tls_set(ca_certs=str(ca_file))
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)  # outage tests should not wait long
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.connect_async(host, port)

    def __enter__(self) -> Self:
        self._client.loop_start()
        try:
            self.wait_subscribed()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def wait_subscribed(self, timeout: float = 10.0) -> None:
        """Block until the subscription is active (again, after a broker restart).

        Raises ConnectionRefusedError as soon as the broker refuses the connection (bad password).
        """
        deadline = time.monotonic() + timeout
        while not self._subscribed.wait(0.05):
            if self._refused is not None:
                raise ConnectionRefusedError(f"broker refused the connection: {self._refused}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not subscribed to {self.topic!r} after {timeout} s")

    def wait_disconnected(self, timeout: float = 10.0) -> None:
        """Block until the client has noticed that the broker went away."""
        if not self._offline.wait(timeout):
            raise TimeoutError(f"still connected after {timeout} s")

    @property
    def messages(self) -> list[Message]:
        with self._changed:
            return list(self._messages)

    def clear(self) -> None:
        with self._changed:
            self._messages.clear()

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float = 10.0) -> Message:
        deadline = time.monotonic() + timeout
        with self._changed:
            seen = 0
            while True:
                for message in self._messages[seen:]:
                    if predicate(message):
                        return message
                seen = len(self._messages)
                left = deadline - time.monotonic()
                if left <= 0:
                    topics = sorted({m.topic for m in self._messages})
                    raise TimeoutError(f"no matching message in {timeout} s; {seen} received on {topics}")
                self._changed.wait(left)

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
        else:
            self._refused = None
            self._offline.clear()
            client.subscribe(self.topic, self.qos)

    def _on_disconnect(self, *_: Any) -> None:
        self._subscribed.clear()
        self._offline.set()

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, _mid: int, codes: list, _props: Any
    ) -> None:
        if not any(code.is_failure for code in codes):  # a refused subscription is no subscription
            self._subscribed.set()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._changed:
            self._messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic()))
            self._changed.notify_all()
