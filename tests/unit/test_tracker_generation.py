"""The scheduler tells which tracker numbered a frame's track ids (FrameResult.tracker).

Uses test_scheduler's rig: a real scheduler loop on real rings with a fake detector and clock.
"""

from __future__ import annotations

from unit.test_scheduler import Rig, rig  # noqa: F401  (the fixture)


def test_a_new_tracker_has_a_new_generation(rig: Rig) -> None:  # noqa: F811
    """1. Camera a's frames are tracked: every result names the same tracker generation.
    2. A reload changes a's detect_fps: its tracker is made again and numbers from 1 again;
       the results say it is another tracker, so the event engine does not take its track 1 for
       the old track 1 (tests/unit/test_engine.py has the phantom crossing this prevents)."""
    s = rig.start()

    def tracker_of_a() -> int:
        rig.clock.t += 0.2
        rig.write("a"), rig.write("b")
        s.step()
        frame = next(f for f in rig.results.get_nowait().frames if f.camera == "a")
        assert frame.track_ids is not None
        return frame.tracker

    before = {tracker_of_a() for _ in range(3)}
    assert len(before) == 1 and 0 not in before
    s.add("a", rig.rings["a"].name, 2.0)
    after = {tracker_of_a() for _ in range(3)}
    assert len(after) == 1 and after != before
