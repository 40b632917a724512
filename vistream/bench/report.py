"""What `vistream bench` prints and writes: the ratios first, then the table; the JSON and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vistream.bench.measure import table


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(r: dict[str, Any]) -> dict[str, Any]:
    """The headline: vistream's inferred frames/s against Ultralytics' images/s, the model alone
    (loaded and idle), and, with dead cameras, against the run without them."""
    vs = r["vistream"]["inferred_fps"]
    ultra = r["ultralytics"]
    limit = r["model_limit"]
    out: dict[str, Any] = {
        "vistream_per_ultralytics": ratio(vs, ultra.get("images_per_s")),
        "vistream_per_model_limit_loaded": ratio(vs, limit["loaded"]["img_per_s"]),
        "vistream_per_model_limit_idle": ratio(vs, limit["idle"]["img_per_s"]),
    }
    if "vistream_dead" in r:
        out["vistream_dead_per_vistream"] = ratio(r["vistream_dead"]["inferred_fps"], vs)
        out["vistream_dead_per_ultralytics"] = ratio(
            r["vistream_dead"]["inferred_fps"], ultra.get("images_per_s")
        )
    return out


def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def run_rows(r: dict[str, Any]) -> list[list[Any]]:
    """One row per vistream run and one for Ultralytics: rate, batch, latency, age, drops, CPU."""
    rows = []
    for key in ("vistream", "vistream_dead"):
        if key not in r:
            continue
        v = r[key]
        rx = v["detections"]["capture_to_receive"]
        drops = ", ".join(f"{k} {int(n)}" for k, n in sorted(v["dropped"].items()) if n) or "0"
        skips = ", ".join(f"{k} {int(n)}" for k, n in sorted(v["skipped"].items()) if n) or "0"
        cameras = len(v["config"]["cameras"])
        rows.append([
            f"{key.replace('_', ' + ')} ({cameras} cams)",
            fmt(v["inferred_fps"]),
            fmt(v["batch_size_mean"], 2),
            *(fmt(rx.get(k), 0) for k in ("p50_ms", "p95_ms", "p99_ms")),
            fmt(v["frame_age_inference_end_ms_p99"], 0),
            fmt(v["frames_late"], 0),
            drops,
            skips,
            fmt(v["processes"]["cpu_pct_daemon"], 0),
        ])  # fmt: skip
    u = r["ultralytics"]
    if u["ok"]:
        cpu = sum(p["cpu_pct"] for n, p in u["processes"]["processes"].items() if n == "ultralytics")
        rows.append(
            [f"ultralytics ({u['streams']} streams)", fmt(u["images_per_s"]), fmt(float(u["streams"]), 0)]
        )
        rows[-1] += ["-"] * 7 + [fmt(cpu, 0)]
    else:
        rows.append([f"ultralytics ({u['streams']} streams)", "FAILED", *["-"] * 9])
    return rows


def print_report(r: dict[str, Any]) -> None:
    o, limit = r["options"], r["model_limit"]
    cams = ", ".join(o["cameras"]) + (f" + dead: {', '.join(o['dead'])}" if o["dead"] else "")
    print(f"\n== vistream bench, {r['machine']['date']}, {r['machine']['cpu_count']} CPUs ==")
    print(f"cameras {cams}; detect_fps {o['detect_fps']} each; model {o['model']}, imgsz {o['imgsz']}")
    precision = (
        f", precision {limit['precision']} (asked: {o.get('precision', 'auto')})"
        if "precision" in limit
        else ""
    )
    print(
        f"vistream backend {limit['backend']} (asked: {o['backend']}){precision}; "
        "Ultralytics' predictor: torch"
    )
    print(
        f"device {o['device']}; batch shape {limit['shape_hw'][0]}x{limit['shape_hw'][1]}; "
        f"broker {r['broker']}"
    )
    print(f"load average at start {r['load_start']}, at end {r['load_end']}\n")
    names = {
        "vistream_per_ultralytics": "vistream / Ultralytics predictor",
        "vistream_per_model_limit_loaded": "vistream / model alone under decode load",
        "vistream_per_model_limit_idle": "vistream / model alone, idle",
        "vistream_dead_per_vistream": "vistream with dead camera(s) / without",
        "vistream_dead_per_ultralytics": "vistream with dead camera(s) / Ultralytics without",
    }
    u = r["ultralytics"]
    for key, value in ratios(r).items():
        why = "" if value is not None or u["ok"] else f"  (Ultralytics failed: {u.get('error')})"
        print(f"{names[key]:<52} {fmt(value, 2)}{why}")
    print()
    n = limit["batch"]
    for state in ("idle", "loaded"):
        m = limit[state]
        print(
            f"model alone, {state:<6}: {m['img_per_s']:.1f} img/s at batch {n}, "
            f"{m['ms_per_batch_median']:.0f} ms/batch median, p99 {m['ms_per_batch_p99']:.0f}"
        )
    decoders = limit["loaded"].get("decoders", {})
    if decoders:
        print("  decode load: " + ", ".join(f"{c} {d['fps']:.1f} fps" for c, d in decoders.items()))
    print()
    header = ["run", "frames/s", "batch", "c2r p50", "p95", "p99", "age@end p99", "late", "dropped"]
    table([*header, "skipped", "CPU %"], run_rows(r))
    if not u["ok"]:
        print(f"Ultralytics' predictor failed: {u.get('error')}")
    for key in ("vistream", "vistream_dead"):
        if key in r:
            print_latency(key, r[key])
    print_processes(r)


def print_latency(key: str, v: dict[str, Any]) -> None:
    c2p = v["detections"]["capture_to_publish"]
    bound, infer_p99 = v["latency_bound_ms"], v["inference_ms_p99"]
    print(
        f"\n{key}: capture -> publish p99 {fmt(c2p.get('p99_ms'), 0)} ms against max_frame_age_ms "
        f"{v['config']['batching']['max_frame_age_ms']} + one batch "
        f"({fmt(v['inference_ms_per_batch'], 0)} ms "
        f"mean, p99 {fmt(infer_p99, 0)}) = {fmt(bound, 0)} ms"
    )
    print(
        f"  frame age p99: at batch start {fmt(v['frame_age_batch_start_ms_p99'], 0)} ms, at inference end "
        f"{fmt(v['frame_age_inference_end_ms_p99'], 0)} ms; frames late (stale while their batch ran): "
        f"{fmt(v['frames_late'], 0)}; batch shape {v['batch_shape_hw']}; "
        f"ready after {v['ready_after_s']:.1f} s"
    )


def print_processes(r: dict[str, Any]) -> None:
    rows = []
    runs = [("vistream", r.get("vistream")), ("vistream_dead", r.get("vistream_dead"))]
    runs += [("ultralytics", r["ultralytics"]), ("model alone", r["model_limit"]["loaded"])]
    for run, data in runs:
        procs = (data or {}).get("processes")
        if not procs:
            continue
        for name, p in sorted(procs["processes"].items()):
            rows.append(
                [f"{run}: {name}", p["cpu_pct"], p.get("rss_mib_mean", 0.0), p.get("rss_mib_max", 0.0)]
            )
        rows.append([f"{run}: others on the machine", procs["cpu_pct_others"], 0.0, 0.0])
    print()
    table(["process", "CPU % (100 = 1 core)", "RSS mean MiB", "RSS max MiB"], rows)


def plot(r: dict[str, Any], path: Path) -> None:
    """Throughput bars (the ratios' two sides) and latency percentiles against their bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    limit, u = r["model_limit"], r["ultralytics"]
    bars = [
        ("model alone\nidle", limit["idle"]["img_per_s"], "#999"),
        ("model alone\ndecode load", limit["loaded"]["img_per_s"], "#777"),
        (f"vistream\n{len(r['options']['cameras'])} cams", r["vistream"]["inferred_fps"], "#1f77b4"),
    ]
    if "vistream_dead" in r:
        bars.append(("vistream\n+ dead", r["vistream_dead"]["inferred_fps"], "#4a9ad4"))
    bars.append(("Ultralytics\npredictor", u.get("images_per_s") or 0.0, "#d62728"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = range(len(bars))
    left.bar(xs, [b[1] for b in bars], color=[b[2] for b in bars])
    left.set_xticks(list(xs), [b[0] for b in bars], fontsize=8)
    left.set_ylabel("frames (images) inferred per second")
    if not u["ok"]:
        left.annotate("failed", (len(bars) - 1, 0), ha="center", va="bottom", color="#d62728")
    left.set_title(f"throughput, {r['machine']['date'][:10]}")
    for key, color in (("vistream", "#1f77b4"), ("vistream_dead", "#4a9ad4")):
        if key in r:
            rx = r[key]["detections"]["capture_to_receive"]
            ps = [rx.get(k) or 0.0 for k in ("p50_ms", "p95_ms", "p99_ms")]
            right.plot(["p50", "p95", "p99"], ps, marker="o", color=color, label=key.replace("_", " + "))
    bound = r["vistream"]["latency_bound_ms"]
    if bound:
        right.axhline(bound, linestyle="--", color="#555", label="max_frame_age_ms + one batch")
    right.set_ylabel("capture -> received, ms")
    right.set_title("latency")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(r: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """The JSON (with the ratios) and the PNG beside it, each written whole, then renamed."""
    r = {"ratios": ratios(r), **r}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(r, indent=2, default=float) + "\n")
    tmp.replace(out)
    png = out.with_suffix(".png")
    tmp_png = png.with_name(png.stem + ".tmp.png")
    plot(r, tmp_png)
    tmp_png.replace(png)
    return out, png
