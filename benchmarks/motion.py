"""Motion gating, measured: inferences saved on a static stretch, and the events it must not change.

    .venv/bin/python benchmarks/motion.py [--hold-at 5] [--hold-s 20] [--fps 5] [--out FILE]

Builds (PyAV, into the temp directory) the street sample clip with one frame held for `--hold-s`
seconds at `--hold-at`, then played on. That clip and both unmodified sample clips go frame by frame
through the daemon's own parts, at `--fps` as the reader samples them: the reader's motion score
(`FrameMotion`, the default `motion:` settings), the scheduler's gate (`MotionGate`), YOLOv8n on the
frames it lets through (the daemon's letterbox and box mapping), the event engine with the zones and
rules of samples/config.yaml, and the main process's moving-track signal (`TrackActivity`); a
skipped frame goes to the engine as the camera's last detections, repeated, as in the daemon.

Each clip is run twice, gating off and on, on a clock that is the clip's own time (the model keeps
up, nothing is dropped), so the two runs differ by the gating alone. Inference is deterministic, so
the model runs once per frame and both runs read its detections from that cache. Reported: frames
inferred and skipped (during the held stretch too), and the events (start and end, rule, track,
time) of both runs, compared. -> benchmarks/results/motion.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
MODEL = SHARED / "models" / "yolov8n.pt"
CLIPS = {"street": SHARED / "samples" / "street-1080p.mp4", "crowd": SHARED / "samples" / "crowd-480p.mp4"}
SAMPLE_CONFIG = REPO / "samples" / "config.yaml"
RESULTS = REPO / "benchmarks" / "results"
CACHE = Path(tempfile.gettempdir()) / "vistream-bench"

sys.path.insert(0, str(REPO))

from vistream.config.loader import load_config  # noqa: E402
from vistream.config.models import Config, MotionConfig  # noqa: E402
from vistream.events.engine import EventEngine  # noqa: E402
from vistream.scheduler.messages import FrameResult  # noqa: E402
from vistream.scheduler.policy import MotionGate  # noqa: E402
from vistream.sources.motion import FrameMotion, TrackActivity  # noqa: E402
from vistream.sources.timing import Throttle  # noqa: E402


def held_clip(src: Path, hold_at: float, hold_s: float) -> Path:
    """`src` with its frame at `hold_at` s shown for `hold_s` s more, then the rest: re-encoded (x264)."""
    out = CACHE / f"{src.stem}-held-{hold_at:g}s-for-{hold_s:g}s.mp4"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part.mp4")
    with av.open(str(src)) as inp, av.open(str(tmp), "w") as dst:
        stream = inp.streams.video[0]
        rate = Fraction(stream.average_rate or 30).limit_denominator(1001)
        enc = dst.add_stream("libx264", rate=rate)
        enc.width, enc.height, enc.pix_fmt = stream.width, stream.height, "yuv420p"
        enc.options = {"preset": "veryfast", "crf": "23"}
        n = 0

        def put(frame: av.VideoFrame) -> None:
            nonlocal n
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = n, 1 / rate
            n += 1
            for packet in enc.encode(frame):
                dst.mux(packet)

        held = False
        for frame in inp.decode(stream):
            put(frame)
            if not held and float(frame.time) >= hold_at:
                held = True
                for _ in range(round(hold_s * rate)):
                    put(frame)
        for packet in enc.encode():
            dst.mux(packet)
    tmp.rename(out)
    return out


def sampled(clip: Path, fps: float, model: Model) -> list[dict[str, Any]]:
    """The frames the reader keeps at `fps`: clip time, size, motion score, the model's detections.

    The motion score does not depend on gating (the reader scores every sampled frame), and nor do
    the detections of a frame; so both runs use these, and the model runs once per frame.
    """
    throttle = Throttle(fps)
    scorer = FrameMotion(MotionConfig(enabled=True))
    out = []
    with av.open(str(clip)) as container:
        for frame in container.decode(container.streams.video[0]):
            t = float(frame.time)
            if not throttle.keep(t):
                continue
            t0 = time.perf_counter()
            score = scorer.score(frame)
            score_ms = 1000 * (time.perf_counter() - t0)
            out.append(
                {"t": t, "w": frame.width, "h": frame.height, "motion": score, "score_ms": score_ms,
                 "detections": model.detections(frame)}
            )  # fmt: skip
    return out


class Model:
    """YOLOv8n the daemon's way, on a list of frames; results cached per clip and frame index."""

    def __init__(self, conf: float) -> None:
        from vistream.config.models import ModelConfig
        from vistream.detector import load_detector

        self.conf = conf
        self.detector = load_detector(ModelConfig(path=str(MODEL), device="cpu", imgsz=640, conf=conf), 1)
        self.names = self.detector.names
        self.seconds = 0.0
        self.calls = 0

    def detections(self, frame: av.VideoFrame) -> list[tuple[int, float, float, float, float, float]]:
        from vistream.sources.letterbox import boxes_to_camera, letterbox

        _, h, w, _ = self.detector.input_buffer.shape
        img = self.detector.input_buffer[0]
        box = letterbox(frame.width, frame.height, w, h)
        box.inner(img)[...] = frame.reformat(width=box.new_w, height=box.new_h, format="rgb24").to_ndarray()
        box.fill_padding(img)
        t0 = time.monotonic()
        found = self.detector.infer(1)[0]
        self.seconds += time.monotonic() - t0
        self.calls += 1
        cam = boxes_to_camera(found, box.scale, box.left, box.top, frame.width, frame.height)
        return [(int(r[5]), float(r[4]), *map(float, b)) for r, b in zip(found, cam, strict=True)]  # type: ignore[misc]


