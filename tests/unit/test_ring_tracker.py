"""Shared-memory segments and Python's resource tracker, with real processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import multiprocessing as mp, os, signal, sys
    from vistream.ring.shm import FrameRing, RingLayout

    def attach_and_leave(name):
        FrameRing.attach(name).close()

    if __name__ == "__main__":
        ring = FrameRing.create(sys.argv[1], RingLayout(3, 8, 12))
        child = mp.get_context("spawn").Process(target=attach_and_leave, args=(ring.name,))
        child.start()
        child.join(30)
        print("after child:", os.path.exists("/dev/shm/" + ring.name), flush=True)
        if sys.argv[2] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        ring.close()
        ring.unlink()
    """
)


def run(tmp_path: Path, how: str) -> tuple[str, subprocess.CompletedProcess[str]]:
    name = f"vistream-test-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "tracker.py"
    script.write_text(SCRIPT)
    r = subprocess.run([sys.executable, str(script), name, how], capture_output=True, text=True, timeout=60)
    return name, r


def test_ring_module_does_not_import_unittest() -> None:
    """Production code patches nothing: importing the ring does not pull in unittest(.mock)."""
    r = subprocess.run(
        [sys.executable, "-c", "import sys, vistream.ring.shm; print('unittest' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout.strip() == "False", r.stderr


def test_attaching_child_leaves_the_segment_and_the_creators_registration(tmp_path: Path) -> None:
    """1. The creator makes a ring; a spawned child (as a reader or the scheduler) attaches and exits.
    2. The segment is still there, and the creator's clean unlink makes the resource tracker
       complain about nothing (an unregister in the child would make it raise a KeyError)."""
    name, r = run(tmp_path, "clean")
    assert "after child: True" in r.stdout, r.stderr
    assert r.returncode == 0 and "KeyError" not in r.stderr and "leaked" not in r.stderr, r.stderr
    assert not Path("/dev/shm", name).exists()


def test_sigkilled_creator_is_cleaned_up_by_the_tracker(tmp_path: Path) -> None:
    """1. The creator makes a ring, a spawned child attaches and exits, the creator is SIGKILLed.
    2. The resource tracker (still holding the creator's registration) unlinks the segment."""
    name, r = run(tmp_path, "kill")
    assert "after child: True" in r.stdout, r.stderr
    deadline = time.monotonic() + 10
    while Path("/dev/shm", name).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path("/dev/shm", name).exists()
