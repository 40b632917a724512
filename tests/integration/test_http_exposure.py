"""The HTTP server exposed for real: TLS and basic auth from an exporter-toolkit web config, the Host
check, bounded connections, pictures off. Real sockets, curl, Debian's Prometheus and promtool,
certificates from openssl; the server is vistream's (uvicorn on a thread), over a small stand-in for
the daemon's status (what the routes used here read of it)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import bcrypt
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, make_asgi_app
from support import certs
from support.prometheus import Prometheus, config_for, promtool
from support.prometheus import missing_dependency as no_prometheus

from vistream.config.models import CameraConfig, MetricsConfig
from vistream.ops.http import HttpServer, bind, build_app
from vistream.ops.webconfig import load_web_config

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "prometheus"
PASSWORD = "pa55-word"


@dataclass(frozen=True)
class Pki:
    """A CA for the server's certificate, another for clients', and one client certificate."""

    ca: Path
    cert: Path
    key: Path
    clients_ca: Path
    client_cert: Path
    client_key: Path


def client_certificate(ca: certs.CertificateAuthority, name: str) -> tuple[Path, Path]:
    """A certificate for TLS clients (extendedKeyUsage clientAuth) that `ca` signs."""
    folder = ca.cert.parent
    cert, key, csr, ext = (folder / f"{name}.{s}" for s in ("crt", "key", "csr", "ext"))
    ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=clientAuth\n")  # fmt: skip
    certs._openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                   "-keyout", key, "-out", csr, "-subj", f"/CN={name}")  # fmt: skip
    certs._openssl("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
                   "-out", cert, "-days", certs.DAYS, "-extfile", ext)  # fmt: skip
    return cert, key


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    if why := certs.missing_dependency():
        pytest.skip(why)
    ca = certs.CertificateAuthority.create(tmp_path, "server-ca")
    cert, key = ca.issue("vistream")
    clients = certs.CertificateAuthority.create(tmp_path, "clients-ca")
    client_cert, client_key = client_certificate(clients, "prometheus")
    return Pki(ca.cert, cert, key, clients.cert, client_cert, client_key)


def web_config(path: Path, pki: Pki | None, password: str = PASSWORD, **tls: str) -> Path:
    doc: dict[str, Any] = {
        "basic_auth_users": {"prometheus": bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}
    }
    if pki is not None:
        doc["tls_server_config"] = {"cert_file": str(pki.cert), "key_file": str(pki.key), **tls}
    path.write_text(yaml.safe_dump(doc))
    return path


def status_source() -> Any:
    """What the routes used here read of a daemon: one camera `cam`, no frame inferred yet."""
    cam = CameraConfig(name="cam", url="rtsp://127.0.0.1:1/x")
    return SimpleNamespace(
        scheduler_stats=lambda: SimpleNamespace(cameras={}),
        camera_status=lambda: [],
        camera_config={"cam": cam}.get,
        latest=lambda name: None,
        pump=SimpleNamespace(latest=lambda name: None),  # where the frame was asked for before
    )


@pytest.fixture
def serve() -> Iterator[Any]:
    """serve(**metrics keys) -> a started HttpServer on 127.0.0.1 with /metrics and the page."""
    servers: list[HttpServer] = []

    def start(**keys: Any) -> HttpServer:
        cfg = MetricsConfig(**{"host": "127.0.0.1", **keys})
        registry = CollectorRegistry()
        Counter("vistream_test_scrapes", "A sample for the scrapes.", registry=registry).inc()
        app = build_app(status_source(), make_asgi_app(registry), show_pictures=cfg.show_pictures)
        server = HttpServer(app, bind(cfg.host, 0), cfg, cfg.web_config_file)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def curl(*args: str | Path) -> tuple[int, str]:
    """(HTTP status, or curl's exit code negated when no answer came, body)."""
    if not shutil.which("curl"):
        pytest.skip("curl not found")
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", *map(str, args)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    body, _, code = done.stdout.rpartition("\n")
    return (int(code) if done.returncode == 0 else -done.returncode), body


def test_curl_through_tls_with_basic_auth_and_a_client_certificate(
    tmp_path: Path, pki: Pki, serve: Any
) -> None:
    """1. The web config asks for TLS 1.2+, a client certificate from the clients' CA, and basic auth.
    2. curl with the client certificate: right password 200 (/metrics), wrong 401, none 401 with
       `WWW-Authenticate: Basic`.
    3. Without a client certificate the handshake is refused (no HTTP answer at all); plain HTTP
       to the TLS port gets no page either.
    4. The web config is read again (SIGHUP) with a new password: the old one is 401, the new 200.
       A broken file then keeps the one in force."""
    path = web_config(tmp_path / "web.yml", pki, client_auth_type="RequireAndVerifyClientCert",
                      client_ca_file=str(pki.clients_ca))  # fmt: skip
    server = serve(web_config_file=path)
    url = f"https://127.0.0.1:{server.port}/metrics"
    mtls = ("--cacert", pki.ca, "--cert", pki.client_cert, "--key", pki.client_key)
    code, body = curl(*mtls, "-u", f"prometheus:{PASSWORD}", url)
    assert code == 200 and "vistream_test_scrapes_total 1.0" in body
    assert curl(*mtls, "-u", "prometheus:wrong", url)[0] == 401
    assert curl(*mtls, "-u", f"nobody:{PASSWORD}", url)[0] == 401
    code, _ = curl(*mtls, "-D", "-", url)
    assert code == 401
    assert (
        "www-authenticate: basic"
        in subprocess.run(
            ["curl", "-sS", "-D", "-", "-o", "/dev/null", *map(str, mtls), url],
            capture_output=True,
            text=True,
        ).stdout.lower()
    )
    assert curl("--cacert", pki.ca, "-u", f"prometheus:{PASSWORD}", url)[0] < 0  # no client certificate
    assert curl(f"http://127.0.0.1:{server.port}/metrics")[0] in (-52, -56, 400)  # not HTTPS: no page

    web_config(path, pki, "new-pass", client_auth_type="RequireAndVerifyClientCert",
               client_ca_file=str(pki.clients_ca))  # fmt: skip
    assert server.reload()
    assert curl(*mtls, "-u", f"prometheus:{PASSWORD}", url)[0] == 401
    assert curl(*mtls, "-u", "prometheus:new-pass", url)[0] == 200
    path.write_text("tls_server_config:\n  cert_file: nosuch.crt\n  key_file: nosuch.key\n")
    assert not server.reload()
    assert curl(*mtls, "-u", "prometheus:new-pass", url)[0] == 200


def test_a_certificate_renewed_on_disk_is_served_after_sighup(tmp_path: Path, pki: Pki, serve: Any) -> None:
    """1. TLS with the first certificate; a second CA issues a new one into the same files.
    2. Before the reload curl trusting only the new CA fails; after it, it succeeds (in place)."""
    path = web_config(tmp_path / "web.yml", pki)
    server = serve(web_config_file=path)
    url = f"https://127.0.0.1:{server.port}/metrics"
    other = certs.CertificateAuthority.create(tmp_path, "renewed-ca")
    cert, key = other.issue("renewed")
    shutil.copy(cert, pki.cert)
    shutil.copy(key, pki.key)
    auth = ("--cacert", other.cert, "-u", f"prometheus:{PASSWORD}")
    assert curl(*auth, url)[0] == -60  # curl: the peer's certificate is not one the new CA signed
    assert server.reload()
    assert curl(*auth, url)[0] == 200


def test_prometheus_scrapes_through_tls_with_basic_auth(tmp_path: Path, pki: Pki, serve: Any) -> None:
    """1. The daemon's side: the web config with TLS, a required client certificate and a user.
    2. Debian's Prometheus scrapes it with the sample's basic_auth and tls_config: `up` is 1 and
       the sample series arrives.
    3. A second job with the wrong password is down, its last error a 401."""
    if why := no_prometheus():
        pytest.skip(why)
    path = web_config(tmp_path / "web.yml", pki, client_auth_type="RequireAndVerifyClientCert",
                      client_ca_file=str(pki.clients_ca))  # fmt: skip
    server = serve(web_config_file=path)
    (tmp_path / "good").write_text(PASSWORD)
    (tmp_path / "bad").write_text("wrong")
    config = config_for(f"127.0.0.1:{server.port}")
    (job,) = config["scrape_configs"]
    tls = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    job.update(scheme="https", tls_config=tls,
               basic_auth={"username": "prometheus", "password_file": str(tmp_path / "good")})  # fmt: skip
    bad = {**job, "job_name": "wrong-password",
           "basic_auth": {"username": "prometheus", "password_file": str(tmp_path / "bad")}}  # fmt: skip
    config["scrape_configs"].append(bad)
    with Prometheus(config) as prom:
        prom.wait_for('up{job="vistream"} == 1', bool)
        prom.wait_for("vistream_test_scrapes_total", bool)

        def down(result: list[dict[str, Any]]) -> bool:
            return bool(result) and result[0]["value"][1] == "0"

        prom.wait_for('up{job="wrong-password"}', down)
        targets = prom.api("targets")["activeTargets"]
        (wrong,) = [t for t in targets if t["labels"]["job"] == "wrong-password"]
        assert "401" in wrong["lastError"]


def test_the_samples_check(tmp_path: Path, pki: Pki) -> None:
    """samples/prometheus/web-config.yml loads (with certificates in place of its file names), and
    promtool accepts prometheus-tls.yml (with the files it names)."""
    tmp_path = tmp_path / "samples"
    tmp_path.mkdir()
    shutil.copy(SAMPLES / "web-config.yml", tmp_path / "web-config.yml")
    for name, src in (
        ("vistream.crt", pki.cert),
        ("vistream.key", pki.key),
        ("clients-ca.crt", pki.clients_ca),
    ):
        shutil.copy(src, tmp_path / name)
    cfg = load_web_config(tmp_path / "web-config.yml")
    assert cfg.tls is not None and cfg.tls.client_auth_type == "RequireAndVerifyClientCert"
    assert list(cfg.users) == ["prometheus"] and bcrypt.checkpw(b"change-me", cfg.users["prometheus"])
    if why := no_prometheus():
        pytest.skip(why)
    for name in ("prometheus-tls.yml", "vistream.rules.yml"):
        shutil.copy(SAMPLES / name, tmp_path / name)
    for name, src in (
        ("vistream-ca.crt", pki.ca),
        ("prometheus.crt", pki.client_cert),
        ("prometheus.key", pki.client_key),
    ):
        shutil.copy(src, tmp_path / name)
    (tmp_path / "prometheus-password").write_text("change-me")
    done = promtool("check", "config", tmp_path / "prometheus-tls.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def raw_get(port: int, host: str, path: str = "/metrics") -> int:
    """The status of GET `path` sent with this Host header."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = sock.recv(4096).decode("latin-1")
    return int(head.split(" ", 2)[1])


def test_a_rebinding_host_is_refused(serve: Any) -> None:
    """A request naming another site in Host (DNS rebinding: evil.example re-pointed at 127.0.0.1)
    gets 421; the daemon's own addresses, localhost and allowed_hosts get the page."""
    server = serve(allowed_hosts=["vistream.lan"])
    port = server.port
    assert raw_get(port, "evil.example") == 421
    assert raw_get(port, f"evil.example:{port}", "/") == 421
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "vistream.lan", f"[::1]:{port}"):
        assert raw_get(port, host) == 200, host


def test_pictures_off(serve: Any) -> None:
    """`pictures: false`: latest.jpg of a camera that exists is 404; with pictures on it is there
    (503 here: no frame inferred yet, not 404). The default on 0.0.0.0 is off."""
    off, on = serve(pictures=False), serve(pictures=True)
    assert raw_get(off.port, "localhost", "/api/cameras/cam/latest.jpg") == 404
    assert raw_get(on.port, "localhost", "/api/cameras/cam/latest.jpg") == 503
    assert not MetricsConfig(host="0.0.0.0").show_pictures


def test_idle_connections_are_bounded(serve: Any) -> None:
    """1. max_connections 16, idle_timeout_s 2: 40 sockets opened and left silent.
    2. At most 16 stay open: each one over the bound closes the one idle longest.
    3. Meanwhile a request still gets its answer (it takes an idle one's place).
    4. After the idle timeout every silent socket has been closed by the server, and so has one
       that sent half a request head (slowloris)."""
    server = serve(max_connections=16, idle_timeout_s=2)
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(40)]
    socks[-1].sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n")  # a head that never ends
    try:
        time.sleep(0.5)
        closed_now = sum(_closed(s, 0.05) for s in socks)
        assert closed_now >= 40 - 16, closed_now
        assert raw_get(server.port, "localhost") == 200
        time.sleep(2.5)
        assert all(_closed(s, 1.0) for s in socks)
    finally:
        for s in socks:
            s.close()


def _closed(sock: socket.socket, wait: float) -> bool:
    """Has the server closed this connection (EOF or reset within `wait` s)?"""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
