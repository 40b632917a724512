"""`vistream bench`: vistream side by side with the model's own limit and with Ultralytics' predictor.

One run, the same RTSP streams (the test server looping clips as live cameras), model, imgsz and
device for every part:

1. the model's own limit at the daemon's batch shape (`batch_shape` of the clips' sizes, a batch of
   one frame per camera): timed idle, then under the decode load of the same streams (one plain
   PyAV consumer process per stream, decoding every frame: what the daemon's readers cost);
2. vistream end to end (`vistream run` as a subprocess) with `detect_fps` offering more frames than
   the model can take: inferred frames/s, mean batch, capture-to-publish as received by an MQTT
   subscriber, frame age at inference end, late frames, drops and skips by reason, CPU and RSS per
   process; with `--dead N` once without and once with N cameras at an address that takes
   connections and never answers;
3. Ultralytics' `predict(source=<.streams>, stream=True)` on the same streams (images counted), in
   a process of its own; with a dead camera it cannot start, and its error is recorded.

vistream.bench.report prints the table (ratios first) and writes the JSON and the PNG.
"""

from __future__ import annotations

import argparse
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

import vistream
from vistream.bench import mosquitto as mosquitto_support
from vistream.bench import rtsp_server as rtsp_support
from vistream.bench.daemon import DaemonProcess, base_config
from vistream.bench.measure import (
    ProcessWatch,
    check_alive,
    detection_figures,
    histogram_quantile,
    machine_info,
    measure_window,
    metric_figures,
    stop_if_running,
    time_infer,
    wait_ready,
)
from vistream.bench.mosquitto import Mosquitto, Subscriber
from vistream.bench.procs import free_port, stop_process
from vistream.bench.rtsp_server import RtspServer

