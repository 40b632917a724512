"""`metrics.web_config_file`: TLS and basic auth in the web-config format of Prometheus' exporter-toolkit.

The file node_exporter and every official exporter read (`--web.config.file`), so a site that
scrapes those already knows it:

    tls_server_config:
      cert_file: server.crt          # relative paths: from the file's own directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: clients-ca.crt
      min_version: TLS12
    basic_auth_users:
      prometheus: $2b$12$...         # bcrypt hash (htpasswd -nBC 12 "" | tr -d ':\\n')

Parsed strictly, as exporter-toolkit does: a key it does not know is an error, and so is one it
knows that this daemon does not implement (the file would not mean here what it says). Pure apart
from reading the files; the HTTP server (vistream.ops.http) applies it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import ssl
import threading
from base64 import b64decode
from binascii import Error as Base64Error
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

# exporter-toolkit's names; RequestClientCert and RequireAnyClientCert ask for a certificate without
# verifying it, which Python's ssl cannot do (it verifies whatever it asks for).
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version", "max_version"}
# Keys exporter-toolkit knows that are not implemented here: refused, never silently ignored.
UNSUPPORTED = {
    "tls_server_config": {"cert", "key", "client_ca", "cipher_suites", "curve_preferences",
                          "prefer_server_cipher_suites", "client_allowed_sans"},
    "": {"http_server_config", "rate_limit"},
}  # fmt: skip
BCRYPT_RE = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
# exporter-toolkit's hash of "fakepassword": an unknown user costs a bcrypt too, so that timing
# does not tell which users exist.
DUMMY_HASH = b"$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"
CACHE_SIZE = 100  # successful checks remembered (exporter-toolkit keeps 100 too)


class WebConfigError(Exception):
    """The web config cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class TlsServerConfig:
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"

    def context(self) -> ssl.SSLContext:
        """A server context with these settings; WebConfigError when a file cannot be used."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.apply(ctx)
        return ctx

    def apply(self, ctx: ssl.SSLContext) -> None:
        """Load these settings into `ctx`, in place: connections accepted from now on use them.

        A client CA is added to the ones `ctx` trusts; none is ever removed (OpenSSL offers no way),
        so dropping a client CA needs a restart."""
        where = "tls_server_config"
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(f"{where}.cert_file/key_file: cannot load {self.cert_file} with "
                                 f"{self.key_file}: {_reason(exc)}") from None  # fmt: skip
        if self.client_ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=self.client_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise WebConfigError(
                    f"{where}.client_ca_file: cannot load {self.client_ca_file}: {_reason(exc)}"
                ) from None
        ctx.minimum_version = TLS_VERSIONS[self.min_version]
        ctx.maximum_version = TLS_VERSIONS[self.max_version]
        ctx.verify_mode = CLIENT_AUTH[self.client_auth_type]


@dataclass(frozen=True)
class WebConfig:
    path: Path | None = None
    tls: TlsServerConfig | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def load_web_config(path: Path) -> WebConfig:
    """Read and check the web config at `path`; WebConfigError names the key that is wrong.

    The TLS files are loaded into a throw-away context, so that a bad certificate or key is found
    here (at start: exit 2; at SIGHUP: the old config stays) and not at the first connection."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WebConfigError(f"{path}: cannot read ({_reason(exc)})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise WebConfigError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    try:
        cfg = parse_web_config(data or {}, path.parent)
        if cfg.tls is not None:
            cfg.tls.context()
    except WebConfigError as exc:
        raise WebConfigError(f"{path}: {exc}") from None
    return WebConfig(path, cfg.tls, cfg.users)


def parse_web_config(data: Any, base: Path) -> WebConfig:
    """The web config in `data` (parsed YAML); relative file names are taken from `base`."""
    if not isinstance(data, dict):
        raise WebConfigError("must be a mapping with tls_server_config and/or basic_auth_users")
    _known(data, "", {"tls_server_config", "basic_auth_users"})
    tls = _tls(data["tls_server_config"], base) if data.get("tls_server_config") is not None else None
    users = _users(data.get("basic_auth_users") or {})
    return WebConfig(None, tls, users)


def _known(data: dict[str, Any], where: str, keys: set[str]) -> None:
    for key in data:
        name = f"{where}.{key}" if where else str(key)
        if key in UNSUPPORTED.get(where, ()):
            raise WebConfigError(f"{name}: an exporter-toolkit setting vistream does not implement")
        if key not in keys:
            raise WebConfigError(f"{name}: unknown key (expected one of {', '.join(sorted(keys))})")


