"""`vistream demo` as a newcomer runs it: generated footage, embedded broker, live table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support.mosquitto import Subscriber

pytestmark = pytest.mark.integration


def test_demo_runs_the_whole_pipeline(tmp_path: Path, model_path: Path) -> None:
    """1. `vistream demo --cameras 2 --seconds 30` with an empty cache: footage is generated.
    2. A real MQTT client connects to the embedded broker it announces and receives
       detections with people in them.
    3. It stops by itself, exit 0, having printed the table with both cameras inferring.
    4. People on the footage walked through the demo's zones and across its lines: the last
       table counts events or crossings, lists recent events under it, and the subscriber got
       event messages.
    5. The per-run state directory in the cache is gone again."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "vistream", "demo", "--model", str(model_path), "--cameras", "2",
           "--seconds", "30", "--port", "0", "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None and proc.stdout is not None
    port = None
    for line in proc.stderr:
        if m := re.search(r"MQTT broker on 127\.0\.0\.1:(\d+)", line):
            port = int(m.group(1))
            break
    assert port, "the demo did not announce its broker"
    err: list[str] = []
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
    try:
        with Subscriber("127.0.0.1", port, "vistream/#") as sub:
            msg = sub.wait_for(
                lambda m: (
                    m.topic.endswith("/detections")
                    and any(o["label"] == "person" for o in m.json()["objects"])
                ),
                timeout=90,
            )
            assert msg.json()["width"] == 1280
            out, _ = proc.communicate(timeout=90)
            topics = {m.topic for m in sub.messages}
    finally:
        proc.kill()
    assert proc.returncode == 0, "".join(err)
    tables = out.split("vistream demo")
    last = tables[-1]
    alerts = 0
    for name in ("bus_pan", "people_pan"):
        row = next(line for line in last.splitlines() if line.startswith(name))
        cells = row.split()
        fps_inferred = float(cells[3])
        assert "online" in row and fps_inferred > 0
        events, crossings = int(cells[6]), cells[7].split("/")
        alerts += events + int(crossings[0]) + int(crossings[1])
    assert alerts > 0, last
    assert "recent events\n" in last, last
    recent = last.split("recent events\n", 1)[1].splitlines()
    assert any(name in recent[-1] for name in ("bus_pan", "people_pan")), last
    assert "vistream/events" in topics
    cache = tmp_path / "cache" / "vistream" / "demo"
    assert len(list(cache.glob("*.mp4"))) == 2
    assert not list(cache.glob("state-*"))


def test_demo_without_weights_says_how_in_one_line(tmp_path: Path) -> None:
    """Weights that cannot be had: one line that says so and how to pass --model; exit 3."""
    r = subprocess.run(
        [sys.executable, "-m", "vistream", "demo", "--model", str(tmp_path / "none.pt")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 3
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--model" in lines[0]
