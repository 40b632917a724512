"""Exported backends in the real daemon: OpenVINO on the street clip, the export cache across a
restart, and a missing runtime.

Run it under the shared lock:
`flock /tmp/vistream-itest.lock .venv/bin/pytest tests/integration/test_backends.py`.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import av
import cv2
import numpy as np
import openvino
import pytest
from support.daemon import VISTREAM, DaemonProcess, base_config
from support.mosquitto import Mosquitto, Subscriber
from support.procs import free_port

from vistream.bench.recall import iou_matrix, matched
from vistream.config.models import ModelConfig
from vistream.detector import load_detector

pytestmark = pytest.mark.integration


def persons_model(model_path: Path, backend: str, precision: str, cache_dir: Path) -> ModelConfig:
    """The model on the CPU, reporting persons, at `precision`, its exports cached in `cache_dir`."""
    return ModelConfig(
        path=str(model_path),
        device="cpu",
        backend=backend,
        precision=precision,
        classes=["person"],
        cache_dir=cache_dir,
    )


def letterboxed_street_frame(samples_dir: Path) -> np.ndarray:
    """The clip's first frame as the reader hands it over: 1920x1080 -> 640x360, grey bars to 640x640."""
    return letterboxed_frames(samples_dir / "street-1080p.mp4", 1, 1)[0]


def test_backends_find_the_same_people(tmp_path: Path, model_path: Path, samples_dir: Path) -> None:
    """1. The same .pt model on torch, OpenVINO and ONNX Runtime (the last two exported into a cache),
       all in fp32: the precision is pinned, as the numbers are compared (OpenVINO's CPU plugin
       would run bf16 on a CPU with AMX; `test_bf16_finds_the_persons_fp32_finds` covers that).
    2. One street frame in rows 0 and 2 of a batch of 3 (another frame between).
    3. Every backend finds the same persons: same count, boxes within 2 px, confidences within 0.02;
       both rows of a batch alike (no row mixed up with its neighbour)."""
    frame = letterboxed_street_frame(samples_dir)
    found = {}
    for backend in ("torch", "openvino", "onnxruntime"):
        cfg = persons_model(model_path, backend, "fp32", tmp_path)
        detector = load_detector(cfg, 4)
        assert (detector.backend, detector.precision) == (backend, "fp32")
        detector.input_buffer[[0, 2]] = frame
        detector.input_buffer[1] = 114
        rows = detector.infer(3)
        detector.close()
        assert np.allclose(rows[0], rows[2], atol=1e-3) and len(rows[1]) == 0
        found[backend] = rows[0][np.argsort(-rows[0][:, 4])]
    reference = found["torch"]
    assert len(reference) >= 3 and reference[0, 4] > 0.5
    for backend, boxes in found.items():
        assert boxes.shape == reference.shape, backend
        assert np.abs(boxes[:, :4] - reference[:, :4]).max() < 2, backend
        assert np.abs(boxes[:, 4] - reference[:, 4]).max() < 0.02, backend


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_the_fitted_batch_shape_finds_what_the_square_finds(
    tmp_path: Path, model_path: Path, samples_dir: Path, backend: str
) -> None:
    """1. The street frame letterboxed into the 640x640 square (grey bars of 140 px), inferred.
    2. The same model reshaped to the 384x640 batch shape a 1920x1080 camera gets, warmed up, and the
       frame letterboxed into it (bars of 12 px): the same resized pixels, less padding.
    3. Every person of the square (in camera rows) is found again (IoU >= 0.8) at a confidence
       within 0.05, and nothing more. In fp32 (pinned): the padding is what is compared."""
    frame = letterboxed_street_frame(samples_dir)
    cfg = persons_model(model_path, backend, "fp32", tmp_path)
    detector = load_detector(cfg, 2)
    detector.input_buffer[0] = frame
    square = detector.infer(1)[0]
    detector.reshape(384, 640)
    detector.warmup()
    assert detector.input_buffer.shape == (2, 384, 640, 3)
    detector.input_buffer[0] = frame[140 - 12 : 500 + 12]
    fitted = detector.infer(1)[0]
    detector.close()
    square[:, [1, 3]] -= 140
    fitted[:, [1, 3]] -= 12
    assert len(square) >= 3 and len(fitted) == len(square)
    assert matched(square, fitted, min_iou=0.8) == len(square)
    by_conf = lambda boxes: np.sort(boxes[:, 4])  # noqa: E731
    assert np.abs(by_conf(square) - by_conf(fitted)).max() < 0.05


