"""Sharding: how even rendezvous hashing spreads cameras over shards, and how many move when one is added.

For 64 and 1,000 cameras (names `camera-0001`...) over 2, 4 and 8 shards: the largest shard against
the mean (1.00 is perfectly even), and the cameras that change shard going from N to N+1 shards,
against the 1/(N+1) that must move at the least (those the new shard takes). Pure arithmetic over
vistream.ops.shard, a second or so.

    .venv/bin/python benchmarks/shards.py [--out benchmarks/results/shards.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vistream.ops.shard import assign, owner

CAMERAS = (64, 1000)
SHARDS = (2, 4, 8)


def measure(cameras: int, shards: int) -> dict[str, float | int]:
    names = [f"camera-{i:04d}" for i in range(1, cameras + 1)]
    sizes = [len(v) for v in assign(names, shards).values()]
    moved = sum(owner(n, shards) != owner(n, shards + 1) for n in names)
    return {
        "cameras": cameras,
        "shards": shards,
        "min": min(sizes),
        "max": max(sizes),
        "max_over_mean": round(max(sizes) / (cameras / shards), 3),
        "moved_to_n_plus_1": moved,
        "moved_fraction": round(moved / cameras, 4),
        "ideal_fraction": round(1 / (shards + 1), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "shards.json")
    args = parser.parse_args()
    rows = [measure(c, s) for c in CAMERAS for s in SHARDS]
    head = ("cameras", "shards", "min", "max", "max/mean", "moved N->N+1", "1/(N+1)")
    print("{:>7} {:>6} {:>4} {:>4} {:>8}  {:>14} {:>8}".format(*head))
    for r in rows:
        moved = f"{r['moved_to_n_plus_1']} ({r['moved_fraction']:.1%})"
        print(
            f"{r['cameras']:>7} {r['shards']:>6} {r['min']:>4} {r['max']:>4} {r['max_over_mean']:>8.2f}  "
            f"{moved:>14} {r['ideal_fraction']:>8.1%}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"hash": "blake2b-64 of 'K:camera', highest weight wins", "rows": rows}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
