"""Alerts, measured: events per minute on the sample clips, the daemon's outbox across a broker outage,
what tracking and rules cost per camera, and what alerts cost the 4-camera pipeline.

    .venv/bin/python benchmarks/alerts.py live [--seconds 120] [--warmup 10] [--outage 20]
    .venv/bin/python benchmarks/alerts.py engine [--fps 15] [--passes 6]
    .venv/bin/python benchmarks/alerts.py compare --off OFF.json ... --on ON.json ...

`live`: the real daemon on both sample clips, served over RTSP by the test server (looped), with the
zones, line and three rules of samples/config.yaml at its `detect_fps` and `model.conf`. A subscriber
counts start/update/end events per camera and rule, and line crossings, over `--seconds`. Then the
broker is stopped for `--outage` seconds while the daemon goes on producing events: the outbox depth
is read from its SQLite file, and after the restart the times to the daemon's reconnect, to the broker
acknowledging the whole backlog, and to the subscriber receiving its last event. -> alerts-live.json

`engine`: YOLOv8n on every frame the daemon would sample at `--fps` (each clip decoded and letterboxed
the daemon's way; detections cached in the temp directory), then `EventEngine.process` alone, timed
per frame over `--passes` loops of the clip, the first one a warm-up. -> alerts-engine.json

`compare`: pipeline.py results with and without `--alerts`: inferred frames/s, medians and spread.
-> alerts-pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

# benchmarks/pipeline.py: shared figures and harness; importing it puts tests/ on sys.path for `support`.
from pipeline import (
    CLIPS,
    MODEL,
    PREFIX,
    REPO,
    SAMPLE_CONFIG,
    check_alive,
    check_prerequisites,
    machine_info,
    stop_if_running,
    wait_ready,
    with_alerts,
)
from support.daemon import DaemonProcess, base_config
from support.mosquitto import Message, Mosquitto, Subscriber
from support.procs import free_port
from support.rtsp_server import RtspServer

RESULTS = REPO / "benchmarks" / "results"
QUIET_OTHERS_PCT = 10  # compare: runs with more CPU taken by others than this are not quiet
OUTBOX_FILE = "outbox.sqlite3"  # vistream.outputs.outbox.FILENAME, without importing the daemon here


# --- live: events per minute and the outage ----------------------------------------------------


def run_live(args: argparse.Namespace) -> dict[str, Any]:
    check_prerequisites(set(CLIPS.values()), harness=True)
    sample = yaml.safe_load(SAMPLE_CONFIG.read_text())
    fps = {c["name"]: c["detect_fps"] for c in sample["cameras"]}
    result: dict[str, Any] = {"mode": "live", "machine": machine_info(), "load_start": os.getloadavg()}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vistream-alerts-")))
        broker = stack.enter_context(Mosquitto(persistent=True))
        rtsp = stack.enter_context(RtspServer({name: CLIPS[name] for name in fps}))
        cams = [{"name": name, "url": rtsp.url(name), "detect_fps": f} for name, f in fps.items()]
        config = with_alerts(base_config(MODEL, broker.port, free_port(), PREFIX, cams), tmp / "state")
        config["model"]["conf"] = sample["model"]["conf"]
        del config["batching"]  # the sample config has none: the defaults
        result["config"] = config
        # A persistent session on a broker that keeps it: nothing queued for us is lost in the outage.
        sub = Subscriber(
            broker.host, broker.port, f"{PREFIX}/#", client_id="vsbench-alerts", clean_session=False
        )
        stack.enter_context(sub)
        t_start = time.monotonic()
        daemon = stack.enter_context(DaemonProcess(config, tmp))
        stack.callback(stop_if_running, daemon)
        wait_ready(sub, daemon, list(fps))
        result["ready_after_s"] = time.monotonic() - t_start
        print(f"ready after {result['ready_after_s']:.1f} s; warming up {args.warmup} s ...")
        time.sleep(args.warmup)
        print(f"counting events for {args.seconds} s ...")
        t0 = time.monotonic()
        time.sleep(args.seconds)
        t1 = time.monotonic()
        check_alive(daemon)
        cpu = psutil.cpu_times()
        result["window_s"] = t1 - t0
        result["events"] = event_figures(sub.messages, (t0, t1))
        if args.outage > 0:
            result["outage"] = outage(broker, daemon, sub, tmp / "state" / OUTBOX_FILE, args.outage)
        code, took = daemon.terminate()
        result["stop"] = {"exit_code": code, "seconds": took}
        result["machine_steal_s"] = psutil.cpu_times().steal - cpu.steal  # from the window's end to the stop
    result["load_end"] = os.getloadavg()
    return result


def event_figures(messages: list[Message], window: tuple[float, float]) -> dict[str, Any]:
    """Events (first arrivals) per camera and rule and type, and line crossings, in the window."""
    t0, t1 = window
    minutes = (t1 - t0) / 60
    seen: set[bytes] = set()
    counts: Counter[tuple[str, str, str]] = Counter()
    durations: dict[str, list[float]] = defaultdict(list)
    counters: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for m in messages:
        if m.topic.endswith("/count"):
            counters[m.topic.removeprefix(f"{PREFIX}/")].append((m.timestamp, int(m.payload)))
        if m.topic != f"{PREFIX}/events" or not t0 <= m.timestamp < t1 or m.payload in seen:
            continue
        seen.add(m.payload)  # delivery is at least once: a repeat is the same payload
        ev = m.json()
        counts[(ev["camera"], ev["rule"], ev["type"])] += 1
        if ev["type"] == "end":
            durations[f"{ev['camera']}/{ev['rule']}"].append(ev["ended_at"] - ev["started_at"])
    rules: dict[str, Any] = {}
    for (camera, rule, kind), n in sorted(counts.items()):
        r = rules.setdefault(f"{camera}/{rule}", {"counts": {}, "per_minute": {}})
        r["counts"][kind] = n
        r["per_minute"][kind] = n / minutes
    for key, ds in durations.items():
        rules[key]["duration_s_median"] = statistics.median(ds)
        rules[key]["duration_s_max"] = max(ds)

    def value_at(points: list[tuple[float, int]], t: float) -> int:
        before = [v for ts, v in points if ts < t]
        return before[-1] if before else 0

    crossings = {
        topic.removesuffix("/count"): {
            "crossings": (n := value_at(points, t1) - value_at(points, t0)),
            "per_minute": n / minutes,
        }
        for topic, points in sorted(counters.items())
    }
    return {"window_min": minutes, "rules": rules, "lines": crossings}


def outbox_rows(db: Path) -> list[tuple[int, str, str, str, bytes]]:
    """(row id, camera, topic, kind, payload) of every pending row, read as another process would."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT id, camera, topic, kind, payload FROM outbox ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []


def event_messages(rows: list[tuple[int, str, str, str, bytes]]) -> dict[bytes, str]:
    """Event messages among outbox rows (payload -> camera): each event message is queued on two
    topics, `{prefix}/events` counted. A payload is unique (id, type, time, box): it identifies one
    start, update or end."""
    return {bytes(payload): cam for _, cam, topic, _, payload in rows if topic == f"{PREFIX}/events"}


def outage(
    broker: Mosquitto, daemon: DaemonProcess, sub: Subscriber, db: Path, seconds: float
) -> dict[str, Any]:
    """Stop the broker for `seconds` while events are produced; depth of the outbox, then the drain.

    After the restart: when the subscriber is back (its own backoff: 1-2 s), when the daemon's first
    message after the restart reaches it (paho's backoff), when the broker has acknowledged every row
    of the backlog (gone from the outbox; polled), and when the last event message of the backlog
    reaches the subscriber. Receive times are the subscriber's, exact; the polled ones are not.
    """
    print(f"broker stopped for {seconds} s ...")
    out: dict[str, Any] = {"outage_s": seconds, "max_depth_rows": 0, "max_depth_event_messages": 0}
    written: dict[bytes, str] = {}
    broker.stop()
    t_stop = time.monotonic()
    while time.monotonic() - t_stop < seconds:
        rows = outbox_rows(db)
        events = event_messages(rows)
        written |= events
        if len(rows) > out["max_depth_rows"]:
            out["max_depth_rows"] = len(rows)
            out["at_max_depth_rows_by_kind"] = dict(Counter(kind for _, _, _, kind, _ in rows))
        if len(events) > out["max_depth_event_messages"]:
            out["max_depth_event_messages"] = len(events)
            out["at_max_depth_event_messages_by_camera"] = dict(Counter(events.values()))
            out["at_max_depth_events"] = len({json.loads(p)["id"] for p in events})
        time.sleep(0.25)
    out["pending_metric_before_restart"] = daemon.metric("vistream_outbox_pending")
    broker.start()
    t_restart = time.monotonic()
    backlog_rows = outbox_rows(db)
    backlog_ids = {row[0] for row in backlog_rows}
    backlog = event_messages(backlog_rows)
    written |= backlog
    out["backlog_at_restart_rows"] = len(backlog_rows)
    out["backlog_at_restart_event_messages"] = len(backlog)
    print(f"broker restarted; backlog {len(backlog)} event messages ({len(backlog_rows)} rows); draining ...")
    sub.wait_subscribed(30)
    t_subscribed = time.monotonic()
    t_connected = t_acked = None
    deadline = t_restart + 120
    while time.monotonic() < deadline:
        now = time.monotonic()
        if t_connected is None and daemon.metric("vistream_mqtt_connected") == 1:
            t_connected = now
        if t_acked is None and not backlog_ids & {row[0] for row in outbox_rows(db)}:
            t_acked = now
        arrived = {m.payload for m in sub.messages if m.topic == f"{PREFIX}/events"}
        if t_connected is not None and t_acked is not None and backlog.keys() <= arrived:
            break
        time.sleep(0.1)
    messages = sub.messages
    first_seen: dict[bytes, float] = {}
    for m in messages:
        if m.topic == f"{PREFIX}/events":
            first_seen.setdefault(m.payload, m.timestamp)
    # The daemon is back when its `online` (published on connect) or the first row of its backlog
    # arrives. Not just any message: the subscriber's own session holds a few from before the outage.
    online = [
        m.timestamp
        for m in messages
        if m.topic == f"{PREFIX}/status"
        and m.payload == b"online"
        and not m.retain
        and m.timestamp > t_restart
    ]
    back = online + [first_seen[p] for p in backlog if p in first_seen]
    t_back = min(back) if back else None
    missing = written.keys() - first_seen.keys()
    t_last = (
        max(first_seen[p] for p in backlog) if backlog and not backlog.keys() - first_seen.keys() else None
    )

    def since(t: float | None, origin: float | None) -> float | None:
        return None if t is None or origin is None else round(t - origin, 3)

    out |= {
        "event_messages_written_during_outage": len(written),
        "missing": len(missing),
        "duplicates": sum(m.topic == f"{PREFIX}/events" for m in messages) - len(first_seen),
        "restart_to_subscriber_back_s": since(t_subscribed, t_restart),
        "restart_to_daemon_back_s": since(t_back, t_restart),
        # When the daemon is back before the subscriber, its messages wait in the subscriber's session.
        "daemon_back_after_subscriber": t_back is not None and t_back > t_subscribed,
        "restart_to_last_backlog_received_s": since(t_last, t_restart),
        "daemon_back_to_last_backlog_received_s": since(t_last, t_back),
        "restart_to_connected_metric_s": since(t_connected, t_restart),  # polled, about 0.1-0.3 s
        "restart_to_backlog_acked_s": since(t_acked, t_restart),  # polled, about 0.1-0.3 s
    }
    return out


