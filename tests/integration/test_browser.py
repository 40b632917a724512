"""The status page in a real browser: Debian's chromium, driven headless by chromium-driver through Selenium.

The screenshot is a test artifact: in the test's tmp_path and copied to `test-artifacts/` at the
repository root (ignored by git), as `status-page.png`.
"""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, missing
from support.daemon import DaemonProcess, base_config
from support.mosquitto import Mosquitto
from support.procs import free_port
from support.rtsp_server import RtspServer

pytestmark = pytest.mark.integration

ARTIFACTS = REPO_ROOT / "test-artifacts"
LOWER_HALF = [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]
MIDLINE = [[0.02, 0.5], [0.98, 0.5]]

IMAGES_JS = "return [...document.querySelectorAll('.tile img')].map(i => i.complete ? i.naturalWidth : 0)"
TILES_JS = """return [...document.querySelectorAll('.tile')].map(t => ({
    name: t.dataset.camera,
    title: t.querySelector('h2').textContent,
    state: t.querySelector('.state').textContent,
    src: t.querySelector('img').getAttribute('src'),
}))"""


@pytest.fixture
def chrome(tmp_path: Path) -> Iterator[Any]:
    """Headless chromium with its console log kept (goog:loggingPrefs)."""
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver_path:
        missing("Debian's chromium and chromium-driver are not installed (scripts/test installs them)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",  # /dev/shm holds the daemon's rings; chromium does with /tmp
        "--window-size=1400,1250",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.3)
    return got


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_status_page_shows_both_cameras_in_a_browser(
    tmp_path: Path, rtsp_server: RtspServer, mosquitto: Mosquitto, model_path: Path, chrome: Any
) -> None:
    """1. A daemon with two real RTSP cameras: a 1080p street with a zone and a person rule, a 480p
       crowd with a line and a crossing rule.
    2. Chromium opens `/`: one tile per camera, in config order, titled with its name; each tile's
       picture loads (naturalWidth > 0) and each camera shows `online`; the health pill says healthy.
    3. The pictures refresh: each tile's image changes to a newer frame within a few seconds.
    4. Events appear in the table.
    5. The browser console has no errors; a screenshot is saved (tmp_path and test-artifacts/)."""
    port = free_port()
    cams = [
        {"name": "street", "url": rtsp_server.url("street2"), "detect_fps": 5, "zones": {"near": LOWER_HALF}},
        {"name": "crowd", "url": rtsp_server.url("crowd2"), "detect_fps": 5, "lines": {"midline": MIDLINE}},
    ]
    rules = [
        {"name": "person_near", "labels": ["person"], "zone": "near", "min_duration_s": 0.5,
         "end_after_s": 1.0, "cooldown_s": 0},
        {"name": "crossing", "line": "midline", "end_after_s": 1.0, "cooldown_s": 0},
    ]  # fmt: skip
    cfg = base_config(model_path, mosquitto.port, port, "itbrowser", cams)
    cfg["model"]["classes"] = ["person"]
    cfg |= {"state_dir": str(tmp_path / "state"), "alerts": rules}
    with DaemonProcess(cfg, tmp_path) as daemon:
        wait_for("/healthz 200", lambda: healthy(port) or daemon.proc.poll() is not None, 120)
        assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon exited"
        chrome.get(f"http://127.0.0.1:{port}/")
        assert chrome.title == "vistream"

        def loaded() -> list[int] | None:
            widths = chrome.execute_script(IMAGES_JS)
            return widths if len(widths) == 2 and all(widths) else None

        widths = wait_for("both tiles' pictures to load", loaded, 60)
        assert widths == [1280, 640]  # the street plane is scaled to 1280 wide, the crowd is 640x480
        tiles = wait_for(
            "both cameras online",
            lambda: (t := chrome.execute_script(TILES_JS)) and all(x["state"] == "online" for x in t) and t,
            30,
        )
        assert [t["name"] for t in tiles] == ["street", "crowd"]
        assert [t["title"] for t in tiles] == ["street", "crowd"]
        wait_for("the health pill", lambda: chrome.find_element("id", "health").text == "healthy", 10)
        assert "2/2 cameras online" in chrome.find_element("id", "summary").text

        first = [t["src"] for t in tiles]
        wait_for(
            "both pictures to refresh",
            lambda: all(a != t["src"] for a, t in zip(first, chrome.execute_script(TILES_JS), strict=True)),
            15,
        )
        wait_for(
            "an event in the table", lambda: chrome.find_elements("css selector", "#events tbody tr"), 90
        )
        wait_for("the refreshed pictures to load", loaded, 10)

        shot = tmp_path / "status-page.png"
        assert chrome.save_screenshot(str(shot))
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(shot, ARTIFACTS / shot.name)

        errors = [e for e in chrome.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, f"the browser console has errors: {errors}"
        code, _ = daemon.terminate()
        assert code == 0
