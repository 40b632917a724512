"""Scaling: 1 to 16 cameras of the 480p clip at 5 fps, against the cost of decoding the clip at all.

For each camera count the real daemon runs through benchmarks/pipeline.py's `run_pipeline` (Mosquitto
and the GStreamer RTSP test server from tests/support, the crowd clip on mounts crowd1..crowdN, one
window measured after a warm-up), and the figures that matter for scaling are taken from its result:
decode CPU per camera (each reader process's CPU time over the window's wall time), RSS per reader,
the main process and the scheduler, inferred frames/s, capture -> publish latency from the MQTT
payloads (p50/p95/p99).

The floor is FFmpeg decoding the same clip, `ffmpeg -i CLIP -f null -`: CPU seconds per second of
video, which is what a camera sending that clip live at 30 fps must cost at the least. A reader pays
more: RTSP over TCP, the Python loop over every frame, and the letterbox and snapshot passes of each
sampled frame. To tell those apart, the clip is also decoded in this process by the reader's own
decode loop (`decoded_frames`, PyAV, no RTSP), its sampled-frame passes are timed (`FrameScaler`),
and one camera runs again at `--conversion-fps` (1): the reader's CPU at 5 fps minus at 1 fps is
what 4 sampled frames a second cost, live.

    .venv/bin/python benchmarks/scaling.py [--counts 1,2,4,8,16] [--seconds 30] [--warmup 10]
        [--detect-fps 5] [--conversion-fps 1] [--floor-runs 5] [--out benchmarks/results/scaling-cpu.json]

Writes the JSON to --out and the plot next to it (same name, .png).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import numpy as np

# benchmarks/pipeline.py: the daemon under the real harness, one window measured (run_pipeline).
import pipeline
from pipeline import CLIPS, REPO

from vistream.bench import measure
from vistream.bench.measure import cell, machine_info, table
from vistream.ops.process import StopFlag
from vistream.sources.letterbox import letterbox
from vistream.sources.reader import FrameScaler
from vistream.sources.stream import decoded_frames

CLIP = CLIPS["crowd"]
RESULTS = REPO / "benchmarks" / "results"
TARGET_CPU_RATIO = 1.2  # decode CPU per camera within 1.2x of the floor
TARGET_RSS_MIB = 150e6 / 2**20  # RSS per reader under 150 MB (143 MiB)
MODEL_SIZE = 640  # pipeline.py's --imgsz default, the ring's model input


# --- The floor: what decoding the clip costs at all ---------------------------------------------


def clip_seconds(clip: Path) -> tuple[float, int]:
    """Duration of the clip's video stream (frames / rate, as a looped camera plays it) and frames."""
    with av.open(str(clip)) as container:
        vs = container.streams.video[0]
        return vs.frames / float(vs.average_rate), vs.frames


