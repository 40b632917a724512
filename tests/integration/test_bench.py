"""`vistream bench --smoke` as a user runs it: the whole comparison, short, checked for shape, not speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.serial]


def test_bench_smoke_writes_the_comparison(
    tmp_path: Path, _rtsp_available: None, _mosquitto_available: None, samples_dir: Path, model_path: Path
) -> None:
    """1. `vistream bench --smoke` (2 cameras, 10 s windows) starts its own RTSP server and broker.
    2. It exits 0 having printed the ratios before the table.
    3. Its JSON holds the ratios, the model's limit idle and under decode load at the batch shape of
       the cameras, vistream's figures (rate, batch, latency percentiles, frame age, drops, processes)
       and Ultralytics' image count; the PNG is beside it."""
    out = tmp_path / "compare.json"
    clips = [f"street={samples_dir / 'street-1080p.mp4'}", f"crowd={samples_dir / 'crowd-480p.mp4'}"]
    cmd = [sys.executable, "-m", "vistream", "bench", "--smoke", "--model", str(model_path),
           "--out", str(out), "--clip", clips[0], "--clip", clips[1]]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.index("vistream / Ultralytics predictor") < proc.stdout.index("frames/s")

    r = json.loads(out.read_text())
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert set(r["ratios"]) >= {"vistream_per_ultralytics", "vistream_per_model_limit_loaded"}
    assert r["options"]["cameras"].keys() == {"street1", "crowd1"}
    assert r["batch_shape_hw"] == [480, 640]  # 16:9 and 4:3 at 640: the larger of 384x640 and 480x640
    limit = r["model_limit"]
    assert limit["batch"] == 2 and limit["shape_hw"] == [480, 640]
    assert limit["idle"]["img_per_s"] > 0 and limit["loaded"]["img_per_s"] > 0
    assert set(limit["loaded"]["decoders"]) == {"street1", "crowd1"}

    v = r["vistream"]
    assert v["inferred_fps"] > 0 and v["batch_size_mean"] > 0
    latency = v["detections"]["capture_to_receive"]
    assert latency["n"] > 0 and latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"]
    assert v["frame_age_inference_end_ms_p99"] is not None and v["latency_bound_ms"] > 500
    assert isinstance(v["dropped"], dict) and isinstance(v["skipped"], dict)
    assert {"main", "scheduler", "reader street1", "reader crowd1"} <= set(v["processes"]["processes"])
    assert v["stop"]["exit_code"] == 0

    u = r["ultralytics"]
    assert u["ok"], u.get("error")
    assert u["streams"] == 2 and u["images"] > 0 and u["images_per_s"] > 0
    assert u["processes"]["processes"]["ultralytics"]["cpu_pct"] > 0
