"""The `vistream` command: run, check-config, shards, demo, bench, --version.

Exit codes (also in docs/cli.md): 0 clean stop; 2 invalid config or usage;
3 the model could not be loaded; 1 anything else. 2 and 3 mean "cannot boot"
so systemd stops instead of crash-looping (RestartPreventExitStatus=2 3).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from vistream import __version__

DEFAULT_CONFIG = "/etc/vistream/config.yaml"
LOG_FORMATS = ("text", "json")

log = logging.getLogger(__name__)


def setup_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr in `fmt` ("text", or "json": one object per line); children's records come
    through the log hub to these same handlers (vistream.ops.logs)."""
    from vistream.ops.logs import make_formatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(fmt, sys.stderr))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # Libraries that are chatty at INFO about things the daemon reports itself.
    for noisy in ("ultralytics", "amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vistream", description="Multi-camera video analytics daemon.")
    p.add_argument("--version", action="version", version=f"vistream {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument(
        "-c", "--config", help=f"config file (default: $VISTREAM_CONFIG, then {DEFAULT_CONFIG})", default=None
    )
    run.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help="text (default; without timestamps when stderr is the journal) or json, one object per "
        "line for log shippers (default: $VISTREAM_LOG_FORMAT, then text)",
    )
    run.add_argument(
        "--shard",
        metavar="K/N",
        default=None,
        help="run shard K (0-based) of N: only the cameras rendezvous hashing of their names gives it; "
        "auto/N takes K from a host name ending in -K (default: $VISTREAM_SHARD, else all cameras)",
    )

    shards = sub.add_parser("shards", help="print which shard serves each camera")
    shards.add_argument("-c", "--config", required=True, help="config file")
    shards.add_argument("--count", type=int, required=True, metavar="N", help="number of shards")

    check = sub.add_parser("check-config", help="validate a config file without starting anything")
    check.add_argument("path")

    demo = sub.add_parser(
        "demo", help="the whole daemon on generated sample footage, with an embedded broker"
    )
    demo.add_argument(
        "--model", default=None, help="model weights (default: yolov8n.pt, downloaded by Ultralytics)"
    )
    demo.add_argument(
        "--cameras", type=int, default=4, choices=range(1, 5), metavar="N", help="1 to 4 (default 4)"
    )
    demo.add_argument(
        "--seconds", type=float, default=None, help="stop after S seconds (default: until Ctrl-C)"
    )
    demo.add_argument(
        "--port", type=int, default=1883, help="port of the embedded MQTT broker (default 1883)"
    )
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")

    from vistream.bench.options import add_arguments as bench_arguments

    bench = sub.add_parser(
        "bench",
        help="vistream side by side with the model alone and Ultralytics' predictor on the same streams",
    )
    bench_arguments(bench)

    triton = sub.add_parser(
        "export-triton", help="write a Triton model repository entry (config.pbtxt + model) for a .pt model"
    )
    triton.add_argument("--model", required=True, help="YOLO detection weights (.pt)")
    triton.add_argument("--out", required=True, help="the model repository folder")
    triton.add_argument("--name", default=None, help="model name on the server (default: the file's stem)")
    triton.add_argument("--imgsz", type=int, default=640, help="export input size (default 640)")
    triton.add_argument("--max-batch", type=int, default=8, help="max_batch_size (default 8)")
    triton.add_argument("--format", choices=("onnx", "engine"), default="onnx", help="default onnx")
    triton.add_argument(
        "--input", choices=("float32", "uint8"), default="float32",
        help="what a request carries: float32 NCHW (default; also Ultralytics' Triton client), or uint8 "
        "NHWC, a quarter of the bytes, cast and scaled on the server (ONNX only)",
    )  # fmt: skip
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from vistream.config import ConfigError, load_config

    fmt = args.log_format or os.environ.get("VISTREAM_LOG_FORMAT") or "text"
    if fmt not in LOG_FORMATS:
        print(f"VISTREAM_LOG_FORMAT: {fmt!r} is not one of {', '.join(LOG_FORMATS)}", file=sys.stderr)
        return 2
    # Before the config is read, so that its errors reach a log shipper (or the journal, with
    # their priority) in the same format as everything after.
    setup_logging("info", fmt)
    from vistream.ops.shard import ShardError, from_option

    try:
        shard = from_option(args.shard, os.environ)
    except ShardError as exc:
        log.error("%s", exc)
        return 2
    path = args.config or os.environ.get("VISTREAM_CONFIG") or DEFAULT_CONFIG
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return 2
    logging.getLogger().setLevel(cfg.log_level.upper())
    from vistream.daemon import Daemon

    return Daemon(cfg, config_path=path, shard=shard).run()


def cmd_check_config(args: argparse.Namespace) -> int:
    from vistream.config import check_config

    return check_config(args.path)


def cmd_shards(args: argparse.Namespace) -> int:
    from vistream.config import ConfigError, load_config
    from vistream.ops.shard import MAX_SHARDS, table

    if not 1 <= args.count <= MAX_SHARDS:
        print(f"--count: {args.count} is not 1 to {MAX_SHARDS}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(table(cfg, args.count))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vistream.daemon import Daemon
    from vistream.demo.run import run_demo

    setup_logging("warning")
    return run_demo(
        lambda cfg, on_tick: Daemon(cfg, on_tick=on_tick).run(),
        model=args.model, cameras=args.cameras, seconds=args.seconds, port=args.port, device=args.device,
    )  # fmt: skip


def cmd_bench(args: argparse.Namespace) -> int:
    from vistream.bench.compare import main as run_bench

    setup_logging("warning")
    return run_bench(args)


def cmd_export_triton(args: argparse.Namespace) -> int:
    from vistream.detector.triton_export import main as export_triton

    setup_logging("warning")
    return export_triton(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {
        "run": cmd_run,
        "check-config": cmd_check_config,
        "shards": cmd_shards,
        "demo": cmd_demo,
        "bench": cmd_bench,
        "export-triton": cmd_export_triton,
    }
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        return 130
