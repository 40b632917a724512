"""MQTT output: availability, camera status and detections, with paho-mqtt's v2 callback API.

paho's network thread (`loop_start`) owns the socket and reconnects on its
own, with a backoff of 1 s doubling up to RECONNECT_MAX_S (4 s): a broker back
after any outage is reconnected within about 4 s. `publish` only appends to
paho's buffer, so it never blocks the caller. State is reported honestly:
`connected` becomes true only in a successful CONNACK and false at the first
sign of loss, and a detection offered while disconnected is dropped and
counted, not queued (it would be stale by the time the broker is back; status
topics are retained and re-sent on every connect instead). Detections are
also dropped, and counted, while `max_backlog` of them wait unwritten in
paho's buffer (a socket slower than the cameras): they would only grow older
and paho's memory larger.

Drops are counted in `dropped` by kind and in `dropped_by_reason` by (kind, reason), the labels of
`vistream_mqtt_dropped_total`: "disconnected", "backlog" (the bound above), "refused"
(paho answered anything but success).

A connection attempt that fails before the CONNACK (broker unreachable, a TLS handshake the
broker's certificate fails: wrong CA, host name not in it) is one warning line per attempt, naming
the broker and the cause; paho's thread survives it and tries again after its backoff.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import logging
import ssl
import sys
import threading
import time
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from vistream.config.models import MqttConfig

log = logging.getLogger(__name__)


ONLINE, OFFLINE = "online", "offline"
RECONNECT_MAX_S = 4  # paho's default 120 s (and our former 30 s) left a returned broker unused that long
MAX_BACKLOG = 200  # QoS 0 detections handed to paho and not written to the socket yet


def sends_password_in_clear(cfg: MqttConfig, password: str | None) -> bool:
    """A password sent without TLS to a broker on another machine (loopback is fine)."""
    if password is None or cfg.username is None or cfg.tls.active:
        return False
    host = cfg.host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name other than localhost: assume it is elsewhere
        return True


class ConnectionListener(Protocol):
    """Told about the connection from paho's network thread (the outbox's Delivery is one).

    Called in this order per connection: connecting (before the socket opens), connected (first thing
    in a successful CONNACK, before status is re-published), published (every PUBACK, and every QoS 0
    message written, by message id: a wake-up, not proof, since QoS 0 and QoS 1 ids share one
    counter), disconnected. Must be quick and must not raise. Must not publish at QoS 1 from
    `mqtt_connected`: the outbox's Delivery drops paho's copies there (see delivery.py); a listener
    with messages to send puts them in the outbox.
    """

    def mqtt_connecting(self) -> None: ...
    def mqtt_connected(self) -> None: ...
    def mqtt_published(self, mid: int, reason: Any) -> None: ...
    def mqtt_disconnected(self) -> None: ...


class MqttPublisher:
    def __init__(
        self,
        cfg: MqttConfig,
        password: str | None = None,
        availability_topic: str | None = None,
        *,
        max_backlog: int = MAX_BACKLOG,
    ) -> None:
        """`availability_topic`: the daemon's own `online`/`offline` and Last Will (default
        `{prefix}/status`; a shard's is `{prefix}/daemons/{client_id}/status`). `max_backlog`: QoS 0
        messages paho may hold unwritten before more are dropped."""
        self.cfg = cfg
        self.prefix = cfg.topic_prefix
        self.availability_topic = availability_topic or f"{self.prefix}/status"
        self.connected = False
        self.connects = 0
        self.failed_attempts = 0  # connection attempts in a row that ended before a CONNACK
        self.dropped: dict[str, int] = {}  # kind -> messages that could not be handed to the broker
        self.dropped_by_reason: dict[tuple[str, str], int] = {}  # (kind, reason) -> the same, split
        self.max_backlog = max_backlog
        # QoS 0 messages handed to paho, in order, with the connection (`connects`) they were for;
        # written by the publishing thread only.
        self._unwritten: collections.deque[tuple[int, mqtt.MQTTMessageInfo]] = collections.deque()
        self._camera_status: dict[str, str] = {}
        self._listeners: list[ConnectionListener] = []
        self._lock = threading.Lock()
        self._stopping = False
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=True,
        )
        c.will_set(self.availability_topic, OFFLINE, qos=1, retain=True)
        if cfg.username is not None:
            c.username_pw_set(cfg.username, password)
            if sends_password_in_clear(cfg, password):
                log.warning(
                    "mqtt: the password goes to %s:%d without TLS, readable on the network: set mqtt.tls "
                    "(docs/security.md)", cfg.host, cfg.port,
                )  # fmt: skip
        if cfg.tls.active:
            c.tls_set(
                ca_certs=_str(cfg.tls.ca_file),
                certfile=_str(cfg.tls.cert_file),
                keyfile=_str(cfg.tls.key_file),
                cert_reqs=ssl.CERT_REQUIRED,
            )
            c.tls_insecure_set(cfg.tls.insecure)
        c.reconnect_delay_set(min_delay=1, max_delay=RECONNECT_MAX_S)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_pre_connect = self._on_pre_connect
        c.on_publish = self._on_publish
        self.client = c

    def start(self) -> None:
        """Connect in the background; a broker that is not there yet is retried forever."""
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()

    def stop(self, timeout: float = 2.0) -> None:
        """Say goodbye: every camera and the daemon offline (retained), then disconnect."""
        self._stopping = True
        if self.connected:
            infos = [self._publish_status(name, OFFLINE) for name in list(self._camera_status)]
            infos.append(self.client.publish(self.availability_topic, OFFLINE, qos=1, retain=True))
            deadline = time.monotonic() + timeout
            for info in infos:
                _wait(info, deadline)
            self.client.disconnect()
        self.client.loop_stop()

    def camera_status(self, name: str, online: bool) -> None:
        """Record a camera's status; it is published now if connected and again on every connect.

        Record every camera before `start()`: the first connection then says where each one
        stands (offline until its frames flow), replacing what a crashed earlier run left retained.
        """
        status = ONLINE if online else OFFLINE
        with self._lock:
            if self._camera_status.get(name) == status:
                return
            self._camera_status[name] = status
            connected = self.connected  # read with the change: _on_connect copies under the same lock
        if connected:
            self._publish_status(name, status)

    def add_listener(self, listener: ConnectionListener) -> None:
        """Register before start() to see every connection from the first."""
        self._listeners.append(listener)

    def forget_camera(self, name: str) -> None:
        with self._lock:
            self._camera_status.pop(name, None)

    def publish(self, topic: str, payload: bytes | str, kind: str, qos: int = 0) -> bool:
        """Hand a message to paho without blocking; False (and counted) when it cannot go out.

        Called from one thread (the result pump).
        """
        if not self.connected:
            return self._drop(kind, "disconnected")
        connects = self.connects
        if qos == 0 and self._backlog(connects) >= self.max_backlog:
            return self._drop(kind, "backlog")
        info = self.client.publish(topic, payload, qos=qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return self._drop(kind, "disconnected" if info.rc == mqtt.MQTT_ERR_NO_CONN else "refused")
        if qos == 0:
            self._unwritten.append((connects, info))
        return True

    def _backlog(self, connects: int) -> int:
        """QoS 0 messages paho holds unwritten. paho marks a QoS 0 info published once its last
        byte is written, and writes in order; a reconnect empties its buffer and marks those lost
        (rc CONN_LOST); one handed over while the connection changed may never be marked at all."""
        unwritten = self._unwritten
        if unwritten and _gone(unwritten[-1][1]):
            unwritten.clear()  # everything before it was written too, or died with its connection
        while unwritten and (unwritten[0][0] != connects or _gone(unwritten[0][1])):
            unwritten.popleft()
        return len(unwritten)

    def _drop(self, kind: str, reason: str) -> bool:
        with self._lock:
            self.dropped[kind] = self.dropped.get(kind, 0) + 1
            key = (kind, reason)
            self.dropped_by_reason[key] = self.dropped_by_reason.get(key, 0) + 1
        return False

    def _publish_status(self, name: str, status: str) -> mqtt.MQTTMessageInfo:
        return self.client.publish(f"{self.prefix}/{name}/status", status, qos=1, retain=True)

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT broker %s:%d refused the connection: %s", self.cfg.host, self.cfg.port, reason)
            self.connected = False
            return
        self.connects += 1
        self.failed_attempts = 0
        # First, so the outbox's stale copies are dropped before anything is published on this connection.
        for listener in self._listeners:
            listener.mqtt_connected()
        log.info("MQTT connected to %s:%d", self.cfg.host, self.cfg.port)
        client.publish(self.availability_topic, ONLINE, qos=1, retain=True)
        # `connected` goes true with the copy, under the lock camera_status() holds for its change:
        # a change made before the copy is in it, one made after is published by camera_status().
        # Either may be handed to paho after an older value from the other thread, so the copy is
        # compared again until it holds still (duplicates are harmless: the topics are retained).
        published: dict[str, str] = {}
        with self._lock:
            self.connected = True
            statuses = dict(self._camera_status)
        while statuses:
            for name, status in statuses.items():
                self._publish_status(name, status)
            published.update(statuses)
            with self._lock:
                statuses = {n: s for n, s in self._camera_status.items() if published.get(n) != s}

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        # paho 2.x calls this inside its `except OSError:` around reconnect() (Client.loop_forever),
        # so the failure is the exception being handled; it passes none. A TLS verification failure
        # is an ssl.SSLCertVerificationError, an OSError, so it lands here too and is retried.
        self.failed_attempts += 1
        log.warning(
            "MQTT broker %s:%d: connection attempt %d failed: %s; retrying",
            self.cfg.host,
            self.cfg.port,
            self.failed_attempts,
            _connect_error(sys.exc_info()[1]),
        )

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        was = self.connected
        self.connected = False
        for listener in self._listeners:
            listener.mqtt_disconnected()
        if was and not self._stopping:
            log.warning(
                "MQTT disconnected from %s:%d: %s; reconnecting", self.cfg.host, self.cfg.port, reason
            )

    def _on_pre_connect(self, _client: mqtt.Client, _userdata: Any) -> None:
        for listener in self._listeners:
            listener.mqtt_connecting()

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, reason: Any, _props: Any) -> None:
        for listener in self._listeners:
            listener.mqtt_published(mid, reason)


_NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


def _connect_error(exc: BaseException | None) -> str:
    """The cause of a failed connection attempt in a few words (no `_ssl.c:1006` location)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        # verify_message: "Hostname mismatch, certificate is not valid for 'x'." says it all; a wrong
        # CA reads "self-signed certificate in certificate chain", which wants the hint.
        hint = "" if exc.verify_code in _NAME_MISMATCH else " (is mqtt.tls.ca_file the broker's CA?)"
        return f"TLS certificate verify failed: {exc.verify_message}{hint}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return "connection failed" if exc is None else str(exc)


def _gone(info: mqtt.MQTTMessageInfo) -> bool:
    """paho is done with this QoS 0 message: written, or lost with its connection."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):  # is_published() raises for a message that failed
        return True


def _str(path: Any) -> str | None:
    return None if path is None else str(path)


def _wait(info: mqtt.MQTTMessageInfo, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left > 0:
        with contextlib.suppress(RuntimeError, ValueError):  # not queued (disconnected meanwhile)
            info.wait_for_publish(left)
