"""metrics.web_config_file (exporter-toolkit's format), basic auth, the Host check: pure parts, no server."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from support.certs import CertificateAuthority, missing_dependency

from vistream.config.models import MetricsConfig
from vistream.ops.http import HostCheck
from vistream.ops.webconfig import BasicAuth, WebConfigError, load_web_config, parse_web_config

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
TLS = {"cert_file": "s.crt", "key_file": "s.key"}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"tls_server_config": TLS, "basic_auth_user": {}}, "basic_auth_user: unknown key"),
        ({"http_server_config": {"http2": False}}, "http_server_config: an exporter-toolkit setting"),
        ({"tls_server_config": {**TLS, "cipher_suites": []}}, "tls_server_config.cipher_suites: an exp"),
        ({"tls_server_config": {**TLS, "certfile": "x"}}, "tls_server_config.certfile: unknown key"),
        ({"tls_server_config": {"cert_file": "s.crt"}}, "tls_server_config.key_file: required"),
        ({"tls_server_config": {**TLS, "client_auth_type": "Sometimes"}}, "client_auth_type: 'Sometimes'"),
        ({"tls_server_config": {**TLS, "client_auth_type": "RequireAnyClientCert", "client_ca_file": "c"}},
         "client_auth_type: RequireAnyClientCert (a certificate asked for, not verified) is not supported"),
        ({"tls_server_config": {**TLS, "client_auth_type": "RequireAndVerifyClientCert"}},
         "tls_server_config.client_ca_file: required with client_auth_type RequireAndVerifyClientCert"),
        ({"tls_server_config": {**TLS, "client_ca_file": "ca.crt"}},
         "client_ca_file: set, but client_auth_type is NoClientCert"),
        ({"tls_server_config": {**TLS, "min_version": "TLS14"}}, "min_version: 'TLS14' is not one of"),
        ({"tls_server_config": {**TLS, "min_version": "TLS13", "max_version": "TLS12"}}, "above max_version"),
        ({"basic_auth_users": {"u": "plain"}}, "basic_auth_users.u: not a bcrypt hash"),
        ({"basic_auth_users": {"a:b": HASH}}, "is not a user name"),
        (["tls_server_config"], "must be a mapping"),
    ],
)  # fmt: skip
def test_a_web_config_that_cannot_be_used_names_the_key(data: Any, problem: str) -> None:
    with pytest.raises(WebConfigError, match=None) as err:
        parse_web_config(data, Path("/etc/vistream"))
    assert problem in str(err.value)


def test_relative_files_are_taken_from_the_file_s_folder() -> None:
    cfg = parse_web_config(
        {"tls_server_config": {**TLS, "client_auth_type": "RequireAndVerifyClientCert",
                               "client_ca_file": "/abs/ca.crt", "min_version": "TLS13"},
         "basic_auth_users": {"prometheus": HASH}},
        Path("/etc/vistream"),
    )  # fmt: skip
    assert cfg.tls is not None
    assert (cfg.tls.cert_file, cfg.tls.key_file) == (Path("/etc/vistream/s.crt"), Path("/etc/vistream/s.key"))
    assert cfg.tls.client_ca_file == Path("/abs/ca.crt")
    assert cfg.users == {"prometheus": HASH.encode()}
    assert parse_web_config({}, Path(".")).tls is None  # an empty file: plain HTTP, no auth


def test_load_checks_the_certificate_and_key(tmp_path: Path) -> None:
    """1. A good certificate and key load into a context with the file's settings.
    2. A key that is not the certificate's, or a missing file, is an error naming the keys."""
    if why := missing_dependency():
        pytest.skip(why)
    ca = CertificateAuthority.create(tmp_path, "ca")
    cert, key = ca.issue("server")
    path = tmp_path / "web.yml"
    path.write_text(f"tls_server_config:\n  cert_file: {cert.name}\n  key_file: {key.name}\n"
                    f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n")  # fmt: skip
    cfg = load_web_config(path)
    assert cfg.tls is not None
    ctx = cfg.tls.context()
    assert ctx.verify_mode == ssl.CERT_OPTIONAL and ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    path.write_text(f"tls_server_config:\n  cert_file: {cert.name}\n  key_file: ca.key\n")
    with pytest.raises(WebConfigError, match=r"web.yml: tls_server_config.cert_file/key_file: cannot load"):
        load_web_config(path)
    with pytest.raises(WebConfigError, match=r"nosuch\.yml: cannot read"):
        load_web_config(tmp_path / "nosuch.yml")


def header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth_checks_bcrypt_and_remembers_successes(monkeypatch: pytest.MonkeyPatch) -> None:
    """1. Right password: yes; wrong password, unknown user (a bcrypt all the same): no.
    2. A success is remembered: the same credentials again cost no bcrypt; failures cost one each."""
    auth = BasicAuth({"prometheus": HASH.encode()})
    calls = []
    real = bcrypt.checkpw
    monkeypatch.setattr(bcrypt, "checkpw", lambda p, h: calls.append(h) or real(p, h))
    assert BasicAuth.credentials(header("prometheus", "s3cret")) == ("prometheus", "s3cret")
    assert BasicAuth.credentials("Bearer abc") is None and BasicAuth.credentials("Basic !!") is None
    assert auth.check("prometheus", "s3cret") and len(calls) == 1
    assert auth.check("prometheus", "s3cret") and auth.cached("prometheus", "s3cret") and len(calls) == 1
    assert not auth.check("prometheus", "wrong") and not auth.check("prometheus", "wrong")
    assert not auth.check("nobody", "s3cret")
    assert len(calls) == 4  # the unknown user cost a bcrypt too (its timing tells nothing)
    assert not auth.check("prometheus", "x" * 100)  # over bcrypt's 72 bytes: no, not an exception


@pytest.mark.parametrize(
    ("listen", "host", "local", "ok"),
    [
        ("127.0.0.1", "127.0.0.1:9108", "127.0.0.1", True),
        ("127.0.0.1", "localhost:9108", "127.0.0.1", True),
        ("127.0.0.1", "LOCALHOST.", "127.0.0.1", True),
        ("127.0.0.1", "[::1]:9108", "::1", True),
        ("127.0.0.1", "evil.example:9108", "127.0.0.1", False),  # DNS rebinding
        ("127.0.0.1", "evil.example", "127.0.0.1", False),
        ("0.0.0.0", "192.168.1.20:9108", "192.168.1.20", True),  # the address it came in on
        ("0.0.0.0", "192.168.1.21:9108", "192.168.1.20", False),
        ("192.168.1.20", "192.168.1.20", "192.168.1.20", True),
        ("0.0.0.0", "vistream.monitoring.svc:9108", "10.1.2.3", True),  # allowed_hosts
        ("0.0.0.0", "box:9108", "10.1.2.3", True),  # the machine's host name
        ("0.0.0.0", None, "10.1.2.3", True),  # HTTP/1.0 without Host: nothing to rebind
    ],
)
def test_host_check(listen: str, host: str | None, local: str, ok: bool) -> None:
    check = HostCheck(listen, ["vistream.monitoring.svc"], hostname="box")
    assert check.allows(host, local) is ok


def test_pictures_default_to_loopback_or_a_web_config(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("{}\n")
    assert MetricsConfig().show_pictures and MetricsConfig(host="::1").show_pictures
    assert not MetricsConfig(host="0.0.0.0").show_pictures
    assert MetricsConfig(host="0.0.0.0", pictures=True).show_pictures
    assert not MetricsConfig(pictures=False).show_pictures
    assert MetricsConfig(host="0.0.0.0", web_config_file=web).show_pictures