def child_cpu_s(cmd: list[str]) -> float:
    """User + system CPU seconds of one command, from the kernel's account of it (wait4)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}")
    return usage.ru_utime + usage.ru_stime


def ffmpeg(*args: str) -> list[str]:
    """`ffmpeg [args] -f null -`: decode, and throw the frames away."""
    return ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", *args, "-f", "null", "-"]


def ffmpeg_floor(clip: Path, runs: int, loops: int) -> dict[str, Any]:
    """`ffmpeg -i CLIP -f null -`, as is and looped `loops` times (which spreads its start-up cost).

    The looped figure is the floor: a live camera pays no start-up per 13.6 s of video.
    """
    video_s, _ = clip_seconds(clip)
    loop = ["-stream_loop", str(loops - 1)]
    variants = {
        "plain": (ffmpeg("-i", str(clip)), 1),
        "looped": (ffmpeg(*loop, "-i", str(clip)), loops),
        # Video only, one thread: the reader gets no audio and decodes with slice threads only.
        "looped_video_1_thread": (ffmpeg(*loop, "-threads", "1", "-i", str(clip), "-an"), loops),
    }
    out: dict[str, Any] = {"clip": str(clip), "video_s": video_s, "runs": runs}
    for name, (cmd, n) in variants.items():
        cpu = [child_cpu_s(cmd) for _ in range(runs)]
        per_video_s = statistics.median(cpu) / (n * video_s)
        out[name] = {"command": " ".join(cmd), "cpu_s": cpu, "cpu_pct_live": 100 * per_video_s}
    out["cpu_pct_live"] = out["looped"]["cpu_pct_live"]  # % of one core for one live camera
    return out


def in_process(clip: Path, loops: int, detect_fps: float) -> dict[str, Any]:
    """The reader's own decode loop (no RTSP), and its two swscale passes on the sampled frames.

    Decode: `decoded_frames` over the clip `loops` times, CPU time of this process per second of video.
    Passes: `FrameScaler.model` (letterbox size, RGB) and `.plane` (snapshot plane, I420) on every
    frame of one loop, per frame; the copies into the ring slot are not included.
    """
    video_s, frames = clip_seconds(clip)
    stop = StopFlag()
    t0 = time.process_time()
    for _ in range(loops):
        with av.open(str(clip)) as container:
            for _frame in decoded_frames(container, paced=False, stop=stop):
                pass
    decode_s = time.process_time() - t0
    scaler, passes = FrameScaler(), []
    with av.open(str(clip)) as container:
        for frame, _ in decoded_frames(container, paced=False, stop=stop):
            box = letterbox(frame.width, frame.height, MODEL_SIZE, MODEL_SIZE)
            t = time.process_time()
            scaler.model(frame, box.new_w, box.new_h)
            scaler.plane(frame, frame.width, frame.height)  # a 480p plane keeps its size
            passes.append(time.process_time() - t)
    pass_ms = 1000 * statistics.mean(passes)
    return {
        "decode_cpu_pct_live": 100 * decode_s / (loops * video_s),
        "decode_ms_per_frame": 1000 * decode_s / (loops * frames),
        "passes_ms_per_sampled_frame": pass_ms,
        "passes_cpu_pct_at_detect_fps": pass_ms * detect_fps / 10,  # ms/frame * frames/s / 1000 * 100
    }


# --- The daemon at each camera count ------------------------------------------------------------


@contextmanager
def latency_p95() -> Iterator[None]:
    """The latency figures of pipeline.py (vistream.bench.measure) are p50/p90/p99/max: add p95.

    `measure.received` looks `percentiles` up in its module when called, so wrapping it there is enough.
    """
    plain: Callable[[list[float]], dict[str, Any]] = measure.percentiles

    def with_p95(seconds: list[float]) -> dict[str, Any]:
        out = plain(seconds)
        if seconds:
            out["p95_ms"] = float(np.percentile(np.asarray(seconds) * 1000, 95))
        return out

    measure.percentiles = with_p95  # type: ignore[assignment]
    try:
        yield
    finally:
        measure.percentiles = plain  # type: ignore[assignment]


def run_daemon(n: int, detect_fps: float, args: argparse.Namespace) -> dict[str, Any]:
    """One `run_pipeline` with n cameras on the crowd clip, pipeline.py's other settings as default."""
    ns = argparse.Namespace(
        cameras=",".join(f"crowd{i}" for i in range(1, n + 1)),
        detect_fps=detect_fps,
        seconds=args.seconds,
        warmup=args.warmup,
        dead=0,
        imgsz=MODEL_SIZE,
        device="cpu",
        max_batch=args.max_batch,
        alerts=False,
    )
    print(f"\n-- {n} camera(s) at detect_fps {detect_fps} --")
    with latency_p95():
        return pipeline.run_pipeline(ns)


