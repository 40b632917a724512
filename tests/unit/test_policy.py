"""The batching policy, driven by a fake clock: age limit, max wait, max batch, fairness."""

from __future__ import annotations

import pytest

from vistream.scheduler.policy import BatchPolicy, Candidate

MS = 0.001


def policy(max_batch: int = 4, max_wait_ms: float = 10, max_age_ms: float = 500) -> BatchPolicy:
    return BatchPolicy(max_batch, max_wait_ms * MS, max_age_ms * MS)


def cams(*names: str, captured: float = 0.0, seq: int = 1) -> list[Candidate]:
    return [Candidate(n, seq, captured) for n in names]


def names(batch: list[Candidate]) -> list[str]:
    return [c.camera for c in batch]


def test_stale_frames_are_dropped_never_batched() -> None:
    """1. Of two ready frames, the one older than max_frame_age is dropped at once.
    2. The fresh one waits for the other streaming camera, then leaves alone at max_wait."""
    p = policy(max_age_ms=500, max_wait_ms=10)
    now = 10.0
    d = p.decide(now, [Candidate("old", 1, now - 0.501), Candidate("new", 1, now - 0.1)], streaming=2)
    assert names(d.stale) == ["old"]
    assert d.batch == [] and d.wait_until == pytest.approx(now + 0.010)
    d = p.decide(now + 0.010, [Candidate("new", 1, now - 0.1)], streaming=2)
    assert names(d.batch) == ["new"] and d.stale == []


def test_partial_batch_waits_at_most_max_wait() -> None:
    """1. One of three streaming cameras has a frame at t=0: the policy waits until t=10 ms.
    2. At t=5 ms a second camera is ready: still waiting for the third, same deadline.
    3. At t=10 ms the batch leaves with the two it has."""
    p = policy(max_wait_ms=10)
    d = p.decide(0.0, cams("a"), streaming=3)
    assert d.batch == [] and d.wait_until == pytest.approx(0.010)
    d = p.decide(0.005, cams("a", "b"), streaming=3)
    assert d.batch == [] and d.wait_until == pytest.approx(0.010)
    d = p.decide(0.010, cams("a", "b"), streaming=3)
    assert sorted(names(d.batch)) == ["a", "b"]


def test_full_batch_leaves_without_waiting() -> None:
    """When every streaming camera has a frame ready, the batch leaves at once."""
    p = policy(max_wait_ms=10)
    d = p.decide(0.0, cams("a", "b", "c"), streaming=3)
    assert sorted(names(d.batch)) == ["a", "b", "c"] and d.wait_until is None


def test_max_batch_caps_the_batch_and_leftovers_go_next_without_waiting() -> None:
    """1. Six cameras are ready, max_batch is 4: four go now.
    2. The two left out already waited: they go in the next decision without a new wait."""
    p = policy(max_batch=4, max_wait_ms=10)
    d = p.decide(0.0, cams(*"abcdef"), streaming=6)
    first = names(d.batch)
    assert len(first) == 4
    left = [n for n in "abcdef" if n not in first]
    d = p.decide(0.001, cams(*left), streaming=6)
    assert sorted(names(d.batch)) == sorted(left)


def test_waiting_never_makes_a_frame_stale() -> None:
    """A partial batch leaves early when waiting all of max_wait would push its oldest frame past max_age."""
    p = policy(max_wait_ms=100, max_age_ms=500)
    d = p.decide(1.0, [Candidate("a", 1, 1.0 - 0.45)], streaming=2)
    assert d.batch == [] and d.wait_until == pytest.approx(1.05)
    d = p.decide(1.05, [Candidate("a", 1, 1.0 - 0.45)], streaming=2)
    assert names(d.batch) == ["a"]


def test_no_streaming_camera_still_serves_a_ready_frame() -> None:
    """A frame from a camera not (yet) marked streaming is served, not held forever."""
    p = policy()
    d = p.decide(0.0, cams("a"), streaming=0)
    assert names(d.batch) == ["a"]


def test_fast_camera_cannot_starve_slow_ones() -> None:
    """1. Eight cameras, max_batch 2; camera "fast" has a new frame at every decision, the
       others have one frame each that stays pending until served.
    2. Within four batches every camera has been served at least once: least recently served
       go first, and "fast" gets at most one frame per batch."""
    p = policy(max_batch=2, max_wait_ms=0)
    waiting = {f"slow{i}" for i in range(7)}
    served: list[str] = []
    t = 0.0
    for seq in range(1, 5):
        t += 0.01
        ready = [Candidate("fast", seq, t)] + [Candidate(n, 1, 0.0) for n in sorted(waiting)]
        d = p.decide(t, ready, streaming=8)
        assert names(d.batch).count("fast") <= 1
        served += names(d.batch)
        waiting -= set(names(d.batch))
    assert set(served) == {"fast"} | {f"slow{i}" for i in range(7)}


def test_round_robin_when_all_are_always_ready() -> None:
    """With more always-ready cameras than batch places, service rotates evenly."""
    p = policy(max_batch=2, max_wait_ms=0)
    counts = {n: 0 for n in "abcde"}
    for k in range(10):
        d = p.decide(float(k), cams(*"abcde", captured=float(k)), streaming=5)
        for n in names(d.batch):
            counts[n] += 1
    assert set(counts.values()) == {4}


def test_nothing_ready_means_no_deadline() -> None:
    """With no candidates the policy neither batches nor sets a deadline (sleep until a frame arrives)."""
    d = policy().decide(5.0, [], streaming=4)
    assert d.batch == [] and d.stale == [] and d.wait_until is None