def print_live(r: dict[str, Any]) -> None:
    ev = r["events"]
    print(f"\n== events on the sample clips, {ev['window_min']:.2f} min window ==")
    print(
        f"{'camera/rule':<28}{'start/min':>10}{'update/min':>11}{'end/min':>9}{'starts':>8}{'dur. med s':>11}"
    )
    for key, rule in ev["rules"].items():
        pm, n = rule["per_minute"], rule["counts"]
        dur = rule.get("duration_s_median")
        print(
            f"{key:<28}{pm.get('start', 0):>10.1f}{pm.get('update', 0):>11.1f}{pm.get('end', 0):>9.1f}"
            f"{n.get('start', 0):>8}{'-' if dur is None else f'{dur:.1f}':>11}"
        )
    for key, line in ev["lines"].items():
        print(f"line {key}: {line['crossings']} crossings, {line['per_minute']:.1f}/min")
    if "outage" in r:
        print("\n== broker outage ==")
        for k, v in r["outage"].items():
            print(f"{k:>36}: {v}")


# --- engine: tracking and rules alone --------------------------------------------------------


def detections_of(clip: Path, fps: float, conf: float) -> dict[str, Any]:
    """YOLOv8n on the frames the daemon samples at `fps` (its letterbox and box mapping); cached."""
    cache = (
        Path(tempfile.gettempdir())
        / "vistream-bench"
        / f"detections-{clip.stem}-{fps:g}fps-conf{conf:g}.json"
    )
    if cache.is_file():
        return json.loads(cache.read_text())
    import av

    from vistream.config.models import ModelConfig
    from vistream.detector import load_detector
    from vistream.sources.letterbox import boxes_to_camera, letterbox
    from vistream.sources.timing import Throttle

    detector = load_detector(ModelConfig(path=str(MODEL), device="cpu", imgsz=640, conf=conf), 1)
    _, h, w, _ = detector.input_buffer.shape
    img = detector.input_buffer[0]
    throttle = Throttle(fps)
    frames = []
    t_model = time.monotonic()
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        duration = float(stream.duration * stream.time_base)
        for frame in container.decode(stream):
            if not throttle.keep(float(frame.time)):
                continue
            box = letterbox(frame.width, frame.height, w, h)
            box.inner(img)[...] = frame.reformat(
                width=box.new_w, height=box.new_h, format="rgb24"
            ).to_ndarray()
            box.fill_padding(img)
            found = detector.infer(1)[0]
            cam = boxes_to_camera(found, box.scale, box.left, box.top, frame.width, frame.height)
            dets = [[int(r[5]), float(r[4]), *map(float, b)] for r, b in zip(found, cam, strict=True)]
            frames.append({"t": float(frame.time), "detections": dets})
            width, height = frame.width, frame.height
    data = {
        "clip": clip.name,
        "fps": fps,
        "conf": conf,
        "duration_s": duration,
        "width": width,
        "height": height,
        "names": {str(k): v for k, v in detector.names.items()},
        "model_s": time.monotonic() - t_model,
        "frames": frames,
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(data))
    return data