def summarize(n: int, detect_fps: float, r: dict[str, Any], floor_pct: float) -> dict[str, Any]:
    """The scaling figures of one run_pipeline result."""
    procs, m, secs = r["processes"]["processes"], r["metrics"], r["window_s"]
    readers = {name.removeprefix("reader "): p for name, p in procs.items() if name.startswith("reader ")}
    cpu = [p["cpu_pct"] for p in readers.values()]
    decoded = [m["per_camera"][cam]["decoded"] / secs for cam in readers]
    sampled = [m["per_camera"][cam]["sampled"] / secs for cam in readers]
    lat = r["detections"]["capture_to_publish"]
    main, scheduler = procs.get("main", {}), procs.get("scheduler", {})
    return {
        "cameras": n,
        "detect_fps": detect_fps,
        "readers_found": len(readers),
        "reader_cpu_pct": {"mean": statistics.mean(cpu), "min": min(cpu), "max": max(cpu)},
        "reader_cpu_x_floor": statistics.mean(cpu) / floor_pct,
        # Cost per decoded frame: a reader that falls behind the live stream decodes fewer.
        "reader_cpu_ms_per_decoded_frame": 10 * statistics.mean(cpu) / statistics.mean(decoded),
        "decoded_per_s_per_camera": statistics.mean(decoded),
        "sampled_per_s_per_camera": statistics.mean(sampled),
        "reader_rss_mib": {
            "mean": statistics.mean(p["rss_mib_mean"] for p in readers.values()),
            "max": max(p["rss_mib_max"] for p in readers.values()),
        },
        "main_cpu_pct": main.get("cpu_pct"),
        "main_rss_mib_max": main.get("rss_mib_max"),
        "scheduler_cpu_pct": scheduler.get("cpu_pct"),
        "scheduler_rss_mib_max": scheduler.get("rss_mib_max"),
        "inferred_per_s": m["per_second"]["inferred"],
        "overwritten_per_s": m["per_second"]["dropped_overwritten"],
        "stale_per_s": m["per_second"]["dropped_stale"],
        "batch_size_mean": m["batch_size_mean"],
        "latency_ms": {k: lat.get(f"{k}_ms") for k in ("p50", "p95", "p99", "max")} | {"n": lat["n"]},
        "cpu_pct_daemon": r["processes"]["cpu_pct_daemon"],
        "cpu_pct_machine": r["processes"]["cpu_pct_machine"],
        "cpu_pct_others": r["processes"]["cpu_pct_others"],
        "stop": r["stop"],
        "log_problems": r["log_problems"]["count"],
    }


def conversion_estimate(at_fps: dict[str, Any], at_low: dict[str, Any]) -> dict[str, Any]:
    """What the sampled frames cost one live reader: its CPU at detect_fps minus at a lower rate."""
    extra_pct = at_fps["reader_cpu_pct"]["mean"] - at_low["reader_cpu_pct"]["mean"]
    extra_frames = at_fps["sampled_per_s_per_camera"] - at_low["sampled_per_s_per_camera"]
    ms = 10 * extra_pct / extra_frames if extra_frames > 0 else None
    return {
        "ms_per_sampled_frame": ms,
        "cpu_pct_at_detect_fps": None if ms is None else ms * at_fps["sampled_per_s_per_camera"] / 10,
        "note": "difference of two live windows; within the runs' noise when small",
    }


def targets(rows: list[dict[str, Any]], floor_pct: float) -> dict[str, Any]:
    worst_cpu = max(rows, key=lambda s: s["reader_cpu_x_floor"])
    worst_rss = max(rows, key=lambda s: s["reader_rss_mib"]["max"])
    return {
        "cpu_per_camera_within_1_2x_floor": {
            "floor_cpu_pct": floor_pct,
            "limit_cpu_pct": TARGET_CPU_RATIO * floor_pct,
            "worst_ratio": worst_cpu["reader_cpu_x_floor"],
            "worst_at_cameras": worst_cpu["cameras"],
            "met": worst_cpu["reader_cpu_x_floor"] <= TARGET_CPU_RATIO,
            "by_ratio": worst_cpu["reader_cpu_x_floor"] / TARGET_CPU_RATIO,  # > 1: missed by this factor
        },
        "rss_per_reader_under_150_mb": {
            "limit_mib": TARGET_RSS_MIB,
            "worst_max_mib": worst_rss["reader_rss_mib"]["max"],
            "worst_at_cameras": worst_rss["cameras"],
            "met": worst_rss["reader_rss_mib"]["max"] < TARGET_RSS_MIB,
        },
    }


# --- Output ---------------------------------------------------------------------------------------