def run_clip(
    camera: str, frames: list[dict[str, Any]], cfg: Config, names: dict[int, str], gating: bool,
    stretch: tuple[float, float] | None, keepalive_s: float = 10.0,
) -> dict[str, Any]:  # fmt: skip
    """One pass over the sampled frames, gating on or off; what was inferred and which events came."""
    motion_cfg = MotionConfig(enabled=True, keepalive_s=keepalive_s)
    gate, activity = MotionGate(), TrackActivity()
    engine = EventEngine(cfg, names, new_id=iter(f"e{i}" for i in range(10**6)).__next__)
    active_until, last = 0.0, None
    inferred = skipped = in_stretch_inferred = in_stretch = 0
    events: list[dict[str, Any]] = []
    for i, f in enumerate(frames):
        t, w, h = f["t"], f["w"], f["h"]
        inside = stretch is not None and stretch[0] <= t < stretch[1]
        in_stretch += inside
        skip = gating and gate.skip(
            camera, t, f["motion"], motion_cfg.min_area, motion_cfg.keepalive_s, active_until
        )
        if skip:
            skipped += 1
            if last is None:
                continue
            result = FrameResult(camera, i + 1, t, t, w, h, last.detections, repeated=True)
        else:
            inferred += 1
            in_stretch_inferred += inside
            gate.inferred(camera, t)
            result = last = FrameResult(camera, i + 1, t, t, w, h, [tuple(d) for d in f["detections"]])
        out = engine.process(result)
        if not result.repeated:
            until = activity.update(camera, [(o.track_id, o.box) for o in out.objects], w, h, t)
            active_until = until if until is not None else active_until
        events += [_event(ev) for ev in out.events if ev.type != "update"]
    end = engine.tick(frames[-1]["t"] + 60)  # events still open at the clip's end
    events += [_event(ev) for ev in end.events if ev.type != "update"]
    return {
        "gating": gating,
        "sampled": len(frames),
        "inferred": inferred,
        "skipped_no_motion": skipped,
        "stretch": {"sampled": in_stretch, "inferred": in_stretch_inferred} if stretch else None,
        "events": events,
        "counters": {"/".join(k): v for k, v in engine.counters.items()},
    }


def _event(ev: Any) -> dict[str, Any]:
    at = ev.ended_at if ev.type == "end" else ev.started_at
    return {"type": ev.type, "rule": ev.rule, "track_id": ev.track_id, "count": ev.count, "t": round(at, 3)}