def time_engine(name: str, data: dict[str, Any], passes: int) -> dict[str, Any]:
    """`EventEngine.process` per frame over `passes` loops of the clip; the tracker's share timed apart."""
    from vistream.config.loader import validate_config
    from vistream.events import tracking
    from vistream.events.engine import EventEngine
    from vistream.scheduler.messages import FrameResult

    fps = data["fps"]
    cams = [{"name": name, "url": "rtsp://127.0.0.1/unused", "detect_fps": fps}]
    with tempfile.TemporaryDirectory() as tmp:
        raw = with_alerts(base_config(MODEL, 1883, 9108, PREFIX, cams), Path(tmp))
    shapes = {*raw["cameras"][0].get("zones", {}), *raw["cameras"][0].get("lines", {})}
    raw["alerts"] = [r for r in raw["alerts"] if (r.get("zone") or r.get("line")) in shapes]
    cfg = validate_config(raw)
    engine = EventEngine(cfg, {int(k): v for k, v in data["names"].items()})

    tracker_s: list[float] = []
    update = tracking.CameraTracker.update

    def timed_update(self: Any, *a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return update(self, *a, **kw)
        finally:
            tracker_s.append(time.perf_counter() - t)

    tracking.CameraTracker.update = timed_update  # type: ignore[method-assign]
    per_pass = []
    wall0, mono0 = time.time(), time.monotonic()
    seq = 0
    try:
        for p in range(passes):
            tracker_s.clear()
            times, events, objects = [], Counter[str](), 0
            me, machine = psutil.Process(), psutil.cpu_times()
            cpu0 = me.cpu_times()
            t_pass = time.perf_counter()
            for f in data["frames"]:
                offset = p * data["duration_s"] + f["t"]  # the clip loops, as the RTSP test server does
                dets = [tuple(d) for d in f["detections"]]
                frame = FrameResult(
                    name, seq, wall0 + offset, mono0 + offset, data["width"], data["height"], dets
                )
                seq += 1
                t = time.perf_counter()
                out = engine.process(frame)
                times.append(time.perf_counter() - t)
                events.update(f"{e.rule}/{e.type}" for e in out.events)
                objects += len(dets)
            wall = time.perf_counter() - t_pass
            cpu1, machine1 = me.cpu_times(), psutil.cpu_times()
            busy = (
                sum(machine1)
                - machine1.idle
                - machine1.iowait
                - (sum(machine) - machine.idle - machine.iowait)
            )
            ours = cpu1.user + cpu1.system - cpu0.user - cpu0.system
            per_pass.append(
                {
                    "times": times,
                    "tracker": list(tracker_s),
                    "events": dict(events),
                    "objects_per_frame": objects / len(data["frames"]),
                    "others_cpu_pct": max(0.0, 100 * (busy - ours) / wall),
                }
            )
    finally:
        tracking.CameraTracker.update = update  # type: ignore[method-assign]
    measured = per_pass[1:] or per_pass  # the first pass is a warm-up (imports, first allocations)
    ms = 1000 * np.concatenate([np.asarray(p["times"]) for p in measured])
    tracker_ms = 1000 * np.concatenate([np.asarray(p["tracker"]) for p in measured])
    mean = float(ms.mean())
    pass_means = [1000 * float(np.mean(p["times"])) for p in measured]
    return {
        "camera": name,
        "clip": data["clip"],
        "resolution": f"{data['width']}x{data['height']}",
        "fps": fps,
        "rules": [r.name for r in cfg.alerts],
        "frames_per_pass": len(data["frames"]),
        "passes_measured": len(measured),
        "objects_per_frame": per_pass[0]["objects_per_frame"],
        "events_per_pass": per_pass[-1]["events"],
        "ms_per_frame": {
            "mean": mean,
            "median": float(np.median(ms)),
            "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)),
            "max": float(ms.max()),
        },
        "tracker_ms_per_frame_mean": float(tracker_ms.mean()),
        "rules_ms_per_frame_mean": mean - float(tracker_ms.mean()),
        "pct_of_one_core": mean * fps / 10,  # ms per frame x frames per s / 1000 ms x 100 %
        "pass_means_ms": pass_means,
        # How noisy: the spread of the per-pass means, in % of their median.
        "pass_spread_pct": 100 * (max(pass_means) - min(pass_means)) / float(np.median(pass_means)),
        "warmup_pass_mean_ms": 1000 * float(np.mean(per_pass[0]["times"])),
        "others_cpu_pct": [p["others_cpu_pct"] for p in measured],
    }


def run_engine(args: argparse.Namespace) -> dict[str, Any]:
    check_prerequisites(set(CLIPS.values()), harness=False)
    sample = yaml.safe_load(SAMPLE_CONFIG.read_text())
    conf = sample["model"]["conf"]
    result: dict[str, Any] = {"mode": "engine", "machine": machine_info(), "load_start": os.getloadavg()}
    result["model"] = {"path": str(MODEL), "conf": conf, "imgsz": 640}
    result["cameras"] = {}
    for name, clip in CLIPS.items():
        print(f"{name}: detections at {args.fps:g} fps ...")
        data = detections_of(clip, args.fps, conf)
        print(f"{name}: timing the engine over {args.passes} loops of {len(data['frames'])} frames ...")
        result["cameras"][name] = time_engine(name, data, args.passes)
    result["load_end"] = os.getloadavg()
    return result


def print_engine(r: dict[str, Any]) -> None:
    print("\n== EventEngine.process per frame (tracking + zones/lines + rules) ==")
    head = ("obj/fr", 7), ("mean ms", 9), ("median", 8), ("p99", 7), ("max", 7), ("tracker", 9), ("rules", 7)
    print(f"{'camera':<8}" + "".join(f"{h:>{w}}" for h, w in head) + f"{'% core':>8}")
    for name, c in r["cameras"].items():
        m = c["ms_per_frame"]
        print(
            f"{name:<8}{c['objects_per_frame']:>7.1f}{m['mean']:>9.2f}{m['median']:>8.2f}{m['p99']:>7.2f}"
            f"{m['max']:>7.2f}{c['tracker_ms_per_frame_mean']:>9.2f}{c['rules_ms_per_frame_mean']:>7.2f}"
            f"{c['pct_of_one_core']:>8.1f}"
        )
        spread = ", ".join(f"{v:.2f}" for v in c["pass_means_ms"])
        others = ", ".join(f"{v:.0f}" for v in c["others_cpu_pct"])
        print(f"  at {c['fps']:g} fps; per-pass means {spread} ms; others' CPU % per pass {others}")


# --- compare: the 4-camera pipeline with alerts on and off --------------------------------------


def pipeline_run(path: Path) -> dict[str, Any]:
    r = json.loads(path.read_text())
    procs, m = r["processes"], r["metrics"]
    return {
        "file": path.name,
        "date": r["machine"]["date"],
        "alerts": bool(r["config"].get("alerts")),
        "window_s": r["window_s"],
        "inferred_per_s": m["per_second"]["inferred"],
        "ms_per_batch": m["inference_ms_per_batch"],
        "publish_p50_ms": r["detections"]["capture_to_publish"].get("p50_ms"),
        "main_cpu_pct": procs["processes"].get("main", {}).get("cpu_pct"),
        "scheduler_cpu_pct": procs["processes"].get("scheduler", {}).get("cpu_pct"),
        "others_cpu_pct": procs["cpu_pct_others"],
        "steal_pct": procs["cpu_pct_steal"],
        "events_started": sum(v for k, v in m["all_deltas"].items() if k.startswith("vistream_events_total")),
        "log_problems": r["log_problems"]["count"],
    }


def run_compare(args: argparse.Namespace) -> dict[str, Any]:
    runs = {"off": [pipeline_run(p) for p in args.off], "on": [pipeline_run(p) for p in args.on]}
    summary: dict[str, Any] = {}
    for key, rs in runs.items():
        fps = [r["inferred_per_s"] for r in rs]
        main = [r["main_cpu_pct"] for r in rs]
        summary[key] = {
            "runs": len(rs),
            "inferred_per_s_median": statistics.median(fps),
            "inferred_per_s_min": min(fps),
            "inferred_per_s_max": max(fps),
            "spread_pct_of_median": 100 * (max(fps) - min(fps)) / statistics.median(fps),
            "main_cpu_pct_median": statistics.median(main),
        }
    off, on = summary["off"]["inferred_per_s_median"], summary["on"]["inferred_per_s_median"]
    summary["drop_pct_of_medians"] = 100 * (off - on) / off
    # The same without runs during which other work took more than a tenth of a core.
    quiet = {
        k: [r["inferred_per_s"] for r in rs if r["others_cpu_pct"] <= QUIET_OTHERS_PCT]
        for k, rs in runs.items()
    }
    if quiet["off"] and quiet["on"]:
        q_off, q_on = statistics.median(quiet["off"]), statistics.median(quiet["on"])
        summary["quiet_runs"] = {k: len(v) for k, v in quiet.items()}
        summary["quiet_inferred_per_s_median"] = {"off": q_off, "on": q_on}
        summary["quiet_drop_pct_of_medians"] = 100 * (q_off - q_on) / q_off
    pairs = list(zip(runs["off"], runs["on"], strict=False))  # run alternately: off, on, off, on, ...
    summary["paired_drop_pct"] = [
        100 * (a["inferred_per_s"] - b["inferred_per_s"]) / a["inferred_per_s"] for a, b in pairs
    ]
    summary["goal_pct"] = 5
    others = [round(r["others_cpu_pct"]) for rs in runs.values() for r in rs]
    spread = {k: f"{summary[k]['spread_pct_of_median']:.0f}%" for k in ("off", "on")}
    summary["noise"] = (
        f"others' CPU per run {others} % of a core; inferred frames/s spread over {spread['off']} (off) "
        f"and {spread['on']} (on) of the median: a difference smaller than that is not a measured one"
    )
    return {"mode": "compare", "summary": summary, "runs": runs}


def print_compare(r: dict[str, Any]) -> None:
    print("\n== 4-camera pipeline, alerts off / on ==")
    print(
        f"{'run':<34}{'alerts':>7}{'inferred/s':>11}{'ms/batch':>9}{'main %':>7}{'others %':>9}{'events':>7}"
    )
    for rs in r["runs"].values():
        for x in rs:
            print(
                f"{x['file']:<34}{'on' if x['alerts'] else 'off':>7}{x['inferred_per_s']:>11.2f}"
                f"{x['ms_per_batch']:>9.0f}{x['main_cpu_pct']:>7.1f}{x['others_cpu_pct']:>9.1f}"
                f"{x['events_started']:>7.0f}"
            )
    s = r["summary"]
    for key in ("off", "on"):
        v = s[key]
        print(
            f"{key}: median {v['inferred_per_s_median']:.2f}/s, range {v['inferred_per_s_min']:.2f}-"
            f"{v['inferred_per_s_max']:.2f} ({v['spread_pct_of_median']:.0f}% of the median); "
            f"main process {v['main_cpu_pct_median']:.1f}% CPU"
        )
    print(f"drop, medians: {s['drop_pct_of_medians']:.1f}% (goal under {s['goal_pct']}%)")
    if "quiet_drop_pct_of_medians" in s:
        q = s["quiet_inferred_per_s_median"]
        print(
            f"quiet runs only (others <= {QUIET_OTHERS_PCT}% of a core; {s['quiet_runs']}): "
            f"off {q['off']:.2f}/s, on {q['on']:.2f}/s, drop {s['quiet_drop_pct_of_medians']:.1f}%"
        )
    print("drop per off/on pair, %: " + ", ".join(f"{v:.1f}" for v in s["paired_drop_pct"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    live = modes.add_parser("live", help="events per minute, then a broker outage")
    live.add_argument("--seconds", type=float, default=120, help="window for counting events")
    live.add_argument("--warmup", type=float, default=10, help="seconds after ready before counting")
    live.add_argument("--outage", type=float, default=20, help="seconds the broker is down (0: none)")
    engine = modes.add_parser("engine", help="EventEngine.process alone on cached detections")
    engine.add_argument("--fps", type=float, default=15, help="frames per second sampled from the clip")
    engine.add_argument("--passes", type=int, default=6, help="loops of the clip; the first is a warm-up")
    compare = modes.add_parser("compare", help="pipeline.py results with and without --alerts")
    compare.add_argument("--off", type=Path, nargs="+", required=True)
    compare.add_argument("--on", type=Path, nargs="+", required=True)
    for p in (live, engine, compare):
        p.add_argument("--out", type=Path, help="JSON file; default benchmarks/results/alerts-<mode>.json")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every context manager stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run, show = {
        "live": (run_live, print_live),
        "engine": (run_engine, print_engine),
        "compare": (run_compare, print_compare),
    }[args.mode]
    try:
        result = run(args)
    except KeyboardInterrupt:
        sys.exit("interrupted")
    show(result)
    if args.mode == "compare":
        out = args.out or RESULTS / "alerts-pipeline.json"
    else:
        out = args.out or RESULTS / f"alerts-{args.mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    tmp.replace(out)
    print(f"\nresults written to {out}")


if __name__ == "__main__":
    main()
