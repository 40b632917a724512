"""The `vistream` command as users and systemd see it: exit codes and one-line errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vistream import __version__

REPO = Path(__file__).resolve().parents[2]


def vistream(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vistream", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_version() -> None:
    r = vistream("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"vistream {__version__}"


def test_no_command_is_a_usage_error() -> None:
    r = vistream()
    assert r.returncode == 2 and "run" in r.stderr


def test_check_config_ok_and_broken(tmp_path: Path) -> None:
    """check-config: 0 and OK for the shipped example; 2 and one line per problem, by key path."""
    ok = vistream("check-config", "configs/example.yaml")
    assert ok.returncode == 0 and "OK (4 cameras)" in ok.stdout
    bad = write(tmp_path, {"cameras": [{"name": "Bad Name", "url": "rtsp://h/s", "detect_fps": 0}]})
    r = vistream("check-config", str(bad))
    assert r.returncode == 2
    lines = r.stdout.strip().splitlines()
    assert any(line.startswith("cameras[0].name:") for line in lines)
    assert any(line.startswith("cameras[0].detect_fps: must be > 0") for line in lines)
    assert "Traceback" not in r.stdout + r.stderr


def test_run_with_invalid_config_exits_2_without_traceback(tmp_path: Path) -> None:
    """`run` refuses a broken config before starting anything: exit 2, key path, no traceback."""
    bad = write(tmp_path, {"batching": {"max_batch": -1}, "cameras": [{"name": "a", "url": "rtsp://h/s"}]})
    r = vistream("run", "-c", str(bad))
    assert r.returncode == 2
    assert "batching.max_batch: must be > 0" in r.stderr
    assert "Traceback" not in r.stderr


def test_run_takes_config_from_environment(tmp_path: Path) -> None:
    """Without -c, $VISTREAM_CONFIG names the file (here a missing one: exit 2, the path named)."""
    missing = tmp_path / "nope.yaml"
    r = vistream("run", env={"VISTREAM_CONFIG": str(missing)})
    assert r.returncode == 2 and str(missing) in r.stderr


@pytest.mark.integration
def test_model_that_cannot_load_exits_3(tmp_path: Path, samples_dir: Path) -> None:
    """A model file that is not there: exit 3 (systemd: do not restart), one clear line, no traceback."""
    cfg = {
        "model": {"path": str(tmp_path / "missing.pt"), "device": "cpu"},
        "mqtt": {"port": 1},  # nothing listens there; the daemon must not care before the model fails
        "metrics": {"enabled": False},
        "cameras": [{"name": "a", "url": str(samples_dir / "crowd-480p.mp4")}],
    }
    r = vistream("run", "-c", str(write(tmp_path, cfg)))
    assert r.returncode == 3, r.stderr
    assert "model.path: cannot load" in r.stderr
    assert "Traceback" not in r.stderr
    assert not list(Path("/dev/shm").glob("vistream.vistream.*"))


@pytest.mark.integration
def test_unknown_class_exits_2(tmp_path: Path, samples_dir: Path, model_path: Path) -> None:
    """`model.classes` naming a class the model does not have is a config error (exit 2), found at load."""
    cfg = {
        "model": {"path": str(model_path), "device": "cpu", "classes": ["person", "unicorn"]},
        "mqtt": {"port": 1, "client_id": "itestclasses"},
        "metrics": {"enabled": False},
        "cameras": [{"name": "a", "url": str(samples_dir / "crowd-480p.mp4")}],
    }
    r = vistream("run", "-c", str(write(tmp_path, cfg)))
    assert r.returncode == 2, r.stderr
    assert "model.classes[1]: unknown class 'unicorn'" in r.stderr


def test_metrics_port_in_use_exits_2_with_one_line(tmp_path: Path, samples_dir: Path) -> None:
    """1. Something already listens on the metrics port (another daemon, an exporter).
    2. `run` exits 2 (systemd: do not restart) with one line naming the key and the address,
       no traceback, and leaves no shared memory behind."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        client = "itestport"
        cfg = {
            "mqtt": {"port": 1, "client_id": client},
            "metrics": {"host": "127.0.0.1", "port": port},
            "cameras": [{"name": "a", "url": str(samples_dir / "crowd-480p.mp4")}],
        }
        r = vistream("run", "-c", str(write(tmp_path, cfg)))
    assert r.returncode == 2, r.stderr
    assert f"metrics.port: 127.0.0.1:{port} is in use" in r.stderr
    assert "Traceback" not in r.stderr
    assert not list(Path("/dev/shm").glob(f"vistream.{client}.*"))
