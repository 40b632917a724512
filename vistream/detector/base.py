"""The small interface every inference backend implements.

A batch of preprocessed frames goes in (the scheduler fills `input_buffer`
in place: letterboxed RGB uint8, one row per frame), boxes come out in
model-input pixels. Mapping them back to camera pixels is the scheduler's
job, so a backend never sees ring or camera details.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np

# A test hook, set in the environment only (the config file cannot reach it): see `FaultHook`.
FAULT_FILE_ENV = "VISTREAM_TEST_FAULT_FILE"


class ModelLoadError(Exception):
    """The model could not be loaded or warmed up: the daemon cannot boot (exit 3)."""


class ModelConfigError(Exception):
    """The model loaded but the config does not fit it (e.g. an unknown class): exit 2."""


class BackendUnavailable(Exception):
    """A remote backend (Triton) is down, refused a batch or did not answer it in time.

    Not a fault of this process: the scheduler drops the batch's frames (reason `backend`) and
    carries on, and the backend reconnects on its own; it never counts toward the scheduler's
    consecutive failures, so an outage elsewhere cannot crash-loop it.
    """


class Ticket:
    """A batch handed to `Detector.submit`: its result, or the error it ended with, once done."""

    __slots__ = ("error", "n", "result")

    def __init__(self, n: int) -> None:
        self.n = n
        self.result: list[np.ndarray] | None = None
        self.error: BaseException | None = None

    def done(self) -> bool:
        return self.result is not None or self.error is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until done or `timeout` s passed; whether it is done."""
        return self.done()


class Detector(ABC):
    """A loaded model that turns a batch of frames into boxes.

    Attributes set by implementations:
        names: class id -> label.
        device: where inference runs, e.g. "cpu" or "cuda:0".
        half: whether the batch goes to the model in fp16.
        backend: the `model.backend` it is (what `auto` resolved to).
        precision: what the model computes in, as the runtime reports it: fp32, fp16,
            bf16, or `server` (Triton: the server's model config decides).
        input_buffer: (max_batch, height, width, 3) uint8 array the caller fills;
            rows [0, n) are inferred by `infer(n)`, at the current batch shape
            (height, width). On CUDA it is pinned host memory.
        fixed_input: the only (height, width) the model takes (an export with a
            static input size), or None when `reshape` takes any smaller shape.
        max_inflight: how many batches may be submitted before the first is
            collected (1: `submit` runs the batch before it returns).
    """

    names: dict[int, str]
    backend: str
    device: str
    half: bool
    precision: str = "fp32"
    input_buffer: np.ndarray
    fixed_input: tuple[int, int] | None = None
    max_inflight: int = 1

    @property
    def input_hw(self) -> tuple[int, int]:
        """The current batch shape, (height, width)."""
        return int(self.input_buffer.shape[1]), int(self.input_buffer.shape[2])

    def reshape(self, height: int, width: int) -> None:
        """Take batches of height x width from now on: `input_buffer` is replaced by one of that
        shape (the caller warms the model up for it). At most the configured `model.imgsz`."""
        if (height, width) != self.input_hw:
            raise ValueError(f"this model only takes {self.input_hw[0]}x{self.input_hw[1]} inputs")

    @abstractmethod
    def infer(self, n: int) -> list[np.ndarray]:
        """Run the first `n` rows of `input_buffer`.

        Returns one float32 array of shape (k, 6) per frame: x1, y1, x2, y2,
        confidence, class id, in model-input pixels, after NMS.
        """

    def submit(self, n: int, done: Callable[[], None] | None = None) -> Ticket:
        """Start on the first `n` rows of `input_buffer`; `collect` the ticket for the boxes.

        Once it returns, `input_buffer` is free for the next batch (what the batch needs was
        taken). `done` may be called, from any thread, when the result is ready. Up to
        `max_inflight` tickets may be outstanding; they complete in any order. This default runs
        the batch here and now, so a local backend is exactly as fast as through `infer`.
        """
        ticket = Ticket(n)
        try:
            ticket.result = self.infer(n)
        except Exception as exc:
            ticket.error = exc
        return ticket

    def collect(self, ticket: Ticket, timeout: float | None = None) -> list[np.ndarray]:
        """The boxes of a submitted batch, as `infer` returns them; raises what the batch raised.
        Blocks until it is done (at most `timeout` s, then BackendUnavailable)."""
        if not ticket.wait(timeout):
            raise BackendUnavailable(f"no answer within {timeout:g}s")
        if ticket.error is not None:
            raise ticket.error
        assert ticket.result is not None
        return ticket.result

    def unavailable(self) -> str | None:
        """Why no batch should be submitted now (a remote backend down, waiting out its reconnect
        backoff), or None. A local backend is always available."""
        return None

    def warmup(self) -> None:
        """Run the shapes the daemon will use once, so the first real batch is not slow."""
        for n in sorted({1, len(self.input_buffer)}):
            self.input_buffer[:n] = 114
            self.infer(n)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device memory and handles."""


class FaultHook(Detector):
    """A test hook around a real detector: a batch hangs or raises when a file says so.

    `load_detector` puts it in place only when the environment names the file (`FAULT_FILE_ENV`);
    no config key leads here. Before each batch the file is read: `hang` blocks the batch while
    the file says so (the scheduler stops making progress, as with a wedged driver), `raise`
    makes the batch raise; anything else, or no file, runs the batch. Warm-up is left alone.
    """

    def __init__(self, inner: Detector, path: Path) -> None:
        self.inner, self.path = inner, path
        self.names, self.device, self.half = inner.names, inner.device, inner.half
        self.precision, self.backend = inner.precision, inner.backend
        self.fixed_input = inner.fixed_input
        self.input_buffer = inner.input_buffer

    def reshape(self, height: int, width: int) -> None:
        self.inner.reshape(height, width)
        self.input_buffer = self.inner.input_buffer

    def _fault(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def infer(self, n: int) -> list[np.ndarray]:
        while (fault := self._fault()) == "hang":
            time.sleep(0.05)
        if fault == "raise":
            raise RuntimeError(f"fault injected through {FAULT_FILE_ENV}")
        return self.inner.infer(n)

    def warmup(self) -> None:
        self.inner.warmup()

    def close(self) -> None:
        self.inner.close()
