"""The whole daemon under the faults of issue 18 ("No alert lost, none invented"), with real parts:
RTSP cameras, Mosquitto, the model, SQLite on a real filesystem (a small tmpfs for a full disk).

Every test drives the crowd clip with a line across the plaza and a line rule (events start,
update and end all the time), injects one fault, and judges what a subscriber received by event
id (`audit`): nothing lost (every event the daemon wrote or started arrives, and ends), nothing
invented (no update or end without its start, no second start or end), nothing out of order (per
id: start, updates, end). Re-sends of the very same message are at-least-once delivery, counted
apart. Each test prints its figures and, with VISTREAM_FAULTS_JSON=FILE, appends them to FILE as
one JSON line (benchmarks/faults.py collects them).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import missing
from support.daemon import DaemonProcess
from support.mosquitto import Message, Mosquitto, Subscriber
from support.rtsp_server import RtspServer
from support.waiting import wait_until

from integration.test_alerts import alert_config, crowd_camera, read_outbox

pytestmark = pytest.mark.integration

FIGURES_ENV = "VISTREAM_FAULTS_JSON"  # a file each test appends its figures to, one JSON line
KILLS_ENV = "VISTREAM_FAULTS_KILLS"  # SIGKILLs in the kill test (benchmarks/faults.py: 20)
OUTAGE_S = 60.0
# Each cycle boots the daemon (the model) again: about 9 s a cycle on 2 cores. The suite runs 8
# cycles (different seeds each) to stay well under its 20 minutes; benchmarks/faults.py runs 20.
KILLS = 8
RULES = [{"name": "crossing", "line": "midline", "end_after_s": 1.0, "cooldown_s": 0}]
COUNTERS = ("counter/crowd/midline/in", "counter/crowd/midline/out")


# -- judging what arrived ----------------------------------------------------------------------------


@dataclass
class Audit:
    """What a subscriber's messages on an events topic say, event by event (first arrivals)."""

    kinds: dict[str, list[str]] = field(default_factory=dict)  # id -> types in order of first arrival
    first_at: dict[tuple[str, str], float] = field(default_factory=dict)  # (id, type) -> first arrival
    invented: set[str] = field(default_factory=set)  # update/end without a start, a 2nd start or end
    out_of_order: set[str] = field(default_factory=set)  # a start after an update or end, ...
    resent: int = 0  # the same message again (at least once)

    def started(self) -> set[str]:
        return {i for i, k in self.kinds.items() if "start" in k}

    def ended(self) -> set[str]:
        return {i for i, k in self.kinds.items() if "end" in k}

    def arrived(self) -> set[tuple[str, str]]:
        return set(self.first_at)

    def explain(self) -> str:
        """The wrong events and what arrived of them, for an assertion's message."""
        wrong = sorted(self.invented | self.out_of_order)
        return f"invented {len(self.invented)}, out of order {len(self.out_of_order)}: " + ", ".join(
            f"{i}: {self.kinds[i]}" for i in wrong[:10]
        )


def audit(messages: Sequence[Message], topic: str) -> Audit:
    """Judge the events on `topic`; `messages` in arrival order (several subscribers' merged by time)."""
    out = Audit()
    seen: set[bytes] = set()
    for m in messages:
        if m.topic != topic:
            continue
        if m.payload in seen:
            out.resent += 1
            continue
        seen.add(m.payload)
        doc = m.json()
        out.kinds.setdefault(doc["id"], []).append(doc["type"])
        out.first_at.setdefault((doc["id"], doc["type"]), m.timestamp)
    for event_id, kinds in out.kinds.items():
        if "start" not in kinds or kinds.count("start") > 1 or kinds.count("end") > 1:
            out.invented.add(event_id)
        elif kinds[0] != "start" or ("end" in kinds and kinds[-1] != "end"):
            out.out_of_order.add(event_id)
    return out


def merged(*subs: Subscriber) -> list[Message]:
    return sorted((m for s in subs for m in s.messages), key=lambda m: m.timestamp)


def live_values(sub: Subscriber, topic: str) -> list[int]:
    """A counter's values as published while `sub` listened (not the broker's replays)."""
    return [int(m.payload) for m in sub.messages if m.topic == topic and not m.retain]


def fell_back(values: Sequence[int]) -> int:
    """How many times a counter's published values went down."""
    return sum(b < a for a, b in itertools.pairwise(values))


def open_ids(state: dict[str, str]) -> set[str]:
    return {key.removeprefix("open/") for key in state if key.startswith("open/")}