def compare_events(off: list[dict[str, Any]], on: list[dict[str, Any]], tolerance_s: float) -> dict[str, Any]:
    """Same events: the same (type, rule, track) sequence, each at the same time within `tolerance_s`."""
    key = lambda e: (e["type"], e["rule"], e["track_id"])  # noqa: E731
    same_sequence = [key(e) for e in off] == [key(e) for e in on]
    worst = max((abs(a["t"] - b["t"]) for a, b in zip(off, on, strict=False)), default=0.0)
    return {
        "off": len(off),
        "on": len(on),
        "same_sequence": same_sequence,
        "max_time_difference_s": worst,
        "same": same_sequence and worst <= tolerance_s,
        "starts_off": sum(e["type"] == "start" for e in off),
        "starts_on": sum(e["type"] == "start" for e in on),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--hold-at", type=float, default=5.0, help="clip time of the frame that is held (s)")
    parser.add_argument("--hold-s", type=float, default=20.0, help="how long it is held (s)")
    parser.add_argument("--fps", type=float, default=5.0, help="detect_fps (samples/config.yaml has 5)")
    parser.add_argument(
        "--keepalive-sweep",
        type=float,
        nargs="*",
        default=[5.0, 2.0],
        help="more keepalive_s to try (held clip)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "motion.json")
    args = parser.parse_args()
    cfg = load_config(SAMPLE_CONFIG)
    conf = cfg.model.conf
    held = held_clip(CLIPS["street"], args.hold_at, args.hold_s)
    clips = {
        "street-held": ("street", held, (args.hold_at, args.hold_at + args.hold_s)),
        "street": ("street", CLIPS["street"], None),
        "crowd": ("crowd", CLIPS["crowd"], None),
    }  # fmt: skip
    model = Model(conf)
    result: dict[str, Any] = {
        "machine": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
            ).stdout.strip(),
        },
        "model": {"path": MODEL.name, "conf": conf, "imgsz": 640, "backend": type(model.detector).__name__},
        "motion": MotionConfig(enabled=True).model_dump(),
        "fps": args.fps,
        "hold": {"at_s": args.hold_at, "seconds": args.hold_s},
        "clips": {},
    }  # fmt: skip
    for name, (camera, path, stretch) in clips.items():
        print(f"{name}: the model on each frame sampled at {args.fps:g} fps ...", flush=True)
        frames = sampled(path, args.fps, model)
        off = run_clip(camera, frames, cfg, model.names, False, stretch)
        on = run_clip(camera, frames, cfg, model.names, True, stretch)
        scores = [f["motion"] for f in frames]
        entry = {
            "camera": camera,
            "clip": path.name,
            "off": off,
            "on": on,
            "inferences_saved_pct": 100 * (1 - on["inferred"] / off["inferred"]),
            "events": compare_events(off["events"], on["events"], 1 / args.fps),
            "counters_same": off["counters"] == on["counters"],
            "motion_score_ms_per_frame": sum(f["score_ms"] for f in frames) / len(frames),
            "motion_score_quantiles_10_50_90": [float(q) for q in np.quantile(scores, [0.1, 0.5, 0.9])],
            "motion_scores": [round(x, 5) for x in scores],
        }
        if stretch:
            s_off, s_on = off["stretch"]["inferred"], on["stretch"]["inferred"]
            entry["stretch_inferences_saved_pct"] = 100 * (1 - s_on / s_off)
            entry["event_time_differences"] = [
                {**b, "t_off": a["t"]} for a, b in zip(off["events"], on["events"], strict=False) if a != b
            ]
            entry["keepalive_sweep"] = {}
            for keepalive in args.keepalive_sweep:
                k = run_clip(camera, frames, cfg, model.names, True, stretch, keepalive)
                entry["keepalive_sweep"][f"{keepalive:g}"] = {
                    "stretch_inferred": k["stretch"]["inferred"],
                    "stretch_inferences_saved_pct": 100 * (1 - k["stretch"]["inferred"] / s_off),
                    "events": compare_events(off["events"], k["events"], 1 / args.fps),
                }
        result["clips"][name] = entry
    result["model_ms_per_frame"] = 1000 * model.seconds / max(model.calls, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    show(result)
    print(f"\n-> {args.out}")


def show(r: dict[str, Any]) -> None:
    print(f"\n== motion gating (defaults: {r['motion']}) at {r['fps']:g} fps ==")
    print(
        f"{'clip':<13}{'sampled':>8}{'inf off':>8}{'inf on':>7}{'saved':>7}{'stretch off/on':>16}"
        f"{'saved':>7}{'events off/on':>15}{'same':>6}"
    )
    for name, c in r["clips"].items():
        s = c["off"].get("stretch")
        stretch = f"{s['inferred']}/{c['on']['stretch']['inferred']}" if s else "-"
        saved = f"{c['stretch_inferences_saved_pct']:.0f}%" if s else "-"
        ev = c["events"]
        print(
            f"{name:<13}{c['off']['sampled']:>8}{c['off']['inferred']:>8}{c['on']['inferred']:>7}"
            f"{c['inferences_saved_pct']:>6.0f}%{stretch:>16}{saved:>7}{ev['off']:>7}/{ev['on']:<7}"
            f"{'yes' if ev['same'] and c['counters_same'] else 'NO':>6}"
        )
    for name, c in r["clips"].items():
        for d in c.get("event_time_differences", []):
            print(
                f"{name}: {d['type']} {d['rule']} track {d['track_id']} at {d['t']:.1f}s,"
                f" gating off at {d['t_off']:.1f}s"
            )
        for k, v in c.get("keepalive_sweep", {}).items():
            ev = v["events"]
            print(
                f"{name}, keepalive_s {k}: stretch {v['stretch_inferred']} inferred"
                f" ({v['stretch_inferences_saved_pct']:.0f}%"
                f" fewer), events {ev['off']}/{ev['on']}, same sequence {ev['same_sequence']}, largest time"
                f" difference {ev['max_time_difference_s']:.1f}s"
            )
    print(f"model {r['model_ms_per_frame']:.0f} ms/frame; motion score " + ", ".join(
        f"{n} {c['motion_score_ms_per_frame']:.2f} ms" for n, c in r["clips"].items()))  # fmt: skip


if __name__ == "__main__":
    main()
