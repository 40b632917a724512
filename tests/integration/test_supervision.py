"""Supervision with real processes and signals: children restarted, nothing left behind."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from support.daemon import DaemonProcess, base_config, child, counter_samples, unaccounted
from support.mosquitto import Mosquitto, Subscriber
from support.procs import free_port

pytestmark = pytest.mark.integration


def file_cameras(samples_dir: Path, *names: str) -> list[dict]:
    return [{"name": n, "url": str(samples_dir / "crowd-480p.mp4"), "detect_fps": 2} for n in names]


def test_dead_children_are_restarted_and_counted(
    tmp_path: Path, samples_dir: Path, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. Two file cameras publish.
    2. Reader `a` is SIGKILLed: it is restarted, counted in vistream_process_restarts_total,
       and `a` publishes again; `b` never stops.
    3. The scheduler is SIGKILLed: a new one loads the model, counted, detections resume for
       both cameras, and the inferred-frames counters never go backwards.
    4. SIGTERM still stops everything cleanly."""
    prefix = "itestsup"
    cfg = base_config(model_path, mosquitto.port, free_port(), prefix, file_cameras(samples_dir, "a", "b"))
    with (
        Subscriber(mosquitto.host, mosquitto.port, f"{prefix}/#") as sub,
        DaemonProcess(cfg, tmp_path) as daemon,
    ):
        for cam in ("a", "b"):
            sub.wait_for(lambda m, c=cam: m.topic == f"{prefix}/{c}/detections", timeout=90)

        reader = child(daemon, "reader a")
        reader.send_signal(signal.SIGKILL)
        reader.wait(5)
        sub.clear()
        sub.wait_for(lambda m: m.topic == f"{prefix}/a/detections", timeout=30)
        assert child(daemon, "reader a").pid != reader.pid
        assert daemon.metric("vistream_process_restarts_total", process="reader/a") == 1
        sub.wait_for(lambda m: m.topic == f"{prefix}/b/detections", timeout=5)

        inferred_before = daemon.metric("vistream_frames_inferred_total", camera="b")
        scheduler = child(daemon, "scheduler")
        scheduler.send_signal(signal.SIGKILL)
        scheduler.wait(5)
        time.sleep(1)
        sub.clear()
        for cam in ("a", "b"):
            sub.wait_for(lambda m, c=cam: m.topic == f"{prefix}/{c}/detections", timeout=60)
        assert daemon.metric("vistream_process_restarts_total", process="scheduler") == 1
        assert daemon.metric("vistream_frames_inferred_total", camera="b") >= inferred_before
        assert "scheduler exited" in daemon.log

        code, took = daemon.terminate()
        assert code == 0 and took < 10


