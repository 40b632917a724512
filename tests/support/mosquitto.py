"""A real Mosquitto broker on a free port, and an MQTT subscriber that records what arrives (in the
package since `vistream bench` needs them too)."""

from vistream.bench.mosquitto import (
    MOSQUITTO,
    MOSQUITTO_PASSWD,
    Message,
    Mosquitto,
    Subscriber,
    TlsFiles,
    missing_dependency,
)

__all__ = [
    "MOSQUITTO",
    "MOSQUITTO_PASSWD",
    "Message",
    "Mosquitto",
    "Subscriber",
    "TlsFiles",
    "missing_dependency",
]
