"""vistream side by side with the model's own limit and Ultralytics' predictor: `vistream bench`.

    .venv/bin/python benchmarks/compare.py [--cameras street1,street2,crowd1,crowd2] [--seconds 60]
        [--backend openvino] [--dead 1] [--smoke] [--out benchmarks/results/compare-<backend>.json]

The engine is vistream.bench.compare (benchmarks/README.md describes what it measures).
"""

from __future__ import annotations

import argparse
import signal
import sys

from vistream.bench.compare import main
from vistream.bench.options import add_arguments

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_arguments(parser)
    # SIGTERM unwinds like Ctrl-C, so every context manager stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main(parser.parse_args()))
