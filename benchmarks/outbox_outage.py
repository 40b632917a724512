"""The durable outbox across a broker outage: how deep it gets and how fast the backlog drains.

Runs the scenario of tests/integration/test_outbox_delivery.py (the same code, `run_outage`): a real
Mosquitto with persistence on and a persistent-session subscriber; events of two cameras (and a
retained counter) at `--rate` per second; the broker stopped for `--outage` seconds and started again on
the same port. Prints and writes to `--out`: events written and received, duplicates, missing, order
violations, the largest outbox depth, the backlog at restart, and the time from the broker's restart to
the publisher's reconnect (paho's backoff) and to the last row of the backlog received.

    .venv/bin/python benchmarks/outbox_outage.py [--rate 10] [--outage 20] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the real broker harness and the scenario live with the tests

from integration.test_outbox_delivery import run_outage  # noqa: E402
from support import mosquitto as mosquitto_support  # noqa: E402
from support.mosquitto import Mosquitto  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=10.0, help="events per second (default 10)")
    ap.add_argument("--outage", type=float, default=20.0, help="seconds the broker is down (default 20)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "outbox-outage.json")
    args = ap.parse_args()
    missing = mosquitto_support.missing_dependency()
    if missing:
        print(f"cannot run: {missing}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="outbox-bench-") as tmp, Mosquitto(persistent=True) as broker:
        result = run_outage(broker, Path(tmp), rate_hz=args.rate, outage_s=args.outage)
    figures = asdict(result) | {"missing": len(result.missing)}
    report = {
        "benchmark": "outbox_outage",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg": os.getloadavg(),
        },
        "figures": figures,
    }
    for key, value in figures.items():
        print(f"{key:>24}: {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0 if not result.missing and not any(result.out_of_order.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
