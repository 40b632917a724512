"""Sharding: which daemon of N serves which camera (`vistream run --shard K/N`; docs/operations.md).

Every daemon reads the same camera list and keeps the cameras that rendezvous (highest-random-weight)
hashing gives it: camera C goes to the shard K with the highest weight(K, C). A camera's shard
depends only on its name and N, so adding, removing or renaming another camera moves nothing else,
and going from N to N+1 shards moves only the cameras whose new shard N outweighs their old one,
about 1/(N+1) of them. The weight is blake2b of `K:C`, never Python's `hash()` (salted per process:
two daemons would disagree).

Pure: no I/O beyond the host name `auto/N` reads, so the decisions are unit-tested.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from vistream.config.models import Config

MAX_SHARDS = 1024
_SPEC = re.compile(r"(\d+|auto)/(\d+)")
_HOST_INDEX = re.compile(r".-(\d+)\Z")  # a StatefulSet pod: NAME-ORDINAL ("$" would pass "-1\n")


class ShardError(ValueError):
    """A `--shard` (or `VISTREAM_SHARD`) value that cannot be used; the message is one line."""


def weight(shard: int, camera: str) -> int:
    """The rendezvous weight of `camera` on `shard`: stable across processes, hosts and versions."""
    digest = hashlib.blake2b(f"{shard}:{camera}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(camera: str, count: int) -> int:
    """The shard (0-based, of `count`) that serves `camera`."""
    # Ties (a 64-bit collision) go to the lower shard, so every daemon agrees.
    return max(range(count), key=lambda k: (weight(k, camera), -k))


def daemon_topic(prefix: str, daemon_id: str) -> str:
    return f"{prefix}/daemons/{daemon_id}/status"


def assign(cameras: Iterable[str], count: int) -> dict[int, list[str]]:
    """Every shard's cameras, in the order given; shards without cameras map to []."""
    out: dict[int, list[str]] = {k: [] for k in range(count)}
    for name in cameras:
        out[owner(name, count)].append(name)
    return out


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`. A count of 1 is the same as not sharding (`active` is False).

    `auto`: K came from the host name (`auto/N`), so this host (or pod) runs no other shard.
    """

    index: int
    count: int
    auto: bool = field(default=False, compare=False)

    @property
    def active(self) -> bool:
        return self.count > 1

    def owns(self, camera: str) -> bool:
        return not self.active or owner(camera, self.count) == self.index

    def client_id(self, base: str) -> str:
        """The shard's MQTT client id and daemon id: `{client_id}-{K}`."""
        return f"{base}-{self.index}" if self.active else base

    def daemon_topic(self, prefix: str, base_client_id: str) -> str:
        """The shard's own availability topic (online/offline, its Last Will)."""
        return daemon_topic(prefix, self.client_id(base_client_id))

    def will_topic(self, prefix: str, base_client_id: str) -> str | None:
        """The topic of the daemon's Last Will: None (`{prefix}/status`) unsharded; a shard's own,
        since on `{prefix}/status` one dead shard would say the others are offline too."""
        return self.daemon_topic(prefix, base_client_id) if self.active else None

    def describe(self, cfg: Config, full: Config) -> tuple[int, str] | None:
        """The boot log's line on this shard (`cfg`: its view of `full`), with its level; None unsharded."""
        if not self.active:
            return None
        mine = [c.name for c in cfg.enabled_cameras]
        which = f": {', '.join(mine)}" if mine else "; idle until a reload gives it one"
        line = f"shard {self} ({cfg.mqtt.client_id}): {len(mine)} of {len(full.cameras)} camera(s){which}"
        return (logging.INFO if mine else logging.WARNING), line

    def metrics_port(self, port: int) -> int:
        """`metrics.port + K`, so shards on one host do not collide; 0 (any free port) stays 0.

        Under `auto/N` it stays `metrics.port`: K comes from the host name, so no two shards share a
        host (a pod each, with its own network), and one probe or scrape port fits every pod.
        """
        return port + self.index if self.active and port and not self.auto else port

    def state_file(self, name: str) -> str:
        """A file in `state_dir` that is the shard's own: `outbox.sqlite3` -> `outbox-K.sqlite3`."""
        if not self.active:
            return name
        stem, dot, ext = name.partition(".")
        return f"{stem}-{self.index}{dot}{ext}"

    def view(self, cfg: Config) -> Config:
        """The config this shard runs: the others' cameras disabled, the client id `{client_id}-{K}`.

        The cameras stay in the list (disabled), so every rule's references still resolve and a rule
        naming only other shards' cameras applies to none here instead of being an error. The copy is
        not validated again: `cfg` was, with every camera.
        """
        if not self.active:
            return cfg
        cameras = [c if self.owns(c.name) else c.model_copy(update={"enabled": False}) for c in cfg.cameras]
        mqtt = cfg.mqtt.model_copy(update={"client_id": self.client_id(cfg.mqtt.client_id)})
        return cfg.model_copy(update={"cameras": cameras, "mqtt": mqtt})

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse(text: str, source: str = "--shard", hostname: str | None = None) -> Shard:
    """`K/N` (K 0-based) or `auto/N` (K from a host name ending in `-K`, as a StatefulSet names its
    pods). `source` names the option in the error; `hostname` defaults to this host's."""
    m = _SPEC.fullmatch(text.strip())
    if m is None:
        raise ShardError(f"{source}: {text!r} is not K/N (shard K of N, 0-based: 0/2, 1/2; or auto/N)")
    count = int(m.group(2))
    if not 1 <= count <= MAX_SHARDS:
        raise ShardError(f"{source}: {text!r}: N must be 1 to {MAX_SHARDS}")
    if m.group(1) == "auto":
        host = socket.gethostname() if hostname is None else hostname
        found = _HOST_INDEX.search(host)
        if found is None:
            raise ShardError(
                f"{source}: {text!r}: the host name {host!r} does not end in -K "
                "(as a StatefulSet's pods do: vistream-0, vistream-1); give K/N instead"
            )
        index = int(found.group(1))
        if index >= count:
            raise ShardError(
                f"{source}: {text!r}: the host name {host!r} gives shard {index}, not below {count}"
            )
        return Shard(index, count, auto=True)
    index = int(m.group(1))
    if index >= count:
        raise ShardError(f"{source}: {text!r}: K must be below N (shards are 0 to {count - 1})")
    return Shard(index, count)


def from_option(value: str | None, env: Mapping[str, str]) -> Shard | None:
    """The shard `run` was given: `--shard`, else `$VISTREAM_SHARD`, else None (not sharded)."""
    if value:
        return parse(value, "--shard")
    if env.get("VISTREAM_SHARD"):
        return parse(env["VISTREAM_SHARD"], "VISTREAM_SHARD")
    return None


def table(cfg: Config, count: int) -> str:
    """`vistream shards`: which shard (and daemon id) serves each camera, then the count per shard."""
    shards = [Shard(k, count) for k in range(count)]
    rows = [("camera", "shard", "daemon")]
    per: dict[int, int] = {k: 0 for k in range(count)}
    for cam in cfg.cameras:
        k = owner(cam.name, count)
        per[k] += 1
        rows.append(
            (
                cam.name + ("" if cam.enabled else " (disabled)"),
                str(k),
                shards[k].client_id(cfg.mqtt.client_id),
            )
        )
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{r[0]:<{width[0]}}  {r[1]:<{width[1]}}  {r[2]}" for r in rows]
    mean = len(cfg.cameras) / count
    spread = ", ".join(f"{k}: {n}" for k, n in per.items())
    balance = max(per.values()) / mean
    lines.append(f"{len(cfg.cameras)} camera(s) over {count} shard(s): {spread} (max/mean {balance:.2f})")
    return "\n".join(lines)
