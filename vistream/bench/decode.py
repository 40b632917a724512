"""A plain PyAV consumer: decodes every frame of one RTSP stream and does nothing else with it.

`vistream bench` runs one per stream while it times the model, to measure the model's limit under
the decode load the daemon's readers put on the machine (and Ultralytics' stream threads too):

    python -m vistream.bench.decode NAME URL

Prints `READY` once the first frame is decoded; on SIGTERM prints `DECODED <frames> <seconds>` (frames
decoded since READY and the seconds since then) and exits 0. A stream that fails prints `ERROR ...`
and exits 1.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any


def decode(url: str, stop: list[bool]) -> None:
    import av

    frames, t0 = 0, 0.0
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=(10.0, 10.0)) as container:
        for _frame in container.decode(video=0):
            if frames == 0:
                t0 = time.monotonic()
                print("READY", flush=True)
            frames += 1
            if stop[0]:
                break
    print(f"DECODED {frames - 1} {time.monotonic() - t0:.3f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    name, url = (argv if argv is not None else sys.argv[1:])[:2]
    from setproctitle import setproctitle

    setproctitle(f"vistream-bench: decode {name}")
    stop = [False]

    def on_term(*_: Any) -> None:  # records only; the loop stops at the next frame
        stop[0] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        decode(url, stop)
    except Exception as exc:  # reported to the parent, which records it
        print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