PREFIX = "vsbench"
# A source checkout: the shared models and clips sit next to it (../shared), results under benchmarks/.
REPO = Path(vistream.__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SAMPLE_CLIPS = {"street": "street-1080p.mp4", "crowd": "crowd-480p.mp4"}
SMOKE = {"cameras": "2", "seconds": 10.0, "warmup": 3.0, "model_seconds": 3.0}


@dataclass
class Options:
    """What one bench run measures; `from_args` fills it from the command line."""

    mounts: dict[str, Path]  # live camera name -> clip
    model: str
    seconds: float = 60
    warmup: float = 15
    model_seconds: float = 10
    backend: str = "auto"
    imgsz: int = 640
    device: str = "cpu"
    detect_fps: float = 30
    dead: int = 0
    max_batch: int = 8
    max_frame_age_ms: int = 500
    threads: int | None = None  # model.threads, for vistream and the model alone
    precision: str = "auto"  # model.precision, for vistream and the model alone
    out: Path = field(default_factory=lambda: Path("compare.json"))

    @property
    def cameras(self) -> list[str]:
        return list(self.mounts)

    @property
    def dead_cameras(self) -> list[str]:
        return [f"dead{i + 1}" for i in range(self.dead)]


def default_model() -> str:
    """../shared/models/yolov8n.pt next to a source checkout, else the name Ultralytics downloads."""
    shared = SHARED / "models" / "yolov8n.pt"
    return str(shared) if shared.is_file() else "yolov8n.pt"


def default_out(backend: str, dead: int, precision: str = "auto") -> Path:
    results = REPO / "benchmarks" / "results"
    folder = results if results.parent.is_dir() else Path("benchmarks") / "results"
    stated = "" if precision == "auto" else f"-{precision}"
    return folder / f"compare-{backend}{stated}{'-dead' if dead else ''}.json"


def camera_mounts(spec: str, clips: dict[str, Path]) -> dict[str, Path]:
    """`--cameras`: names `<kind><N>` (the kind picks the clip: street1, crowd2), or a count that
    takes one camera of each kind in turn (4 with the samples: street1, crowd1, street2, crowd2)."""
    if spec.isdigit():
        kinds = list(clips)
        names = [f"{kinds[i % len(kinds)]}{i // len(kinds) + 1}" for i in range(int(spec))]
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
    mounts = {}
    for name in names:
        kind = name.rstrip("0123456789")
        if kind not in clips:
            raise SystemExit(f"--cameras: {name!r} must be <kind><N>, kind one of {', '.join(clips)}")
        mounts[name] = clips[kind]
    if not mounts:
        raise SystemExit("--cameras: no camera")
    return mounts


def clip_kinds(specs: list[str]) -> dict[str, Path]:
    """`--clip NAME=PATH` pairs, or the shared samples (street, crowd) when none is given."""
    if not specs:
        return {kind: SHARED / "samples" / name for kind, name in SAMPLE_CLIPS.items()}
    clips = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.isidentifier() or name.rstrip("0123456789") != name:
            raise SystemExit(
                f"--clip {spec}: expected NAME=PATH, NAME letters (cameras are NAME1, NAME2 ...)"
            )
        clips[name] = Path(path).expanduser().resolve()
    return clips


def options_from_args(args: argparse.Namespace) -> Options:
    if args.smoke:  # only what was not given explicitly
        for key, value in SMOKE.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    mounts = camera_mounts(args.cameras or "street1,street2,crowd1,crowd2", clip_kinds(args.clip))
    opts = Options(
        mounts=mounts,
        model=args.model or default_model(),
        seconds=args.seconds or 60,
        warmup=15 if args.warmup is None else args.warmup,
        model_seconds=args.model_seconds or 10,
        backend=args.backend,
        imgsz=args.imgsz,
        device=args.device,
        detect_fps=args.detect_fps,
        dead=args.dead,
        max_batch=max(args.max_batch, len(mounts) + args.dead),
        threads=args.threads,
        precision=args.precision,
    )
    opts.out = args.out or default_out(args.backend, args.dead, args.precision)
    return opts


def check_prerequisites(opts: Options) -> None:
    """Fail with every missing piece named, before anything is started."""
    clips = sorted(set(opts.mounts.values()))
    problems = [f"clip not found: {p}" for p in clips if not p.is_file()]
    if os.sep in opts.model and not Path(opts.model).exists():
        problems.append(f"model not found: {opts.model}")
    problems += filter(None, [rtsp_support.missing_dependency()])
    if problems:
        raise SystemExit("cannot run the benchmark:\n  " + "\n  ".join(problems))


# --- The harness: broker, RTSP server --------------------------------------------------------


@dataclass
class Harness:
    rtsp: RtspServer
    mqtt_host: str
    mqtt_port: int
    broker: str  # "mosquitto" or "embedded (amqtt)"
    tmp: Path
    silent_port: int  # a port that takes connections and never says a word: where dead cameras point


def silent_listener(stack: ExitStack) -> int:
    """A TCP port that accepts connections (the kernel completes them into the backlog) and never
    answers: a camera that hangs, the hardest kind of dead for a client, which waits for its timeout
    on every attempt instead of being refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    stack.callback(sock.close)
    return int(sock.getsockname()[1])


def start_harness(stack: ExitStack, opts: Options) -> Harness:
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vistream-bench-")))
    if mosquitto_support.missing_dependency() is None:
        mosq = stack.enter_context(Mosquitto())
        host, port, kind = mosq.host, mosq.port, "mosquitto"
    else:  # a user without Mosquitto: the demo's embedded broker
        from vistream.demo.broker import EmbeddedBroker

        embedded = EmbeddedBroker(port=0)
        host, port, kind = embedded.host, embedded.start(), "embedded (amqtt)"
        stack.callback(embedded.stop)
    rtsp = stack.enter_context(RtspServer(opts.mounts))
    return Harness(rtsp, host, port, kind, tmp, silent_listener(stack))


# --- 1. The model's own limit ----------------------------------------------------------------


def clip_size(path: Path) -> tuple[int, int]:
    """(width, height) of a clip's video."""
    import av

    with av.open(str(path)) as container:
        ctx = container.streams.video[0].codec_context
        return int(ctx.width), int(ctx.height)


def clip_frame(path: Path) -> np.ndarray:
    """The first frame of a clip, RGB."""
    import av

    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb24")


def fill_batch(buffer: np.ndarray, frames: list[np.ndarray]) -> None:
    """Letterbox each camera's frame into its row of `buffer` the way the readers do (grey 114)."""
    import cv2

    from vistream.sources.letterbox import letterbox

    height, width = buffer.shape[1:3]
    for row, frame in zip(buffer, frames, strict=False):
        lb = letterbox(frame.shape[1], frame.shape[0], width, height)
        lb.fill_padding(row)
        lb.inner(row)[:] = cv2.resize(frame, (lb.new_w, lb.new_h), interpolation=cv2.INTER_LINEAR)


class Consumers:
    """One `vistream.bench.decode` process per stream, decoding every frame."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.procs = {
            name: subprocess.Popen(
                [sys.executable, "-m", "vistream.bench.decode", name, url],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for name, url in urls.items()
        }

    def wait_ready(self, timeout: float = 30) -> None:
        for name, proc in self.procs.items():
            line = read_line(proc.stdout, timeout)
            if line != "READY":
                raise RuntimeError(f"decoder of {name} did not start: {line or 'no answer'}")

    def stop(self) -> dict[str, dict[str, float]]:
        """SIGTERM each; frames decoded and their rate per stream."""
        out = {}
        for proc in self.procs.values():
            proc.terminate()
        for name, proc in self.procs.items():
            text, _ = proc.communicate(timeout=15)
            fields = next((ln.split() for ln in text.splitlines() if ln.startswith("DECODED")), None)
            if fields:
                frames, secs = int(fields[1]), float(fields[2])
                out[name] = {"frames": frames, "seconds": secs, "fps": frames / secs if secs else 0.0}
        return out

    def kill(self) -> None:
        for proc in self.procs.values():
            stop_process(proc)


def read_line(stream: IO[str] | None, timeout: float) -> str | None:
    """The next line of a child's stdout within `timeout` s; None at EOF or when none came."""
    assert stream is not None
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline() or None), daemon=True).start()
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        return None
    return None if line is None else line.strip()