def test_killed_daemon_leaves_no_process_or_shared_memory(
    tmp_path: Path, samples_dir: Path, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. A daemon with two cameras is SIGKILLed (no chance to clean up).
    2. Its readers and scheduler die with it (they do not decode for nobody).
    3. Its shared-memory segments are gone, or the next start removes them."""
    prefix = "itestkill"
    cfg = base_config(model_path, mosquitto.port, free_port(), prefix, file_cameras(samples_dir, "a", "b"))
    with (
        Subscriber(mosquitto.host, mosquitto.port, f"{prefix}/#") as sub,
        DaemonProcess(cfg, tmp_path) as daemon,
    ):
        sub.wait_for(lambda m: m.topic == f"{prefix}/a/detections", timeout=90)
        children = [child(daemon, t) for t in ("reader a", "reader b", "scheduler")]
        assert daemon.proc is not None
        os.kill(daemon.proc.pid, signal.SIGKILL)
        daemon.proc.wait(5)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
        # The broker publishes the Last Will: the daemon is offline.
        sub.wait_for(lambda m: m.topic == f"{prefix}/status" and m.payload == b"offline", timeout=60)

    # A fresh start on the same instance must find /dev/shm clean (or make it so).
    with DaemonProcess(cfg, tmp_path) as again:
        sub2 = Subscriber(mosquitto.host, mosquitto.port, f"{prefix}/#")
        with sub2:
            sub2.wait_for(lambda m: m.topic == f"{prefix}/a/detections", timeout=90)
        segments = list(Path("/dev/shm").glob(f"vistream.{prefix}.*"))
        assert again.proc is not None
        assert {p.name.split(".")[2] for p in segments} == {str(again.proc.pid)}
        assert again.terminate()[0] == 0
    assert not list(Path("/dev/shm").glob(f"vistream.{prefix}.*"))


def test_model_that_fails_after_a_scheduler_restart_ends_the_daemon_with_3(
    tmp_path: Path, samples_dir: Path, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. A daemon runs on its own copy of the model and publishes.
    2. The model file is corrupted (a botched update) and the scheduler is SIGKILLed.
    3. The new scheduler cannot load the model: the daemon exits 3 (systemd: do not restart)
       with the reason in one line, instead of reloading the model forever."""
    prefix = "itestreload"
    model = tmp_path / "model.pt"
    shutil.copy(model_path, model)
    cfg = base_config(model, mosquitto.port, free_port(), prefix, file_cameras(samples_dir, "a"))
    with (
        Subscriber(mosquitto.host, mosquitto.port, f"{prefix}/#") as sub,
        DaemonProcess(cfg, tmp_path) as daemon,
    ):
        sub.wait_for(lambda m: m.topic == f"{prefix}/a/detections", timeout=90)
        model.write_bytes(b"not a model")
        scheduler = child(daemon, "scheduler")
        scheduler.send_signal(signal.SIGKILL)
        assert daemon.proc is not None
        code = daemon.proc.wait(120)
        assert code == 3, daemon.log[-3000:]
        assert "model.path: cannot load" in daemon.log
        assert daemon.log.count("scheduler exited") == 1  # one restart, not a reload loop
    assert not list(Path("/dev/shm").glob(f"vistream.{prefix}.*"))


class Scraper:
    """Scrapes /metrics in a loop and records every counter that went backwards between two scrapes."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.scrapes = 0
        self.backwards: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last: dict[str, float] = {}
        while not self._stop.is_set():
            now = counter_samples(self.daemon.metrics())
            self.backwards += [f"{k}: {last[k]} -> {v}" for k, v in now.items() if v < last.get(k, v)]
            last = {**last, **now}
            self.scrapes += 1

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_accounting_holds_across_a_scheduler_restart(
    tmp_path: Path, samples_dir: Path, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. Two file cameras publish; a scraper reads /metrics without pause from here on.
    2. The scheduler is SIGKILLed and a new one loads the model (seconds in which the readers
       keep writing frames that no scheduler is attached to); detections resume.
    3. The readers are paused so that the scheduler's once-a-second figures catch up: for each
       camera, sampled = inferred + dropped (all reasons) + pending, pending 0 or 1, and the
       frames written while no scheduler was attached are counted as `unattached`.
    4. No counter of any scrape went backwards, through the restart included."""
    prefix = "itestaccount"
    cams = ("a", "b")
    cfg = base_config(model_path, mosquitto.port, free_port(), prefix, file_cameras(samples_dir, *cams))
    with (
        Subscriber(mosquitto.host, mosquitto.port, f"{prefix}/#") as sub,
        DaemonProcess(cfg, tmp_path) as daemon,
    ):
        for cam in cams:
            sub.wait_for(lambda m, c=cam: m.topic == f"{prefix}/{c}/detections", timeout=90)
        with Scraper(daemon) as scraper:
            scheduler = child(daemon, "scheduler")
            scheduler.send_signal(signal.SIGKILL)
            scheduler.wait(5)
            sub.clear()
            for cam in cams:
                sub.wait_for(lambda m, c=cam: m.topic == f"{prefix}/{c}/detections", timeout=60)
            readers = [child(daemon, f"reader {cam}") for cam in cams]
            for reader in readers:
                reader.suspend()
            try:
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and any(unaccounted(daemon, c) > 1 for c in cams):
                    time.sleep(0.3)
                for cam in cams:
                    assert 0 <= unaccounted(daemon, cam) <= 1, daemon.metrics()
                    assert daemon.metric("vistream_frames_dropped_total", camera=cam, reason="unattached") > 0
            finally:
                for reader in readers:
                    reader.resume()
        assert scraper.scrapes > 10
        assert scraper.backwards == []
        assert daemon.terminate()[0] == 0


def test_camera_status_after_a_crash_is_corrected_at_the_next_start(
    tmp_path: Path, samples_dir: Path, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. A daemon with camera `a` runs; `a` is online (retained).
    2. The daemon is SIGKILLed: its Last Will turns `{prefix}/status` offline; `a`'s retained
       status still says online (the documented contract: camera status is meaningful only
       while `{prefix}/status` is online).
    3. A new daemon starts: with its first connection, before its model is even loaded, it
       says `a` is offline; `a` goes online again once its frames flow."""
    prefix = "itestcrashstatus"
    cfg = base_config(model_path, mosquitto.port, free_port(), prefix, file_cameras(samples_dir, "a"))
    daemon_topic, cam_topic = f"{prefix}/status", f"{prefix}/a/status"
    with Subscriber(mosquitto.host, mosquitto.port, f"{prefix}/#") as sub:
        with DaemonProcess(cfg, tmp_path) as first:
            sub.wait_for(lambda m: m.topic == cam_topic and m.payload == b"online", timeout=90)
            assert first.proc is not None
            os.kill(first.proc.pid, signal.SIGKILL)
            first.proc.wait(5)
            sub.wait_for(lambda m: m.topic == daemon_topic and m.payload == b"offline", timeout=60)
        with Subscriber(mosquitto.host, mosquitto.port, cam_topic) as late:
            late.wait_for(lambda m: m.retain, timeout=10)
            assert [m.payload for m in late.messages] == [b"online"]  # stale, as documented
        sub.clear()
        with DaemonProcess(cfg, tmp_path) as second:
            sub.wait_for(lambda m: m.topic == cam_topic and m.payload == b"online", timeout=90)
            statuses = [(m.topic, m.payload) for m in sub.messages if m.topic in (daemon_topic, cam_topic)]
            expected = [(daemon_topic, b"online"), (cam_topic, b"offline"), (cam_topic, b"online")]
            assert statuses[:3] == expected
            assert "ready:" in second.log
            assert second.terminate()[0] == 0