def settle(subs: Callable[[], list[Message]], topic: str, db: Path, prefix: str, timeout: float) -> Audit:
    """Wait until every event that started has ended on the wire, or is still open in the daemon's
    state, and nothing is left in the outbox for `topic`; the audit then (or at the timeout)."""

    def done() -> bool:
        rows, state = read_outbox(db, prefix)
        a = audit(subs(), topic)
        return not rows and a.started() - a.ended() <= open_ids(state)

    with contextlib.suppress(AssertionError):
        wait_until(done, timeout, "every started event to end or stay open", every=0.5)
    return audit(subs(), topic)


def restart_ended(messages: Sequence[Message], topic: str) -> set[str]:
    """Ids of the events ended because a restart found them open."""
    docs = (m.json() for m in messages if m.topic == topic)
    return {d["id"] for d in docs if d["type"] == "end" and d.get("reason") == "restart"}


def unended(a: Audit, db: Path, prefix: str) -> set[str]:
    """Events that started on the wire, are no longer open in the daemon, and never ended on the wire."""
    _, state = read_outbox(db, prefix)
    return a.started() - a.ended() - open_ids(state)


_began: list[float] = [0.0]  # when the running test began (the `_timed` fixture)


@pytest.fixture(autouse=True)
def _timed() -> None:
    _began[0] = time.monotonic()