def model_limit(opts: Options, harness: Harness, shape: tuple[int, int]) -> dict[str, Any]:
    """img/s of the model alone at the daemon's batch shape: idle, then under the streams' decode load."""
    import torch

    from vistream.config.models import ModelConfig
    from vistream.detector import load_detector

    n = min(len(opts.cameras), opts.max_batch)  # a batch holds the newest frame of each camera
    cfg = ModelConfig.model_validate(
        {
            "path": opts.model,
            "device": opts.device,
            "imgsz": opts.imgsz,
            "backend": opts.backend,
            "threads": opts.threads,
            "precision": opts.precision,
        }
    )
    t0 = time.monotonic()
    detector = load_detector(cfg, opts.max_batch)
    detector.reshape(*shape)
    detector.warmup()
    out: dict[str, Any] = {
        "batch": n,
        "shape_hw": list(detector.input_hw),
        "backend": getattr(detector, "backend", opts.backend),
        "precision": detector.precision,
        "torch_threads": torch.get_num_threads(),
        "load_and_warmup_s": time.monotonic() - t0,
    }
    try:
        fill_batch(detector.input_buffer[:n], [clip_frame(opts.mounts[c]) for c in opts.cameras[:n]])
        print(f"model alone, batch {n} at {shape[0]}x{shape[1]}, idle ...", flush=True)
        out["idle"] = time_infer(detector, n, opts.model_seconds)
        consumers = Consumers({c: harness.rtsp.url(c) for c in opts.cameras})
        try:
            consumers.wait_ready()
            print(f"... and under the decode load of {len(opts.cameras)} streams ...", flush=True)
            watch = ProcessWatch(-1)
            watch.start()
            out["loaded"] = time_infer(detector, n, opts.model_seconds)
            out["loaded"]["processes"] = watch.stop()
            out["loaded"]["decoders"] = consumers.stop()
        finally:
            consumers.kill()
    finally:
        detector.close()
    return out


# --- 2. vistream end to end ------------------------------------------------------------------


def vistream_config(opts: Options, harness: Harness, dead: list[str]) -> dict[str, Any]:
    cams = [{"name": c, "url": harness.rtsp.url(c), "detect_fps": opts.detect_fps} for c in opts.cameras]
    # A port that never answers: each open waits for the reader's timeout, then it backs off and retries.
    cams += [
        {"name": c, "url": f"rtsp://127.0.0.1:{harness.silent_port}/nothing", "detect_fps": opts.detect_fps}
        for c in dead
    ]
    config = base_config(Path(opts.model), harness.mqtt_port, free_port(), PREFIX, cams)
    config["model"].update(
        device=opts.device,
        imgsz=opts.imgsz,
        backend=opts.backend,
        threads=opts.threads,
        precision=opts.precision,
    )
    config["batching"] = {
        "max_batch": opts.max_batch,
        "max_wait_ms": 10,
        "max_frame_age_ms": opts.max_frame_age_ms,
    }
    return config