def _tls(data: Any, base: Path) -> TlsServerConfig:
    where = "tls_server_config"
    if not isinstance(data, dict):
        raise WebConfigError(f"{where}: must be a mapping")
    _known(data, where, TLS_KEYS)
    for key in TLS_KEYS:
        if key in data and not isinstance(data[key], str):
            raise WebConfigError(f"{where}.{key}: must be a string")
    for key in ("cert_file", "key_file"):
        if not data.get(key):
            raise WebConfigError(f"{where}.{key}: required with tls_server_config")
    auth = data.get("client_auth_type") or "NoClientCert"
    if auth in UNVERIFIED_CLIENT_AUTH:
        raise WebConfigError(
            f"{where}.client_auth_type: {auth} (a certificate asked for, not verified) is not "
            "supported: use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
        )
    if auth not in CLIENT_AUTH:
        raise WebConfigError(f"{where}.client_auth_type: {auth!r} is not one of {', '.join(CLIENT_AUTH)}")
    ca = data.get("client_ca_file")
    if ca and auth == "NoClientCert":  # exporter-toolkit refuses this too: a CA that checks nobody
        raise WebConfigError(f"{where}.client_ca_file: set, but client_auth_type is NoClientCert")
    if not ca and auth != "NoClientCert":
        raise WebConfigError(f"{where}.client_ca_file: required with client_auth_type {auth}")
    versions = {}
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        versions[key] = data.get(key) or default
        if versions[key] not in TLS_VERSIONS:
            raise WebConfigError(f"{where}.{key}: {versions[key]!r} is not one of {', '.join(TLS_VERSIONS)}")
    if TLS_VERSIONS[versions["min_version"]] > TLS_VERSIONS[versions["max_version"]]:
        raise WebConfigError(f"{where}.min_version: above max_version")
    return TlsServerConfig(
        cert_file=base / data["cert_file"],
        key_file=base / data["key_file"],
        client_auth_type=auth,
        client_ca_file=base / ca if ca else None,
        **versions,
    )


def _users(data: Any) -> dict[str, bytes]:
    if not isinstance(data, dict):
        raise WebConfigError("basic_auth_users: must be a mapping of user name to bcrypt hash")
    users = {}
    for user, hashed in data.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError(f"basic_auth_users: {user!r} is not a user name (no colon, not empty)")
        if not isinstance(hashed, str) or not BCRYPT_RE.fullmatch(hashed):
            raise WebConfigError(f"basic_auth_users.{user}: not a bcrypt hash ($2b$...)")
        users[user] = hashed.encode()
    return users


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes, as exporter-toolkit does.

    bcrypt is slow on purpose (tens of ms at cost 10), so a successful check is remembered
    (a digest of user, hash and password: the password itself is not kept) and a scrape every
    15 s costs one bcrypt, not one each. Failures are not remembered; bcrypt runs one at a time
    (`_bcrypt`), so a flood of wrong passwords takes one core at most.
    """

    def __init__(self, users: dict[str, bytes], cache_size: int = CACHE_SIZE) -> None:
        self.users = users
        self.cache_size = cache_size
        self._ok: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()  # the cache: the event loop and the bcrypt thread use it
        self._bcrypt = threading.Lock()

    @staticmethod
    def credentials(header: str | None) -> tuple[str, str] | None:
        """(user, password) from an Authorization header; None when there is none or it is not Basic."""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (Base64Error, UnicodeDecodeError, ValueError):
            return None
        return (user, password) if sep else None

    def _key(self, user: str, password: str) -> tuple[bytes, bytes]:
        hashed = self.users.get(user, DUMMY_HASH)
        return hashed, hashlib.sha256(b"\0".join((user.encode(), hashed, password.encode()))).digest()

    def cached(self, user: str, password: str) -> bool:
        """Known good without a bcrypt (cheap: fine on the event loop)."""
        _, key = self._key(user, password)
        with self._lock:
            for known in self._ok:
                if hmac.compare_digest(known, key):
                    self._ok.move_to_end(known)
                    return True
        return False

    def check(self, user: str, password: str) -> bool:
        """The full check, with a bcrypt when not cached (blocking: call it from a worker thread)."""
        if self.cached(user, password):
            return True
        hashed, key = self._key(user, password)
        with self._bcrypt:
            try:
                ok = bcrypt.checkpw(password.encode(), hashed)
            except ValueError:  # a password over bcrypt's 72 bytes
                ok = False
        ok = ok and user in self.users
        if ok:
            with self._lock:
                self._ok[key] = None
                while len(self._ok) > self.cache_size:
                    self._ok.popitem(last=False)
        return ok
