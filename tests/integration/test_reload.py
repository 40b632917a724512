"""Live reload (SIGHUP) of a running daemon with real parts: RTSP cameras, Mosquitto, the model."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import yaml
from support.daemon import DaemonProcess, NotifySocket, base_config, child
from support.mosquitto import Mosquitto, Subscriber
from support.procs import free_port
from support.rtsp_server import RtspServer
from support.waiting import wait_until

pytestmark = pytest.mark.integration


def seqs(sub: Subscriber, prefix: str, camera: str, since: float = 0.0) -> list[int]:
    topic = f"{prefix}/{camera}/detections"
    return [m.json()["seq"] for m in sub.messages if m.topic == topic and m.timestamp >= since]


def segments(prefix: str, camera: str) -> list[Path]:
    return list(Path("/dev/shm").glob(f"vistream.{prefix}.*.{camera}"))


def test_sighup_adds_removes_restarts_and_keeps_the_rest(
    tmp_path: Path, rtsp_server: RtspServer, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. A daemon with cameras keep (unchanged), change (its detect_fps will change) and drop.
    2. The file is rewritten: drop removed, new added, change at another rate; then SIGHUP.
    3. RELOADING=1 then READY=1 reach the notify socket; the log says what changed.
    4. keep's reader is not restarted (the same pid) and its sequence numbers go on from where they were (no
       reset, no jump); new publishes within 10 s; drop goes offline and its shared memory is
       gone; change is restarted and publishes again.
    5. The reload brought the first line and rule (on new): the outbox opens in state_dir and
       the line's counters and the rule's active flag are published, retained.
    6. A broken file on the next SIGHUP is logged by key path and line, and changes nothing:
       every camera keeps publishing."""
    prefix = "ireload"
    cams = {
        "keep": {"name": "keep", "url": rtsp_server.url("street1"), "detect_fps": 3},
        "change": {"name": "change", "url": rtsp_server.url("crowd1"), "detect_fps": 3},
        "drop": {"name": "drop", "url": rtsp_server.url("street2"), "detect_fps": 3},
    }
    cfg = base_config(model_path, mosquitto.port, free_port(), prefix, list(cams.values()))
    cfg["state_dir"] = str(tmp_path / "state")
    notify = NotifySocket(tmp_path / "notify.sock")
    with (
        Subscriber(mosquitto.host, mosquitto.port, f"{prefix}/#") as sub,
        DaemonProcess(cfg, tmp_path, env={"NOTIFY_SOCKET": str(notify.path)}) as daemon,
    ):
        assert daemon.proc is not None
        wait_until(lambda: all(len(seqs(sub, prefix, c)) >= 3 for c in cams), 90, "all cameras publishing")
        assert segments(prefix, "drop")

        new_cams = [cams["keep"], {**cams["change"], "detect_fps": 2}]
        line = {"mid": [[0.02, 0.5], [0.98, 0.5]]}
        new_cams.append({"name": "new", "url": rtsp_server.url("crowd2"), "detect_fps": 3, "lines": line})
        rules = [{"name": "crossing", "line": "mid"}]
        daemon.path.write_text(yaml.safe_dump({**cfg, "cameras": new_cams, "alerts": rules}))
        keep_before = seqs(sub, prefix, "keep")
        keep_pid = child(daemon, "reader keep").pid
        hup = time.monotonic()
        daemon.proc.send_signal(signal.SIGHUP)

        wait_until(lambda: seqs(sub, prefix, "new", hup), 10, "the new camera's first detections")
        wait_until(
            lambda: any(m.topic == f"{prefix}/drop/status" and m.payload == b"offline" for m in sub.messages),
            10,
            "the removed camera offline",
        )
        wait_until(lambda: not segments(prefix, "drop"), 10, "the removed camera's ring unlinked")
        wait_until(lambda: len(seqs(sub, prefix, "change", hup + 1)) >= 2, 30, "the changed camera again")
        wait_until(lambda: len(seqs(sub, prefix, "keep", hup)) >= 5, 30, "the unchanged camera going on")

        for topic in (f"{prefix}/new/mid/in/count", f"{prefix}/new/crossing/active"):
            wait_until(lambda t=topic: any(m.topic == t for m in sub.messages), 10, topic)
        assert (tmp_path / "state" / "outbox.sqlite3").exists()

        keep_after = seqs(sub, prefix, "keep", hup)
        assert keep_after[0] > keep_before[-1], "the unchanged camera's sequence started over"
        assert daemon.metric("vistream_process_restarts_total", process="reader/keep") == 0
        assert child(daemon, "reader keep").pid == keep_pid, "the unchanged camera's reader was replaced"
        messages = notify.poll()
        reloading = next(i for i, m in enumerate(messages) if m.startswith("RELOADING=1"))
        assert any(m.startswith("READY=1") for m in messages[reloading + 1 :])
        log = daemon.log
        assert "reload: started new; stopped drop; restarted change (detect_fps)" in log
        assert "Traceback" not in log

        daemon.path.write_text(yaml.safe_dump({**cfg, "cameras": [{**cams["keep"], "detect_fps": 0}]}))
        broken = time.monotonic()
        daemon.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "still running the previous config" in daemon.log, 10, "the refused reload")
        assert "reload: cameras[0].detect_fps: must be > 0 (line" in daemon.log
        wait_until(
            lambda: all(len(seqs(sub, prefix, c, broken + 1)) >= 2 for c in ("keep", "change", "new")),
            30,
            "every camera still publishing",
        )
        assert daemon.terminate()[0] == 0
        assert "Traceback" not in daemon.log