def run_vistream(opts: Options, harness: Harness, dead: list[str]) -> dict[str, Any]:
    config = vistream_config(opts, harness, dead)
    workdir = harness.tmp / f"vistream-{len(dead)}-dead"
    workdir.mkdir()
    out: dict[str, Any] = {"config": config}
    with ExitStack() as stack:
        sub = stack.enter_context(Subscriber(harness.mqtt_host, harness.mqtt_port, f"{PREFIX}/#"))
        t_start = time.monotonic()
        daemon = stack.enter_context(DaemonProcess(config, workdir))
        stack.callback(stop_if_running, daemon)
        assert daemon.proc is not None
        wait_ready(sub, daemon, PREFIX, opts.cameras)
        out["ready_after_s"] = time.monotonic() - t_start
        print(
            f"vistream ready after {out['ready_after_s']:.1f} s; warm-up {opts.warmup:.0f} s ...", flush=True
        )
        time.sleep(opts.warmup)
        check_alive(daemon)
        print(f"measuring vistream {opts.seconds:.0f} s ...", flush=True)
        before, after, (t0, t1), out["processes"] = measure_window(daemon, opts.seconds)
        out["window_s"] = t1 - t0
        out |= vistream_figures(opts, before, after, opts.cameras + dead, (t0, t1), sub)
        code, took = daemon.terminate()
        out["stop"] = {"exit_code": code, "seconds": took}
    return out


def vistream_figures(
    opts: Options, before: dict, after: dict, cameras: list[str], window: tuple[float, float], sub: Subscriber
) -> dict[str, Any]:
    """The window's figures: rates, batches, latency, frame age, late frames, drops and skips."""
    seconds = window[1] - window[0]
    metrics = metric_figures(before, after, cameras, seconds)
    by_reason: dict[str, dict[str, float]] = {"dropped": {}, "skipped": {}}
    late: float | None = None
    for (name, labels), value in after.items():
        delta = value - before.get((name, labels), 0.0)
        kind = name.removeprefix("vistream_frames_").removesuffix("_total")
        if kind in by_reason and name.endswith("_total"):
            reason = dict(labels)["reason"]
            by_reason[kind][reason] = by_reason[kind].get(reason, 0.0) + delta
        elif name == "vistream_frames_late_total":
            late = (late or 0.0) + delta

    def p99_ms(histogram: str) -> float | None:
        q = histogram_quantile(before, after, histogram, 0.99)
        return None if q is None else 1000 * q

    shape = {dict(lb).get("side"): v for (n, lb), v in after.items() if n == "vistream_batch_shape"}
    infer_ms = metrics["inference_ms_per_batch"]
    return {
        "inferred_fps": metrics["total"]["inferred"] / seconds,
        "batch_size_mean": metrics["batch_size_mean"],
        "batch_shape_hw": [int(shape["height"]), int(shape["width"])] if len(shape) == 2 else None,
        "inference_ms_per_batch": infer_ms,
        "inference_ms_p99": p99_ms("vistream_inference_seconds"),
        "frame_age_batch_start_ms_p99": p99_ms("vistream_frame_age_seconds"),
        "frame_age_inference_end_ms_p99": p99_ms("vistream_result_frame_age_seconds"),
        "frames_late": late,  # None: the daemon does not count them (an older version)
        "dropped": by_reason["dropped"],
        "skipped": by_reason["skipped"],
        # Capture to publish is bounded by a frame's age at batch start plus its batch's inference.
        "latency_bound_ms": opts.max_frame_age_ms + infer_ms if infer_ms is not None else None,
        "metrics": metrics,
        "detections": detection_figures(sub.messages, cameras, window),
    }


# --- 3. Ultralytics' predictor ---------------------------------------------------------------