def record(name: str, figures: dict[str, Any]) -> None:
    """Print a scenario's figures and the test's runtime so far; append them to
    $VISTREAM_FAULTS_JSON as one line when set."""
    figures = figures | {"test_s": round(time.monotonic() - _began[0], 1)}
    print(f"\n{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"scenario": name} | figures) + "\n")


# -- the daemon from outside -------------------------------------------------------------------------


def healthz(daemon: DaemonProcess) -> tuple[int, str]:
    """(status, body) of /healthz; (0, why) when nothing answers."""
    url = f"http://127.0.0.1:{daemon.metrics_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, resp.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode().strip()
    except OSError as exc:
        return 0, str(exc)


def wait_healthy(daemon: DaemonProcess, timeout: float = 120.0) -> float:
    """Seconds until /healthz says 200 (the model loaded, results flowing, the outbox writable)."""
    t0 = time.monotonic()

    def healthy() -> bool:
        assert daemon.proc is not None and daemon.proc.poll() is None, f"daemon exited: {daemon.log[-3000:]}"
        return healthz(daemon)[0] == 200

    wait_until(healthy, timeout, "/healthz 200", every=0.2)
    return time.monotonic() - t0


def config(model: Path, port: int, prefix: str, state_dir: Path, rtsp: RtspServer) -> dict:
    return alert_config(model, port, prefix, state_dir, [crowd_camera(rtsp)], RULES)


# -- 1. broker outage, and a broker that lost its persistence ----------------------------------------


def test_broker_outage_then_a_broker_without_persistence(
    tmp_path: Path, rtsp_server: RtspServer, make_mosquitto: Callable[..., Mosquitto], model_path: Path
) -> None:
    """1. A daemon counts crossings of the crowd line (a line rule); a subscriber listens.
    2. The broker stops for 60 s while events go on; they wait in the outbox (read meanwhile).
    3. The broker comes back without persistence: no retained message, no session survived.
    4. The daemon reconnects (goal <= 5 s) and delivers every pending event (goal <= 5 s); every
       event id arrives, none updated or ended before it started, none invented.
    5. Right afterwards a new subscriber gets the retained counters, equal to the daemon's stored
       state, and the rule's retained `active`; no subscriber saw a counter fall back."""
    prefix = "ifault-outage"
    broker = make_mosquitto()  # persistence off: a restart forgets retained messages and sessions
    state_dir = tmp_path / "state"
    db = state_dir / "outbox.sqlite3"
    topic = f"{prefix}/events"
    counters = [f"{prefix}/crowd/midline/{d}/count" for d in ("in", "out")]
    with (
        Subscriber(broker.host, broker.port, f"{prefix}/#") as before,
        DaemonProcess(config(model_path, broker.port, prefix, state_dir, rtsp_server), tmp_path) as daemon,
    ):
        wait_until(lambda: len(audit(before.messages, topic).started()) >= 2, 120, "the first events")
        broker.stop()
        down_at = time.monotonic()
        written: set[tuple[str, str]] = set()
        depth = 0
        while time.monotonic() - down_at < OUTAGE_S:
            rows, _ = read_outbox(db, prefix)
            depth = max(depth, len(rows))
            written.update((event_id, kind) for _, event_id, kind in rows)
            time.sleep(0.5)
        rows, state_at_return = read_outbox(db, prefix)
        pending = {(event_id, kind) for _, event_id, kind in rows}
        written |= pending
        broker.start()
        back_at = time.monotonic()
        with Subscriber(broker.host, broker.port, f"{prefix}/#") as after:
            online = after.wait_for(lambda m: m.topic == f"{prefix}/status" and m.payload == b"online", 30)
            reconnect_s = online.timestamp - back_at
            everything = lambda: merged(before, after)  # noqa: E731
            with contextlib.suppress(AssertionError):
                wait_until(lambda: pending <= audit(everything(), topic).arrived(), 60, "the pending events")
            first_at = audit(everything(), topic).first_at
            drain_s = max((first_at[k] for k in pending if k in first_at), default=back_at) - back_at

            def retained_equals_state() -> bool:
                with Subscriber(broker.host, broker.port, f"{prefix}/crowd/#") as fresh:
                    time.sleep(0.5)  # the broker's retained replays
                    got = {m.topic: m.payload for m in fresh.messages if m.retain}
                _, state = read_outbox(db, prefix)
                active = got.get(f"{prefix}/crowd/crossing/active")
                same = all(
                    got.get(t, b"").decode() == state.get(k) for t, k in zip(counters, COUNTERS, strict=True)
                )
                return same and active in (b"ON", b"OFF")

            retained_ok = _try(lambda: wait_until(retained_equals_state, 20, "retained state", every=0.5))
            result = settle(everything, topic, db, prefix, 30)
            lost = (written - result.arrived()) | {(i, "end") for i in unended(result, db, prefix)}
            resent = audit(after.messages, topic).resent  # merged, both subscribers' copies would count
            back = {t: fell_back(live_values(s, t)) for t in counters for s in (before, after)}
            restored = all(
                min(live_values(after, t), default=10**9) >= int(state_at_return.get(k, 0))
                for t, k in zip(counters, COUNTERS, strict=True)
            )
            exit_code = daemon.terminate()[0]
    figures = {
        "outage_s": OUTAGE_S,
        "outbox_depth_max": depth,
        "pending_at_return": len(pending),
        "reconnect_s": round(reconnect_s, 2),
        "drain_s": round(drain_s, 2),
        "events": len(result.kinds),
        "lost": len(lost),
        "invented": len(result.invented),
        "out_of_order": len(result.out_of_order),
        "resent": resent,
        "online_was_retained": online.retain,
        "counter_fell_back": sum(back.values()),
        "retained_equals_state": retained_ok,
    }
    record("broker_outage", figures)
    assert depth > 0, "no event was produced during the outage"
    assert not lost, f"lost: {sorted(lost)[:10]}"
    assert not result.invented and not result.out_of_order, result.explain()
    assert not sum(back.values()) and restored, f"a counter fell back: {back}"
    assert retained_ok, "the retained counters and active flag were not restored as stored"
    assert exit_code == 0


def _try(action: Callable[[], object]) -> bool:
    try:
        action()
    except AssertionError:
        return False
    return True


# -- 2. state_dir full, read-only, locked ------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `path` (as root); unmounted afterwards, lazily if still busy."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode:
        missing(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def disk_full(state_dir: Path) -> Iterator[None]:
    """Another file takes every free byte of the filesystem; removed at the end."""
    filler = state_dir / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for chunk in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * chunk):
                    pass
    finally:
        os.close(fd)
    try:
        yield
    finally:
        filler.unlink()


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Another process's connection holds the write lock (BEGIN IMMEDIATE) on the outbox."""
    conn = sqlite3.connect(state_dir / "outbox.sqlite3", timeout=30, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


# The fault, how long it lasts, on a 1 MiB tmpfs (the outbox keeps its WAL at 256 KiB: with SQLite's
# default of 4 MiB it filled such a disk by itself, test_state_dir_of_1_mib_keeps_working).
# Read-only is a test of its own: Linux refuses (EBUSY) to remount a filesystem read-only while a
# file on it is open for writing, as the outbox is.
FAULTS: dict[str, tuple[Callable[[Path], contextlib.AbstractContextManager[None]], float]] = {
    "disk_full": (disk_full, 20.0),
    "locked": (locked, 10.0),
}
TMPFS_SIZE = "1m"


@pytest.mark.parametrize("fault", list(FAULTS))
def test_state_dir_full_read_only_or_locked(
    fault: str, tmp_path: Path, rtsp_server: RtspServer, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. A daemon with its state_dir on a 1 MiB tmpfs counts crossings of the crowd line.
    2. The fault, for 20 s (the lock 10 s): another file fills the filesystem; or another process
       holds the outbox's write lock (BEGIN IMMEDIATE).
    3. Meanwhile the daemon lives, /healthz says why it is degraded (503 and the reason; a lock
       no longer than SQLite's busy timeout may only delay writes), detections keep flowing.
    4. The fault ends: /healthz is 200 again; every event goes out, each id in order (start <
       update* < end), nothing invented; at-least-once re-sends of a message are counted apart."""
    inject, hold_s = FAULTS[fault]
    prefix = f"ifault-{fault.replace('_', '-')}"
    topic = f"{prefix}/events"
    with small_tmpfs(tmp_path / "state", TMPFS_SIZE) as state_dir:
        db = state_dir / "outbox.sqlite3"
        cfg = config(model_path, mosquitto.port, prefix, state_dir, rtsp_server)
        with (
            Subscriber(mosquitto.host, mosquitto.port, f"{prefix}/#") as sub,
            DaemonProcess(cfg, tmp_path) as daemon,
        ):
            wait_healthy(daemon)
            wait_until(lambda: audit(sub.messages, topic).started(), 120, "the first event")
            reasons: list[str] = []
            degraded_after: float | None = None
            written: set[tuple[str, str]] = set()
            with inject(state_dir):
                t0 = time.monotonic()
                seen_before = len(sub.messages)
                while time.monotonic() - t0 < hold_s:
                    status, body = healthz(daemon)
                    if status != 200:
                        degraded_after = degraded_after or time.monotonic() - t0
                        if body not in reasons:
                            reasons.append(body)
                    rows, _ = read_outbox(db, prefix)
                    written.update((event_id, kind) for _, event_id, kind in rows)
                    time.sleep(0.5)
                during = sub.messages[seen_before:]
                detections = sum(m.topic == f"{prefix}/crowd/detections" for m in during)
                alive = daemon.proc is not None and daemon.proc.poll() is None
            cleared_at = time.monotonic()
            recover_s = wait_healthy(daemon, 60)
            result = settle(lambda: sub.messages, topic, db, prefix, 30)
            rows, _ = read_outbox(db, prefix)
            written.update((event_id, kind) for _, event_id, kind in rows)
            lost = (written - result.arrived()) | {(i, "end") for i in unended(result, db, prefix)}
            failures = daemon.metric("vistream_outbox_write_failures_total")
            exit_code = daemon.terminate()[0]
    figures = {
        "fault": fault,
        "fault_s": hold_s,
        "tmpfs": TMPFS_SIZE,
        "degraded_after_s": None if degraded_after is None else round(degraded_after, 1),
        "healthz_reasons": reasons,
        "detections_during_fault": detections,
        "healthy_again_s": round(recover_s, 1),
        "outbox_write_failures": failures,
        "events": len(result.kinds),
        "lost": len(lost),
        "invented": len(result.invented),
        "out_of_order": len(result.out_of_order),
        "resent": result.resent,
        "settled_after_clear_s": round(time.monotonic() - cleared_at, 1),
    }
    record(f"state_dir_{fault}", figures)
    assert alive, "the daemon died during the fault"
    assert detections > 0, "no detections during the fault"
    if fault != "locked":  # a lock of 10 s is within SQLite's busy timeout: writes may only wait
        assert any("outbox" in r for r in reasons), f"/healthz never said why: {reasons}"
    assert not lost, f"lost: {sorted(lost)[:10]}"
    assert not result.invented and not result.out_of_order, result.explain()
    assert exit_code == 0


def test_state_dir_read_only_at_start(
    tmp_path: Path, rtsp_server: RtspServer, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. A daemon with its state_dir on a tmpfs counts crossings of the crowd line, and is killed
       (SIGKILL) with an event open (a stop with SIGTERM ends its events itself).
    2. The filesystem is remounted read-only (the running daemon's open outbox would make Linux
       refuse that) and the daemon started again: it waits for its outbox, alive, not starting
       empty beside it.
    3. After 10 s the filesystem is writable again: the daemon opens the outbox, becomes healthy,
       ends the event the first run left open (reason `restart`); every event arrives, in order,
       nothing invented."""
    prefix = "ifault-read-only"
    topic = f"{prefix}/events"
    with small_tmpfs(tmp_path / "state", TMPFS_SIZE) as state_dir:
        db = state_dir / "outbox.sqlite3"
        cfg = config(model_path, mosquitto.port, prefix, state_dir, rtsp_server)
        (tmp_path / "run1").mkdir()
        (tmp_path / "run2").mkdir()
        with Subscriber(mosquitto.host, mosquitto.port, f"{prefix}/#") as sub:
            with DaemonProcess(cfg, tmp_path / "run1") as first:
                wait_healthy(first)
                wait_until(lambda: open_ids(read_outbox(db, prefix)[1]), 120, "an open event")
                orphans = kill_now(first)
            open_at_kill = open_ids(read_outbox(db, prefix)[1])
            remount = ["mount", "-o", "remount,ro", str(state_dir)]
            if subprocess.run(remount, capture_output=True).returncode:
                raise AssertionError(f"busy: {holders(state_dir)}")
            with contextlib.ExitStack() as stack:
                second = stack.push(DaemonProcess(cfg, tmp_path / "run2"))  # stopped whatever happens
                try:
                    second.start()
                    time.sleep(10)
                    waited = second.proc is not None and second.proc.poll() is None
                    said = "cannot open" in second.log
                finally:
                    subprocess.run(["mount", "-o", "remount,rw", str(state_dir)], check=True)
                rw_at = time.monotonic()
                healthy_s = wait_healthy(second, 60)
                opened_s = time.monotonic() - rw_at
                result = settle(lambda: sub.messages, topic, db, prefix, 30)
                with contextlib.suppress(AssertionError):
                    wait_until(lambda: open_at_kill <= restart_ended(sub.messages, topic), 10, "restart ends")
                lost = unended(result, db, prefix) | (open_at_kill - restart_ended(sub.messages, topic))
                exit_code = second.terminate()[0]
    figures = {
        "read_only_s": 10,
        "waited_alive": waited,
        "logged_why": said,
        "healthy_after_rw_s": round(opened_s, 1),
        "events": len(result.kinds),
        "open_at_kill": len(open_at_kill),
        "lost": len(lost),
        "invented": len(result.invented),
        "out_of_order": len(result.out_of_order),
        "resent": result.resent,
    }
    record("state_dir_read_only_at_start", figures)
    assert open_at_kill and not orphans and waited and said, second.log[-3000:]
    assert not lost, f"never ended: {sorted(lost)[:10]}"
    assert not result.invented and not result.out_of_order, result.explain()
    assert exit_code == 0 and healthy_s < 60


def test_state_dir_of_1_mib_keeps_working(
    tmp_path: Path, rtsp_server: RtspServer, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. A daemon with its state_dir on a 1 MiB tmpfs (nothing else on it) counts crossings.
    2. For 20 s after the first event, the outbox stays writable: /healthz 200 throughout."""
    prefix = "ifault-1mib"
    with small_tmpfs(tmp_path / "state", "1m") as state_dir:
        cfg = config(model_path, mosquitto.port, prefix, state_dir, rtsp_server)
        with (
            Subscriber(mosquitto.host, mosquitto.port, f"{prefix}/#") as sub,
            DaemonProcess(cfg, tmp_path) as daemon,
        ):
            wait_healthy(daemon)
            wait_until(lambda: audit(sub.messages, f"{prefix}/events").started(), 120, "the first event")
            t0 = time.monotonic()
            bad: list[str] = []
            while time.monotonic() - t0 < 20 and not bad:
                status, body = healthz(daemon)
                bad += [body] if status != 200 else []
                time.sleep(0.5)
            sizes = {p.name: p.stat().st_size for p in state_dir.iterdir()}
            daemon.terminate()
    record("state_dir_1_mib", {"degraded": bad[:1], "files": sizes})
    assert not bad, f"/healthz: {bad[0]} (files: {sizes})"


# -- 3. SIGKILL at random moments --------------------------------------------------------------------


def holders(folder: Path) -> list[str]:
    """Processes with a file under `folder` open: `pid cmdline -> path`."""
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            for f in proc.open_files():
                if f.path.startswith(str(folder)):
                    out.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or [])[:80]} -> {f.path}")
    return out


def kill_now(daemon: DaemonProcess) -> int:
    """SIGKILL the daemon; returns how many of its children outlived it by 10 s (they are killed)."""
    assert daemon.proc is not None
    children = psutil.Process(daemon.proc.pid).children(recursive=True)
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(10)
    _, alive = psutil.wait_procs(children, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return len(alive)


def stored_counters(db: Path) -> dict[str, int]:
    """The line counters the database holds; it must open and pass quick_check."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        (check,) = conn.execute("PRAGMA quick_check").fetchone()
        assert check == "ok", f"the outbox is damaged: {check}"
        rows = conn.execute("SELECT key, value FROM state WHERE key LIKE 'counter/%'").fetchall()
    return {k: int(v) for k, v in rows}


@pytest.mark.timeout(480)
def test_sigkill_at_random_moments(
    tmp_path: Path, rtsp_server: RtspServer, mosquitto: Mosquitto, model_path: Path
) -> None:
    """1. A daemon counts crossings of the crowd line; a subscriber listens throughout.
    2. Again and again (8 times here, 20 in benchmarks/faults.py: $VISTREAM_FAULTS_KILLS): it is
       SIGKILLed 1-6 s (random, seeded per cycle) after /healthz said 200, and started again on
       the same state_dir.
    3. After each kill the database opens and passes quick_check, and its counters are not below
       those after the previous kill; every restart becomes healthy (it opens the outbox).
    4. A last run ends what was left open (reason `restart`): every event started in the killed
       runs has ended on the wire; nothing was invented or out of order; counters never fell back."""
    kills = int(os.environ.get(KILLS_ENV, KILLS))
    prefix = "ifault-kill"
    topic = f"{prefix}/events"
    state_dir = tmp_path / "state"
    db = state_dir / "outbox.sqlite3"
    cfg = config(model_path, mosquitto.port, prefix, state_dir, rtsp_server)
    counters = [f"{prefix}/crowd/midline/{d}/count" for d in ("in", "out")]
    boots: list[float] = []
    orphans = counters_back = 0
    # A persistent session: should the subscriber itself lose its connection, it misses nothing.
    with Subscriber(
        mosquitto.host, mosquitto.port, f"{prefix}/#", client_id=f"{prefix}-sub", clean_session=False
    ) as sub:
        previous: dict[str, int] = {}
        for cycle in range(kills):
            delay = random.Random(cycle).uniform(1.0, 6.0)
            run = tmp_path / f"run{cycle}"
            run.mkdir()
            with DaemonProcess(cfg, run) as daemon:
                boots.append(wait_healthy(daemon))
                time.sleep(delay)
                orphans += kill_now(daemon)
            now = stored_counters(db)
            counters_back += sum(now.get(k, 0) < v for k, v in previous.items())
            previous = now
        # Everything the killed runs started, on the wire, queued or open, must end now.
        rows, state = read_outbox(db, prefix)
        owed = audit(sub.messages, topic).started() | open_ids(state)
        owed |= {event_id for _, event_id, kind in rows if kind == "start"}
        final = tmp_path / "final"
        final.mkdir()
        with DaemonProcess(cfg, final) as daemon:
            wait_healthy(daemon)
            with contextlib.suppress(AssertionError):
                wait_until(lambda: owed <= audit(sub.messages, topic).ended(), 60, "the owed ends")
            result = audit(sub.messages, topic)
            exit_code = daemon.terminate()[0]
        subscriber_dropped = sub._offline.is_set()  # the broker lost the subscriber at some point
    never_ended = owed - result.ended()
    restart_ends = sum(
        1 for m in sub.messages if m.topic == topic and b'"reason":"restart"' in m.payload and not m.retain
    )
    back = sum(fell_back(live_values(sub, t)) for t in counters)
    figures = {
        "kills": kills,
        "boot_to_healthy_s_max": round(max(boots), 1),
        "boot_to_healthy_s_mean": round(sum(boots) / len(boots), 1),
        "events": len(result.kinds),
        "lost": len(never_ended),
        "invented": len(result.invented),
        "out_of_order": len(result.out_of_order),
        "resent": result.resent,
        "restart_ends": restart_ends,
        "stored_counter_went_back": counters_back,
        "published_counter_fell_back": back,
        "children_outliving_the_kill": orphans,
        "subscriber_dropped": subscriber_dropped,
    }
    record("sigkill", figures)
    wrong = result.invented | result.out_of_order
    (tmp_path / "wrong-events.jsonl").write_text(
        "".join(
            f"{m.timestamp:.3f} {m.payload.decode()}\n"
            for m in sub.messages
            if m.topic == topic and m.json()["id"] in wrong
        )
    )
    assert not never_ended, f"{len(never_ended)} event(s) never ended: {sorted(never_ended)[:10]}"
    assert not result.invented and not result.out_of_order, result.explain()
    assert not counters_back and not back, "a counter went back"
    assert exit_code == 0