def letterboxed_frames(clip: Path, every: int, count: int) -> list[np.ndarray]:
    """`count` frames of a clip, one in `every`, letterboxed into 640x640 as a reader does."""
    out = []
    with av.open(str(clip)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % every:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            nh, nw = round(h * 640 / max(h, w)), round(w * 640 / max(h, w))
            y, x = (640 - nh) // 2, (640 - nw) // 2
            box = np.full((640, 640, 3), 114, np.uint8)
            box[y : y + nh, x : x + nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
            out.append(box)
            if len(out) == count:
                return out
    return out


# bf16 keeps 8 significant bits: every activation of the ~70 layers between pixels and scores is
# rounded by up to 2^-9 of itself, against fp32's 2^-24. Through the network that is a few tenths on
# a score logit of magnitude ~5; the sigmoid's slope is at most 1/4, so a confidence moves by up to
# about 0.1 (measured worst on these frames, Xeon with AMX: 0.097). A box edge is the expectation of
# a 16-bin distribution (DFL): where two bins are nearly tied, as for a partly hidden person, rounding
# can move it by many pixels (14 px on the street clip), so boxes are matched by IoU >= 0.5, the COCO
# criterion for "the same object", not compared edge by edge or paired by order of confidence.
BF16_CONF_TOLERANCE = 0.1


def test_bf16_finds_the_persons_fp32_finds(
    tmp_path: Path, model_path: Path, samples_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. Torch fp32 (the reference) and OpenVINO with `precision: bf16` on 3 street and 3 crowd
       frames. OpenVINO runs bf16 where the CPU has bf16 units (its capabilities list BF16), and
       otherwise falls back to fp32, which the detector reports and logs: either way it is what
       `precision` says.
    2. Every person either finds with a confidence clear of the threshold by the tolerance has a
       partner of IoU >= 0.5 in the other's boxes, and partners' confidences differ by at most
       `BF16_CONF_TOLERANCE` (reasons above; fp32 on both sides holds it by far)."""
    frames = letterboxed_frames(samples_dir / "street-1080p.mp4", 30, 3)
    frames += letterboxed_frames(samples_dir / "crowd-480p.mp4", 30, 3)
    found: dict[str, list[np.ndarray]] = {}
    for backend, precision in (("torch", "fp32"), ("openvino", "bf16")):
        cfg = persons_model(model_path, backend, precision, tmp_path)
        detector = load_detector(cfg, 1)
        runs_at = detector.precision
        found[backend] = []
        for frame in frames:
            detector.input_buffer[0] = frame
            found[backend].append(detector.infer(1)[0])
        detector.close()
    has_bf16 = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert runs_at == ("bf16" if has_bf16 else "fp32")
    fell_back = "OpenVINO runs fp32 on this CPU, not bf16" in caplog.text
    assert fell_back == (not has_bf16)
    print(f"OpenVINO asked for bf16 runs {runs_at} on this CPU")
    clear = cfg.conf + BF16_CONF_TOLERANCE
    for i, (fp32, bf16) in enumerate(zip(found["torch"], found["openvino"], strict=True)):
        assert len(fp32) >= 5, f"frame {i}: too few persons to compare"
        for ours, theirs in ((fp32, bf16), (bf16, fp32)):
            sure = ours[ours[:, 4] >= clear]
            assert matched(sure, theirs, min_iou=0.5) == len(sure), f"frame {i}"
        iou = iou_matrix(fp32, bf16)
        pairs = [(r, int(iou[r].argmax())) for r in range(len(fp32)) if iou[r].max() >= 0.5]
        worst = max(abs(fp32[r, 4] - bf16[c, 4]) for r, c in pairs)
        assert worst <= BF16_CONF_TOLERANCE, f"frame {i}: confidences differ by {worst:.3f}"


def batch_shape(daemon: DaemonProcess, timeout: float = 10.0) -> dict[str, float]:
    """`vistream_batch_shape` once the scheduler has reported it (its figures come once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        found = re.findall(r'^vistream_batch_shape\{side="(\w+)"\} ([\d.]+)$', daemon.metrics(), re.M)
        shape = {side: float(v) for side, v in found}
        if any(shape.values()) or time.monotonic() > deadline:
            return shape
        time.sleep(0.5)


def person_found(sub: Subscriber, prefix: str, timeout: float) -> float:
    """The confidence of the first person (> 0.5) detected on the `street` camera."""
    msg = sub.wait_for(
        lambda m: (
            m.topic == f"{prefix}/street/detections"
            and any(o["label"] == "person" and o["confidence"] > 0.5 for o in m.json()["objects"])
        ),
        timeout=timeout,
    )
    return max(o["confidence"] for o in msg.json()["objects"] if o["label"] == "person")


def test_openvino_daemon_finds_a_person_and_reuses_its_export(
    tmp_path: Path, mosquitto: Mosquitto, model_path: Path, samples_dir: Path
) -> None:
    """1. `vistream run` with `backend: openvino`, the .pt model, an empty export cache and the street
       clip as a file camera: the model is exported into the cache, the daemon says it runs OpenVINO
       on the batch as the scheduler fills it (uint8 NHWC: scaling and reordering are in the model).
    2. A person is detected on the street clip with confidence > 0.5, at the 384x640 batch shape
       fitted to the 1920x1080 camera (/metrics says so).
    3. SIGTERM: exit 0. The cache holds one complete entry.
    4. A second start with the same config is a cache hit (no export) and again finds a person."""
    prefix = "itestov"
    cache = tmp_path / "cache"
    cams = [{"name": "street", "url": str(samples_dir / "street-1080p.mp4"), "detect_fps": 2}]
    cfg = base_config(model_path, mosquitto.port, free_port(), prefix, cams)
    cfg["model"] |= {"backend": "openvino", "cache_dir": str(cache), "threads": 1}
    for start in ("cold", "cached"):
        workdir = tmp_path / start
        workdir.mkdir()
        with (
            Subscriber(mosquitto.host, mosquitto.port, f"{prefix}/#") as sub,
            DaemonProcess(cfg, workdir) as daemon,
        ):
            assert person_found(sub, prefix, timeout=180) > 0.5
            assert batch_shape(daemon) == {"height": 384, "width": 640}
            code, _ = daemon.terminate()
            assert code == 0, daemon.log[-3000:]
        log = daemon.log
        assert "backend openvino" in log
        assert "takes u8 [N,H,W,C]" in log, log[-3000:]
        assert ("export cache hit" in log) == (start == "cached"), log[-3000:]
        assert ("exported openvino" in log) == (start == "cold"), log[-3000:]
        entries = list(cache.iterdir())
        assert len(entries) == 1 and entries[0].name.startswith("yolov8n-openvino-640x640-b4-fp32-")


def test_missing_runtime_is_one_line_and_exit_3(tmp_path: Path, model_path: Path, samples_dir: Path) -> None:
    """1. `backend: onnxruntime` on a machine where `import onnxruntime` fails (a stand-in package
       first on PYTHONPATH that raises ImportError, as a half-removed install would).
    2. `vistream run` exits 3 without a traceback, naming the extra to install."""
    shadow = tmp_path / "shadow" / "onnxruntime"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named onnxruntime (test stand-in)')\n")
    cams = [{"name": "street", "url": str(samples_dir / "street-1080p.mp4"), "detect_fps": 2}]
    cfg = base_config(model_path, free_port(), free_port(), "itestnort", cams)
    cfg["model"] |= {"backend": "onnxruntime", "cache_dir": str(tmp_path / "cache")}
    daemon = DaemonProcess(cfg, tmp_path)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [*VISTREAM, "run", "-c", str(daemon.path)], env=env, capture_output=True, text=True, timeout=120
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out[-3000:]
    assert "pip install vistream[onnxruntime]" in out
    assert "Traceback" not in out
    assert not (tmp_path / "cache").exists()  # nothing was exported for a runtime that is not there