def run_ultralytics(opts: Options, harness: Harness, urls: list[str]) -> dict[str, Any]:
    """`predict(source=<.streams>, stream=True)` in a process of its own; images counted in a window."""
    streams = harness.tmp / f"cameras-{len(urls)}.streams"
    streams.write_text("".join(f"{u}\n" for u in urls))
    env = os.environ | {
        "YOLO_OFFLINE": "1",  # never the network: no update checks, no font or asset downloads
        "YOLO_AUTOINSTALL": "false",
        "YOLO_VERBOSE": "false",
        # The daemon reads RTSP over TCP; OpenCV's FFmpeg defaults to UDP.
        "OPENCV_FFMPEG_CAPTURE_OPTIONS": "rtsp_transport;tcp",
    }
    cmd = [sys.executable, "-m", "vistream.bench.ultra", "--source", str(streams), "--model", opts.model]
    cmd += ["--imgsz", str(opts.imgsz), "--device", opts.device]
    cmd += ["--warmup", str(opts.warmup), "--seconds", str(opts.seconds)]
    out: dict[str, Any] = {"streams": len(urls), "ok": False}
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        watch = ProcessWatch(-1)
        deadline = time.monotonic() + 180 + opts.warmup + opts.seconds
        try:
            while (left := deadline - time.monotonic()) > 0:
                line = read_line(proc.stdout, left)
                if line is None:
                    stderr.seek(0)
                    tail = [ln for ln in stderr.read().splitlines() if ln.strip()][-1:]
                    out["error"] = tail[0] if tail else f"exited with {proc.wait(10)} and said nothing"
                    break
                verb, _, rest = line.partition(" ")
                if verb == "STARTED":
                    out["started_after_s"] = float(rest)
                    print(f"ultralytics started after {float(rest):.1f} s; warm-up ...", flush=True)
                elif verb == "WINDOW":
                    print(f"measuring ultralytics {opts.seconds:.0f} s ...", flush=True)
                    watch.start()
                elif verb == "RESULT":
                    import json

                    out |= json.loads(rest) | {"ok": True, "processes": watch.stop()}
                    break
                elif verb == "ERROR":
                    out["error"] = rest
                    break
            else:
                out["error"] = "timed out"
        finally:
            stop_process(proc, 10)
    return out


# --- The run ---------------------------------------------------------------------------------


def run_bench(opts: Options) -> dict[str, Any]:
    from vistream.scheduler.shape import batch_shape

    check_prerequisites(opts)
    sizes = [clip_size(path) for path in opts.mounts.values()]
    shape = batch_shape(sizes, opts.imgsz)
    result: dict[str, Any] = {
        "mode": "compare",
        "machine": machine_info(),
        "load_start": os.getloadavg(),
        "options": {
            "cameras": {c: str(p) for c, p in opts.mounts.items()},
            "camera_sizes": {c: list(s) for c, s in zip(opts.cameras, sizes, strict=True)},
            "dead": opts.dead_cameras,
            "model": opts.model,
            "backend": opts.backend,
            "imgsz": opts.imgsz,
            "device": opts.device,
            "detect_fps": opts.detect_fps,
            "max_batch": opts.max_batch,
            "threads": opts.threads,
            "precision": opts.precision,
            "max_frame_age_ms": opts.max_frame_age_ms,
            "seconds": opts.seconds,
            "warmup": opts.warmup,
            "model_seconds": opts.model_seconds,
        },
        "batch_shape_hw": list(shape),
    }
    with ExitStack() as stack:
        harness = start_harness(stack, opts)
        result["broker"] = harness.broker
        result["model_limit"] = model_limit(opts, harness, shape)
        result["vistream"] = run_vistream(opts, harness, [])
        if opts.dead:
            result["vistream_dead"] = run_vistream(opts, harness, opts.dead_cameras)
        dead_urls = [c["url"] for c in result.get("vistream_dead", {}).get("config", {}).get("cameras", [])]
        urls = [harness.rtsp.url(c) for c in opts.cameras] + [u for u in dead_urls if "/nothing" in u]
        result["ultralytics"] = run_ultralytics(opts, harness, urls)
    result["load_end"] = os.getloadavg()
    return result


def main(args: argparse.Namespace) -> int:
    from vistream.bench.report import print_report, write_results

    opts = options_from_args(args)
    try:
        result = run_bench(opts)
    except KeyboardInterrupt:  # the context managers have already stopped everything
        return 130
    json_path, png_path = write_results(result, opts.out)  # first: a report that fails loses nothing
    print_report(result)
    print(f"\nresults written to {json_path} and {png_path}")
    return 0
