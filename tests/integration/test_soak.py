"""benchmarks/soak.py as CI runs it: 2 minutes with a broker and a camera outage, checked for its
verdict and the shape of its report (the 30-minute run is the benchmark's, docs/reliability.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, missing

pytestmark = [pytest.mark.integration, pytest.mark.serial]

SOAK = REPO_ROOT / "benchmarks" / "soak.py"
SAMPLE_KEYS = {
    "t_s", "final", "faults", "quiet", "rss_mib_sum", "fds", "http_clients", "fds_own", "shm", "processes",
    "detections", "detections_per_camera", "capture_to_publish", "capture_to_receive", "events_total",
    "outbox_pending", "mqtt_connected", "camera_reconnects", "status_page_pictures",
}  # fmt: skip


@pytest.mark.timeout(600)
def test_soak_two_minutes_with_outages(
    tmp_path: Path, _rtsp_available: None, _mosquitto_available: None, samples_dir: Path, model_path: Path
) -> None:
    """1. benchmarks/soak.py runs the real daemon (4 RTSP cameras, the sample rules, OpenVINO) for
       2 minutes with its status page open in headless Chromium; faults every 50 s: Mosquitto away
       for 20 s from 50 s, camera street1 away for 20 s from 75 s (a second cycle would not be over
       before the end, so there is none).
    2. It exits 0: RSS and fds did not grow after the warm-up (40 % of a short run), no event lost.
    3. Its JSON: both outages happened, for 20 s each; samples every 15 s with every process's RSS
       and fds, /dev/shm and latency; the baseline after the warm-up, the final sample quiet and among
       those compared; events
       started, each with its end, as many as `vistream_events_total`; the status page showed all 4
       pictures at the end. The PNG is beside it."""
    for exe in ("chromium", "chromedriver"):
        if not shutil.which(exe):
            missing(f"{exe} not found (Debian's chromium and chromium-driver; scripts/test installs them)")
    out = tmp_path / "soak.json"
    cmd = [sys.executable, str(SOAK), "--minutes", "2", "--fault-every", "50s", "--outage", "20",
           "--sample-every", "15", "--detect-fps", "2", "--out", str(out),
           "--keep", str(tmp_path / "run")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=540, check=False)
    if proc.returncode == 2:
        missing(proc.stderr.strip())
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    r = json.loads(out.read_text())
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert r["passed"] is True and r["failures"] == []
    assert r["warmup_s"] == pytest.approx(48)
    assert [(f["kind"], f["target"]) for f in r["faults"]] == [("broker", "mosquitto"), ("camera", "street1")]
    assert all(f["end_s"] - f["start_s"] >= 19.5 for f in r["faults"])

    samples = r["samples"]
    assert all(s.keys() >= SAMPLE_KEYS for s in samples)
    assert len(samples) >= 8 and samples[-1]["final"] and samples[-1]["quiet"]
    assert any(s["faults"] == ["broker:mosquitto"] for s in samples)
    roles = set(samples[-1]["processes"])
    assert {"main", "scheduler", "reader street1", "reader crowd2"} <= roles
    assert all(p["rss_mib"] > 0 and p["fds"] > 0 for p in samples[-1]["processes"].values())
    assert samples[-1]["shm"]["segments"] == 4 and samples[-1]["shm"]["allocated_bytes"] > 0
    assert samples[-1]["capture_to_publish"]["p50_ms"] > 0
    assert samples[-1]["status_page_pictures"] == 4

    g = r["growth"]
    assert g["baseline_t_s"][0] >= 48 and g["final_t_s"][-1] == samples[-1]["t_s"]
    assert not g["rss_sum_grew"] and not g["rss_grew_in"] and not g["fds_grew"]

    e = r["events"]
    assert e["started"] > 0 and e["started"] == e["vistream_events_total"] and e["lost"] == 0
    assert e["start_without_end"] == [] and e["end_without_start"] == []
    assert e["outbox_evicted"] == 0 and e["alert_messages_dropped"] == 0
    assert e["drained_after_s"] is not None and e["drained_after_s"] < 60  # every end came, no time-out
    assert r["daemon_exit"]["code"] == 0