def print_table(result: dict[str, Any]) -> None:
    floor, proc = result["floor"], result["in_process"]
    print(f"\n== vistream scaling, crowd 480p clip, {result['machine']['date']} ==")
    for name in ("plain", "looped", "looped_video_1_thread"):
        print(f"floor {name}: {floor[name]['cpu_pct_live']:.2f}% of a core  ({floor[name]['command']})")
    print(
        f"in process: reader's decode loop {proc['decode_cpu_pct_live']:.2f}% of a core "
        f"({proc['decode_ms_per_frame']:.2f} ms/frame); sampled-frame passes "
        f"{proc['passes_ms_per_sampled_frame']:.2f} ms/frame = {proc['passes_cpu_pct_at_detect_fps']:.2f}%"
    )
    if conv := result.get("conversion"):
        ms = conv["ms_per_sampled_frame"]
        pct = conv["cpu_pct_at_detect_fps"]
        fps = result["args"]["detect_fps"]
        low = conv["low_fps"]
        print(f"live: reader at fps {fps} minus at fps {low}: ", end="")
        print(f"{cell(ms)} ms per sampled frame, {cell(pct)}% of a core")
    header = ["cams", "fps", "reader CPU%", "min-max", "x floor", "dec/s", "RSS MiB", "max", "main CPU%",
              "MiB", "sched CPU%", "MiB", "infer/s", "p50 ms", "p95", "p99", "others%"]  # fmt: skip
    rows = []
    for s in [*([result["conversion"]["run"]] if result.get("conversion") else []), *result["runs"]]:
        if "error" in s:
            rows.append([str(s["cameras"]), s["detect_fps"], "failed: " + s["error"][:60]] + [""] * 14)
            continue
        c, rss, lat = s["reader_cpu_pct"], s["reader_rss_mib"], s["latency_ms"]
        rows.append([
            str(s["cameras"]), s["detect_fps"], c["mean"], f"{c['min']:.1f}-{c['max']:.1f}",
            f"{s['reader_cpu_x_floor']:.2f}", s["decoded_per_s_per_camera"], rss["mean"], rss["max"],
            s["main_cpu_pct"], s["main_rss_mib_max"], s["scheduler_cpu_pct"], s["scheduler_rss_mib_max"],
            s["inferred_per_s"], lat["p50"], lat["p95"], lat["p99"], s["cpu_pct_others"],
        ])  # fmt: skip
    print()
    table(header, rows)
    t = result["targets"]
    cpu, rss = t["cpu_per_camera_within_1_2x_floor"], t["rss_per_reader_under_150_mb"]
    print(
        f"\ntarget CPU/camera <= {TARGET_CPU_RATIO}x floor ({cpu['limit_cpu_pct']:.2f}%): "
        f"{'met' if cpu['met'] else 'MISSED'}, worst {cpu['worst_ratio']:.2f}x at {cpu['worst_at_cameras']} "
        f"cameras ({cpu['by_ratio']:.2f}x the target)"
    )
    print(
        f"target RSS/reader < 150 MB ({rss['limit_mib']:.0f} MiB): {'met' if rss['met'] else 'MISSED'}, "
        f"worst max {rss['worst_max_mib']:.0f} MiB at {rss['worst_at_cameras']} cameras"
    )


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display; must come before pyplot
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    runs = [s for s in result["runs"] if "error" not in s]
    n = [s["cameras"] for s in runs]
    floor = result["floor"]["cpu_pct_live"]
    fig, ax = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    for a in ax.flat:
        a.set_xscale("log", base=2)
        a.set_xticks(n, [str(x) for x in n])
        a.set_xlabel("cameras (crowd 480p, 30 fps)")
        a.grid(alpha=0.3)

    a = ax[0, 0]
    mean = np.array([s["reader_cpu_pct"]["mean"] for s in runs])
    spread = [
        mean - [s["reader_cpu_pct"]["min"] for s in runs],
        [s["reader_cpu_pct"]["max"] for s in runs] - mean,
    ]
    a.errorbar(n, mean, yerr=spread, marker="o", capsize=3, label="reader, mean (bars: min-max)")
    a.axhline(floor, color="k", ls="--", label="floor: ffmpeg -i CLIP -f null -")
    a.axhline(TARGET_CPU_RATIO * floor, color="r", ls=":", label=f"target: {TARGET_CPU_RATIO}x floor")
    decode = result["in_process"]["decode_cpu_pct_live"]
    a.axhline(decode, color="grey", ls="-.", label="the reader's decode loop on the file (no RTSP)")
    if conv := result.get("conversion"):
        low = conv["run"]
        if "error" not in low:
            a.plot(
                [1], [low["reader_cpu_pct"]["mean"]], "s", label=f"reader at detect_fps {low['detect_fps']}"
            )
    a.set_ylim(bottom=0)
    a.set_ylabel("CPU % of one core, per camera")
    a.set_title(f"Decode CPU per camera (detect_fps {result['args']['detect_fps']})")
    a.legend(fontsize=8)

    a = ax[0, 1]
    a.plot(n, [s["reader_rss_mib"]["mean"] for s in runs], "o-", label="reader RSS, mean")
    a.plot(n, [s["reader_rss_mib"]["max"] for s in runs], "^-", label="reader RSS, max")
    a.axhline(TARGET_RSS_MIB, color="r", ls=":", label="target: 150 MB")
    a.set_ylim(bottom=0)
    a.set_ylabel("MiB")
    a.set_title("RSS per reader process")
    a.legend(fontsize=8)

    a = ax[1, 0]
    for k, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^-")):
        a.plot(n, [s["latency_ms"][k] for s in runs], style, label=k)
    a.set_yscale("log")
    a.yaxis.set_major_formatter(ScalarFormatter())
    a.yaxis.set_minor_formatter(ScalarFormatter())
    a.set_ylabel("ms")
    a.set_title("Capture -> publish latency (MQTT payloads)")
    a.legend(fontsize=8)

    a = ax[1, 1]
    a.plot(n, [s["inferred_per_s"] for s in runs], "o-", label="inferred")
    a.plot(
        n, [s["cameras"] * s["sampled_per_s_per_camera"] for s in runs], "k--", label="sampled (asked for)"
    )
    a.set_ylim(bottom=0)
    a.set_ylabel("frames/s, all cameras")
    a.set_title("Throughput (what the model cannot do is shed)")
    a.legend(fontsize=8)

    fig.suptitle(f"vistream scaling on {result['machine']['cpu_count']} CPUs, {result['machine']['date']}")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_json(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")  # written whole, then renamed: never a half-written result
    tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    tmp.replace(out)


# --- Main -----------------------------------------------------------------------------------------


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    counts = [int(c) for c in args.counts.split(",")]
    if shutil.which("ffmpeg") is None:
        raise SystemExit("cannot run the benchmark: ffmpeg not found (Debian: apt-get install ffmpeg)")
    pipeline.check_prerequisites({CLIP}, harness=True)
    result: dict[str, Any] = {"mode": "scaling", "machine": machine_info(), "load_start": os.getloadavg()}
    result["args"] = vars(args) | {"out": str(args.out)}
    print("floor: ffmpeg decoding the clip ...")
    result["floor"] = ffmpeg_floor(CLIP, args.floor_runs, args.floor_loops)
    result["in_process"] = in_process(CLIP, args.floor_loops, args.detect_fps)
    floor = result["floor"]["cpu_pct_live"]

    def one(n: int, fps: float) -> dict[str, Any]:
        try:
            r = run_daemon(n, fps, args)
        except (RuntimeError, TimeoutError, AssertionError) as exc:  # recorded; the other counts still run
            return {"cameras": n, "detect_fps": fps, "error": f"{type(exc).__name__}: {exc}"}
        return summarize(n, fps, r, floor) | {"pipeline": r}

    result["runs"] = [one(n, args.detect_fps) for n in counts]
    one_cam = next((s for s in result["runs"] if s["cameras"] == 1 and "error" not in s), None)
    if args.conversion_fps and one_cam is not None:
        low = one(1, args.conversion_fps)
        result["conversion"] = {"low_fps": args.conversion_fps, "run": low}
        if "error" not in low:
            result["conversion"] |= conversion_estimate(one_cam, low)
    ok = [s for s in result["runs"] if "error" not in s]
    if not ok:
        raise SystemExit("every run failed: " + "; ".join(s["error"] for s in result["runs"]))
    result["targets"] = targets(ok, floor)
    result["load_end"] = os.getloadavg()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--counts", default="1,2,4,8,16", help="camera counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=30, help="measurement window per count (s)")
    parser.add_argument("--warmup", type=float, default=10, help="seconds after ready before measuring")
    parser.add_argument("--detect-fps", type=float, default=5)
    parser.add_argument("--conversion-fps", type=float, default=1, help="1 camera again at this fps; 0: no")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--floor-runs", type=int, default=5, help="ffmpeg runs per variant (median)")
    parser.add_argument("--floor-loops", type=int, default=10, help="clip loops in the looped floor")
    parser.add_argument("--out", type=Path, default=RESULTS / "scaling-cpu.json", help="JSON; plot beside it")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every context manager stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = run_all(args)
    except KeyboardInterrupt:  # the context managers have already stopped everything
        sys.exit("interrupted")
    print_table(result)
    write_json(result, args.out)
    plot(result, args.out.with_suffix(".png"))
    print(f"\nresults written to {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
