"""The fault suite of issue 18, whole daemon: runs tests/integration/test_faults.py and collects figures.

Each test there (a broker outage of 60 s then a broker without persistence; the state_dir full,
locked, read-only at start and too small; 20 SIGKILLs at random moments) appends its figures to
the file named by VISTREAM_FAULTS_JSON. This runs pytest on that file with it set, and writes one
report: the machine (its CPU named), each scenario's figures, whether its test passed, and the
totals the issue asks for: events lost / invented / out of order (goal 0/0/0).

    .venv/bin/python benchmarks/faults.py [--kills 20] [-k EXPR] [--basetemp DIR] [--out FILE.json]

Needs what the integration tests need (Mosquitto, GStreamer's RTSP server, the samples, the
model) and root for the tmpfs mounts. The exit status is pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vistream.bench.measure import machine_info

REPO = Path(__file__).resolve().parent.parent
TESTS = "tests/integration/test_faults.py"
TOTALS = ("lost", "invented", "out_of_order")


def run_suite(
    kills: int, select: str | None, basetemp: Path | None
) -> tuple[int, list[dict[str, Any]], dict[str, str], float]:
    """pytest on the fault tests; (exit status, figures per scenario, outcome per test, seconds)."""
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        figures, junit = Path(tmp) / "figures.jsonl", Path(tmp) / "junit.xml"
        env = {**os.environ, "VISTREAM_FAULTS_JSON": str(figures), "VISTREAM_FAULTS_KILLS": str(kills)}
        cmd = [sys.executable, "-m", "pytest", TESTS, "-s", "-p", "no:cacheprovider", f"--junitxml={junit}"]
        t0 = time.monotonic()
        cmd += [*(["-k", select] if select else []), *([f"--basetemp={basetemp}"] if basetemp else [])]
        done = subprocess.run(cmd, cwd=REPO, env=env, check=False)
        took = time.monotonic() - t0
        lines = figures.read_text().splitlines() if figures.exists() else []
        outcomes = _outcomes(junit.read_text()) if junit.exists() else {}
    return done.returncode, [json.loads(line) for line in lines], outcomes, took


def _outcomes(junit_xml: str) -> dict[str, str]:
    """Test name -> passed, failed, skipped (xfail counts as skipped in JUnit XML), from pytest's report."""
    import xml.etree.ElementTree as ET

    out = {}
    for case in ET.fromstring(junit_xml).iter("testcase"):
        kinds = {child.tag for child in case}
        out[case.get("name", "?")] = (
            "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs in the kill scenario (default 20)")
    ap.add_argument("-k", dest="select", help="pytest -k expression: only some scenarios")
    ap.add_argument("--basetemp", type=Path, help="keep the tests' folders (daemon logs) here")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "faults.json")
    args = ap.parse_args()
    status, scenarios, outcomes, took = run_suite(args.kills, args.select, args.basetemp)
    totals = {key: sum(int(s.get(key) or 0) for s in scenarios) for key in TOTALS}
    machine = machine_info()
    report = {
        "benchmark": "faults",
        "machine": machine,
        "pytest_exit_status": status,
        "suite_s": round(took, 1),
        "tests": outcomes,
        "totals": totals,
        "scenarios": scenarios,
    }
    print(f"\n{machine['cpu_model']}, {machine['cpu_count']} CPUs; suite {took:.0f} s")
    for s in scenarios:
        figures = {k: v for k, v in s.items() if k != "scenario"}
        print(f"{s['scenario']:>30}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    print(f"{'events lost/invented/out of order':>30}: " + "/".join(str(totals[k]) for k in TOTALS))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
