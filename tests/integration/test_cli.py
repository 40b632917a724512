"""The `vistream` command as users and systemd see it: exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import shutil
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
    """check-config: 0 and OK for the shipped example (installed with its camera password files);
    2 and one line per problem, by key path."""
    etc = tmp_path / "etc"
    (etc / "cameras").mkdir(parents=True)
    shutil.copy("configs/example.yaml", etc / "config.yaml")
    for name in ("front_door", "viewer"):
        (etc / "cameras" / f"{name}.password").write_text("pw\n")
    ok = vistream("check-config", str(etc / "config.yaml"))
    assert ok.returncode == 0 and "OK (4 cameras)" in ok.stdout, ok.stdout
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
        # Nothing listens on port 1; the daemon must not care before the model fails. A client id of
        # its own: another test's daemon (pytest-xdist) may hold the default's segments meanwhile.
        "mqtt": {"port": 1, "client_id": "itestnomodel"},
        "metrics": {"enabled": False},
        "cameras": [{"name": "a", "url": str(samples_dir / "crowd-480p.mp4")}],
    }
    r = vistream("run", "-c", str(write(tmp_path, cfg)))
    assert r.returncode == 3, r.stderr
    assert "model.path: cannot load" in r.stderr
    assert "Traceback" not in r.stderr
    assert not list(Path("/dev/shm").glob("vistream.itestnomodel.*"))


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


def json_lines(stderr: str) -> list[dict]:
    """Every stderr line as a JSON object (a line that is not one fails the test)."""
    docs = [json.loads(line) for line in stderr.splitlines()]
    for doc in docs:
        assert {"time", "level", "logger", "process", "message"} <= doc.keys(), doc
    return docs


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_run_logs_config_errors_as_json(tmp_path: Path, how: str) -> None:
    """With --log-format json (or VISTREAM_LOG_FORMAT=json) even a config the daemon refuses is
    reported as JSON lines, one ERROR per problem, for the log shipper that reads them."""
    bad = write(tmp_path, {"batching": {"max_batch": -1}, "cameras": [{"name": "a", "url": "rtsp://h/s"}]})
    args, env = (["--log-format", "json"], None) if how == "flag" else ([], {"VISTREAM_LOG_FORMAT": "json"})
    r = vistream("run", "-c", str(bad), *args, env=env)
    assert r.returncode == 2
    docs = json_lines(r.stderr)
    assert len(docs) == 1 and docs[0]["level"] == "ERROR"
    assert docs[0]["message"].startswith("batching.max_batch: must be > 0")


def test_unknown_log_format_is_a_usage_error(tmp_path: Path) -> None:
    cfg = str(write(tmp_path, {"cameras": [{"name": "a", "url": "rtsp://h/s"}]}))
    r = vistream("run", "-c", cfg, env={"VISTREAM_LOG_FORMAT": "xml"})
    assert r.returncode == 2 and "VISTREAM_LOG_FORMAT: 'xml'" in r.stderr
    assert vistream("run", "-c", cfg, "--log-format", "xml").returncode == 2


def test_text_on_the_journal_has_priorities_and_no_timestamps(tmp_path: Path) -> None:
    """1. stderr is the stream systemd names in $JOURNAL_STREAM (here a file standing in for it).
    2. A refused config: the line starts with `<3>` (journald files it as an error) and carries no
       timestamp, journald adds its own."""
    bad = write(tmp_path, {"batching": {"max_batch": -1}, "cameras": [{"name": "a", "url": "rtsp://h/s"}]})
    with open(tmp_path / "journal", "w+") as journal:
        st = os.fstat(journal.fileno())
        proc = subprocess.run(
            [sys.executable, "-m", "vistream", "run", "-c", str(bad)],
            stderr=journal,
            env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
            cwd=REPO,
            timeout=60,
        )
        journal.seek(0)
        lines = journal.read().splitlines()
    assert proc.returncode == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("<3>ERROR   [MainProcess] vistream.cli: batching.max_batch: must be > 0")


@pytest.mark.integration
def test_run_logs_json_with_the_camera_from_its_reader(tmp_path: Path, samples_dir: Path) -> None:
    """1. `run --log-format json` with a model that cannot load (exit 3), after its reader opened
       the camera's clip.
    2. Every stderr line is a JSON object; the reader's lines, made in its own process and sent
       through the log hub, carry `camera`; the fatal line is an ERROR naming the key."""
    cfg = {
        "model": {"path": str(tmp_path / "missing.pt"), "device": "cpu"},
        "mqtt": {"port": 1, "client_id": "itestlogjson"},
        "metrics": {"enabled": False},
        "cameras": [{"name": "a", "url": str(samples_dir / "crowd-480p.mp4")}],
    }
    r = vistream("run", "-c", str(write(tmp_path, cfg)), "--log-format", "json")
    assert r.returncode == 3, r.stderr
    docs = json_lines(r.stderr)
    reader = [d for d in docs if d["process"] == "reader a"]
    assert reader and all(d["camera"] == "a" for d in reader), r.stderr
    assert any(d["message"].startswith("opened ") for d in reader), r.stderr
    fatal = [d for d in docs if d["message"].startswith("model.path: cannot load")]
    assert fatal and fatal[0]["level"] == "ERROR" and fatal[0]["logger"] == "vistream.daemon"
