"""Fixtures for the real resources tests run against, and the rule for when one is missing.

A missing dependency (mosquitto, prometheus, the system python3 with GStreamer's RTSP server, the
sample clips, the model) skips the tests that need it, with the reason; with CI=true it fails them
instead, so a CI machine that lacks one cannot pass by skipping.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import NoReturn

import pytest
from support import mosquitto as mosquitto_support
from support import prometheus as prometheus_support
from support import rtsp_server as rtsp_support
from support.mosquitto import Mosquitto
from support.rtsp_server import RtspServer

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
CLIPS = {"street": "street-1080p.mp4", "crowd": "crowd-480p.mp4"}


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """On CI a skipped test fails the session: a skip there can only hide something not tested."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if on_ci() and skipped and exitstatus == pytest.ExitCode.OK:
        print(f"\nCI=true: {skipped} test(s) skipped; a CI run must not skip (see -ra above)")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def missing(reason: str) -> NoReturn:
    """Skip the test; on CI (CI=true) fail it."""
    if on_ci():
        pytest.fail(
            f"missing test dependency (CI=true turns this skip into a failure): {reason}", pytrace=False
        )
    pytest.skip(reason)


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The shared sample clips (`../shared/samples` from the repo root); see its README."""
    path = SHARED / "samples"
    absent = [name for name in CLIPS.values() if not (path / name).is_file()]
    if absent:
        missing(f"sample clips not found in {path}: {', '.join(absent)}")
    return path


@pytest.fixture(scope="session")
def model_path() -> Path:
    """YOLOv8n weights loadable offline by `ultralytics.YOLO(path)`."""
    path = SHARED / "models" / "yolov8n.pt"
    if not path.is_file():
        missing(f"model not found: {path}")
    return path


@pytest.fixture(scope="session")
def _rtsp_available() -> None:
    reason = rtsp_support.missing_dependency()
    if reason:
        missing(reason)


@pytest.fixture(scope="session")
def _mosquitto_available() -> None:
    reason = mosquitto_support.missing_dependency()
    if reason:
        missing(reason)


@pytest.fixture(scope="session")
def _prometheus_available() -> None:
    """Debian's prometheus and promtool: the tests start the server and check the sample rules."""
    reason = prometheus_support.missing_dependency()
    if reason:
        missing(reason)


@pytest.fixture(scope="session")
def rtsp_server(_rtsp_available: None, samples_dir: Path) -> Iterator[RtspServer]:
    """One RTSP server for the session: mounts street1, street2 (1080p) and crowd1, crowd2 (480p).

    Shared by every test: do not stop or freeze its mounts; use `make_rtsp_server` for that.
    """
    street, crowd = samples_dir / CLIPS["street"], samples_dir / CLIPS["crowd"]
    mounts = {"street1": street, "street2": street, "crowd1": crowd, "crowd2": crowd}
    with RtspServer(mounts) as server:
        yield server


@pytest.fixture
def make_rtsp_server(_rtsp_available: None) -> Iterator[Callable[[Mapping[str, Path]], RtspServer]]:
    """A factory for private RTSP servers (for fault injection); each is stopped after the test."""
    servers: list[RtspServer] = []

    def make(mounts: Mapping[str, Path]) -> RtspServer:
        servers.append(RtspServer(mounts))
        return servers[-1].start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def mosquitto(_mosquitto_available: None) -> Iterator[Mosquitto]:
    """One broker for the session. Shared: do not stop it; use `make_mosquitto` for outages."""
    with Mosquitto() as broker:
        yield broker


@pytest.fixture
def make_mosquitto(_mosquitto_available: None) -> Iterator[Callable[..., Mosquitto]]:
    """A factory for private brokers (for outages, passwords); each is closed after the test."""
    brokers: list[Mosquitto] = []

    def make(port: int = 0, users: Mapping[str, str] | None = None, persistent: bool = False) -> Mosquitto:
        brokers.append(Mosquitto(port, users, persistent))
        return brokers[-1].start()

    yield make
    for broker in brokers:
        broker.close()
