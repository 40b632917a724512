"""`backend: triton`: a model served by a Triton Inference Server, `grpc://HOST:PORT/MODEL` or `http://...`.

Only the model runs on the server. Preprocessing (the NHWC -> NCHW reorder, cast, 1/255) and
Ultralytics' NMS are `YoloDetector`'s, as for every local backend, and the scheduler maps the boxes
back to camera pixels; so a frame gives the same boxes here as in-process. A model whose input is
uint8 `[H, W, 3]` (`vistream export-triton --input uint8`) does the preprocessing itself: it gets
the batch as the rings hold it, a quarter of the bytes of float32.

Each batch is one request, and up to `model.max_inflight` of them are in flight (`submit` /
`collect`): the scheduler builds and sends the next batch while the server runs the last. gRPC
requests go out with the client's own asynchronous call; HTTP ones from a small thread pool, one
client per thread (tritonclient's HTTP client runs its requests on gevent, which would only make
progress while the scheduler waits on it).

What the model is (class names, input size, stride, task) comes from the `metadata` parameter of
the model's Triton config, a Python literal of the dict Ultralytics' exporter writes, as
Ultralytics' own Triton client reads it (`ultralytics/utils/triton.py`); `vistream export-triton`
writes it. A model without it cannot be used: its boxes could not be named.

Failures never end the scheduler: a request that errors or times out (every call has a timeout)
raises `BackendUnavailable`, its frames are dropped (reason `backend`), and the detector is down
until a reconnect succeeds: a fresh client that reads the model config again, tried after a backoff
of 0.25 s doubling to 2 s (with jitter), so inference resumes within about two seconds of the
server's return. While down, `unavailable()` says why; /healthz shows it.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from vistream.config.models import ModelConfig, triton_url_problem
from vistream.detector.base import BackendUnavailable, ModelConfigError, ModelLoadError, Ticket
from vistream.detector.ultralytics import YoloDetector, import_runtime

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0  # reading the model config, at load and at each reconnect
REQUEST_TIMEOUT_S = 10.0  # one batch, queueing on the server included
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.25, 2.0
MAX_MESSAGE = 1 << 30  # bytes, either way
LOAD_LOG_EVERY_S = 30.0  # how often a load waiting for an unreachable server says so again

Done = Callable[[], None] | None  # called, from any thread, when a request's answer arrived
DTYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_UINT8": np.uint8}


@dataclass(frozen=True)
class TritonModel:
    """What the daemon needs to know of a model on a Triton server, from its config."""

    names: dict[int, str]
    stride: int
    imgsz: tuple[int, int]  # (height, width) it was exported at
    input_name: str
    input_dtype: Any  # np.float32 or np.float16 (NCHW, scaled), or np.uint8 (NHWC, as the rings hold it)
    input_type: str  # "FP32" / "FP16" / "UINT8", as the protocol names it
    fixed_hw: tuple[int, int] | None  # the only input size it takes, or None (dynamic)
    output_name: str
    max_batch_size: int  # 0: the model takes no batch dimension

    @property
    def raw_bytes(self) -> bool:
        """Does the model take the batch as bytes, NHWC (and reorder, cast and scale it itself)?"""
        return self.input_dtype is np.uint8


def parse_url(url: str) -> tuple[str, str, str]:
    """`grpc://host:8001/yolov8n` -> ("grpc", "host:8001", "yolov8n")."""
    if problem := triton_url_problem(url):
        raise ModelLoadError(f"model.path: {problem}")
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc, parts.path.strip("/")


def _literal(value: Any, what: str, where: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError) as exc:
        field = f"metadata {what}" if what else "metadata"
        raise ModelLoadError(f"model.path: {where}: {field} is not a Python literal: {exc}") from exc


def parse_model_config(config: dict[str, Any], where: str) -> TritonModel:
    """A Triton model config (as JSON, as both clients return it) -> `TritonModel`.

    `where` names the model in errors. Raises ModelLoadError naming what is missing or wrong.
    """
    meta_text = (config.get("parameters") or {}).get("metadata", {}).get("string_value")
    if not meta_text:
        raise ModelLoadError(
            f"model.path: {where} has no `metadata` parameter in its Triton config, so its class names, "
            "input size and stride are unknown: write the entry with `vistream export-triton`, or add "
            'parameters { key: "metadata" value { string_value: "<the Ultralytics export metadata>" } }'
        )
    meta = _literal(meta_text, "", where)
    if not isinstance(meta, dict):
        raise ModelLoadError(f"model.path: {where}: metadata is not a dict (got {type(meta).__name__})")
    task = meta.get("task", "detect")
    if task != "detect":
        raise ModelLoadError(f"model.path: {where} is a {task!r} model; vistream runs detection models")
    names = _literal(meta.get("names"), "names", where)
    if not isinstance(names, dict) or not names:
        raise ModelLoadError(f"model.path: {where}: metadata carries no class names (`names`)")
    try:
        names = {int(k): str(v) for k, v in names.items()}
        stride = int(meta.get("stride", 32))
        imgsz_raw = _literal(meta.get("imgsz", [640, 640]), "imgsz", where)
        sides = [int(s) for s in (imgsz_raw if isinstance(imgsz_raw, list | tuple) else [imgsz_raw] * 2)]
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"model.path: {where}: unreadable metadata: {exc}") from exc
    if len(sides) != 2 or stride <= 0:
        raise ModelLoadError(f"model.path: {where}: metadata imgsz {imgsz_raw!r} / stride {stride} unusable")
    inputs, outputs = config.get("input") or [], config.get("output") or []
    if len(inputs) != 1 or not outputs:
        raise ModelLoadError(
            f"model.path: {where} has {len(inputs)} inputs and {len(outputs)} outputs; a YOLO detection "
            "model has one image input and its predictions as the first output"
        )
    inp = inputs[0]
    dtype = inp.get("data_type", "")
    if dtype not in DTYPES:
        raise ModelLoadError(
            f"model.path: {where}: input {inp.get('name')!r} is {dtype}, not TYPE_FP32/FP16 (or TYPE_UINT8)"
        )
    dims = [int(d) for d in inp.get("dims", [])]
    max_batch_size = int(config.get("max_batch_size", 0))
    image = dims if max_batch_size > 0 else dims[1:]
    if dtype == "TYPE_UINT8":  # bytes as the rings hold them: height, width, RGB
        if len(image) != 3 or image[2] != 3:
            raise ModelLoadError(
                f"model.path: {where}: TYPE_UINT8 input dims {dims} are not [height, width, 3]"
            )
        hw = image[0], image[1]
    else:
        if len(image) != 3 or image[0] not in (3, -1):
            raise ModelLoadError(f"model.path: {where}: input dims {dims} are not [3, height, width]")
        hw = image[1], image[2]
    fixed = hw if hw[0] > 0 and hw[1] > 0 else None
    output = sorted(outputs, key=lambda o: o.get("name", ""))[0]  # output0 first, as Ultralytics does
    return TritonModel(
        names=names,
        stride=stride,
        imgsz=(sides[0], sides[1]),
        input_name=str(inp["name"]),
        input_dtype=DTYPES[dtype],
        input_type=dtype.removeprefix("TYPE_"),
        fixed_hw=fixed,
        output_name=str(output["name"]),
        max_batch_size=max_batch_size,
    )


class _Ticket(Ticket):
    """A request in flight: done when the server's answer (or error) arrived."""

    __slots__ = ("event", "raw", "started")

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.event = threading.Event()
        self.raw: np.ndarray | None = None
        self.started = time.monotonic()

    def done(self) -> bool:
        return self.event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(timeout)

    def finish(self, raw: np.ndarray | None, error: BaseException | None) -> None:
        self.raw, self.error = raw, error
        self.event.set()


class _Grpc:
    """gRPC transport: the client's own asynchronous calls, answered on its threads."""

    def __init__(self, client_mod: Any, url: str) -> None:
        self.mod = client_mod
        # Short reconnect backoff in the channel itself too: its default grows to two minutes.
        # A batch's input and raw output run to tens of MB (8 x 3 x 640 x 640 floats in, 8 x 84 x
        # 8400 out), past gRPC's default 4 MB message limit.
        args = [
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
        ]
        self.client = client_mod.InferenceServerClient(url=url, channel_args=args)

    def config(self, model: str) -> dict[str, Any]:
        answer = self.client.get_model_config(model, as_json=True, client_timeout=CONNECT_TIMEOUT_S)
        return dict(answer["config"])

    def send(self, model: str, inputs: list[Any], output: str, ticket: _Ticket, done: Done) -> None:
        def answered(result: Any, error: Any) -> None:
            ticket.finish(None if error else result.as_numpy(output), error)
            if done is not None:
                done()

        self.client.async_infer(
            model, inputs, answered, outputs=[self.mod.InferRequestedOutput(output)],
            client_timeout=REQUEST_TIMEOUT_S,
        )  # fmt: skip

    def close(self) -> None:
        self.client.close()


class _Http:
    """HTTP transport: each request on a pool thread with its own client (not shared across threads)."""

    def __init__(self, client_mod: Any, url: str, workers: int) -> None:
        self.mod, self.url = client_mod, url
        self.local = threading.local()
        self.clients: list[Any] = []
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="triton-http")

    def _client(self) -> Any:
        client = getattr(self.local, "client", None)
        if client is None:
            client = self.mod.InferenceServerClient(
                url=self.url, connection_timeout=CONNECT_TIMEOUT_S, network_timeout=REQUEST_TIMEOUT_S
            )
            self.local.client = client
            self.clients.append(client)
        return client

    def config(self, model: str) -> dict[str, Any]:
        return dict(self.pool.submit(lambda: self._client().get_model_config(model)).result())

    def send(self, model: str, inputs: list[Any], output: str, ticket: _Ticket, done: Done) -> None:
        def run() -> None:
            try:
                result = self._client().infer(model, inputs, outputs=[self.mod.InferRequestedOutput(output)])
                ticket.finish(result.as_numpy(output), None)
            except Exception as exc:  # a dropped connection, a timeout, the server's error
                ticket.finish(None, exc)
            if done is not None:
                done()

        self.pool.submit(run)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for client in self.clients:
            with contextlib.suppress(Exception):  # a client on a dead connection
                client.close()


class TritonDetector(YoloDetector):
    backend = "triton"

    def __init__(self, cfg: ModelConfig, max_batch: int) -> None:
        self.scheme, self.server, self.model_name = parse_url(cfg.path)
        module = "tritonclient.grpc" if self.scheme == "grpc" else "tritonclient.http"
        self._mod = import_runtime("triton", module, "triton")
        self._where = f"Triton model {self.model_name!r} at {self.scheme}://{self.server}"
        self.max_inflight = cfg.max_inflight
        self._transport = self._connect_at_load()
        self.info = info = parse_model_config(self._config(self._transport), self._where)
        if info.max_batch_size < max_batch:
            raise ModelConfigError(
                f"batching.max_batch: {max_batch} is more than the max_batch_size {info.max_batch_size} of "
                f"{self._where}; lower it, or export with a larger --max-batch"
            )
        self.stride = info.stride
        if info.fixed_hw is not None:  # the model takes one size only: that is the batch shape
            cfg = cfg.model_copy(update={"imgsz": info.fixed_hw})
        self._setup(cfg, max_batch, info.names, device="cpu", half=info.input_dtype is np.float16)
        self.fixed_input = info.fixed_hw
        self.device = f"triton {self.scheme}://{self.server}"
        self.precision = "server"  # the server's model config decides (model.precision must be auto)
        self._down: str | None = None
        self._retry_at = 0.0
        self._delay = BACKOFF_FIRST_S
        self._down_since = 0.0
        self.describe(f"{self.model_name}, exported at {info.imgsz[0]}x{info.imgsz[1]}", cfg.path)

    # -- connection --------------------------------------------------------------------------

    def _new_transport(self) -> _Grpc | _Http:
        if self.scheme == "grpc":
            return _Grpc(self._mod, self.server)
        return _Http(self._mod, self.server, self.max_inflight)

    def _config(self, transport: _Grpc | _Http) -> dict[str, Any]:
        try:
            return transport.config(self.model_name)
        except Exception as exc:
            raise BackendUnavailable(f"{self._where}: {_short(exc)}") from exc

    def _connect_at_load(self) -> _Grpc | _Http:
        """A transport whose server answered with the model's config. An unreachable server is
        waited for (it may be starting too): the daemon comes up when it does. A server that
        answers without the model is a load error."""
        delay, last_log = BACKOFF_FIRST_S, 0.0
        while True:
            transport = self._new_transport()
            try:
                transport.config(self.model_name)
                return transport
            except Exception as exc:
                transport.close()
                if _model_unknown(exc):
                    raise ModelLoadError(f"model.path: {self._where}: {_short(exc)}") from exc
                now = time.monotonic()
                if now - last_log >= LOAD_LOG_EVERY_S:
                    log.warning("%s does not answer (%s): waiting for it", self._where, _short(exc))
                    last_log = now
            time.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _mark_down(self, reason: str) -> None:
        now = time.monotonic()
        if self._down is None:
            log.warning("%s is unavailable: %s; frames are dropped until it is back", self._where, reason)
            self._down_since = now
            self._delay = BACKOFF_FIRST_S
        self._down = reason
        self._retry_at = now + self._delay * random.uniform(0.8, 1.2)
        self._delay = min(self._delay * 2, BACKOFF_MAX_S)

    def _reconnect(self) -> None:
        """A fresh client, checked by reading the model config again (the server may have been
        restarted with another model: one with other class names is not used)."""
        self._transport.close()
        self._transport = self._new_transport()
        try:
            info = parse_model_config(self._config(self._transport), self._where)
        except (BackendUnavailable, ModelLoadError) as exc:
            self._mark_down(str(exc))
            raise BackendUnavailable(str(exc)) from exc
        if info.names != self.info.names or info.input_dtype is not self.info.input_dtype:
            self._mark_down(f"{self._where} changed (class names or input type): restart vistream to use it")
            raise BackendUnavailable(self._down or "")
        log.warning("%s answers again after %.1fs", self._where, time.monotonic() - self._down_since)
        self._down = None
        self._delay = BACKOFF_FIRST_S

    def unavailable(self) -> str | None:
        if self._down is not None and time.monotonic() < self._retry_at:
            return self._down
        return None

    # -- batches -----------------------------------------------------------------------------

    def submit(self, n: int, done: Callable[[], None] | None = None) -> Ticket:
        if self._down is not None:
            if time.monotonic() < self._retry_at:
                raise BackendUnavailable(self._down)
            self._reconnect()
        if self.info.raw_bytes:  # the model reorders, casts and scales on the server
            x = self.input_buffer[:n]
        else:
            with self._torch.inference_mode():
                x = self._preprocess(n).numpy()
        inp = self._mod.InferInput(self.info.input_name, list(x.shape), self.info.input_type)
        inp.set_data_from_numpy(x)  # serialised (copied) here: `input_buffer` is free again
        ticket = _Ticket(n)
        try:
            self._transport.send(self.model_name, [inp], self.info.output_name, ticket, done)
        except Exception as exc:  # the client refused to start the call
            self._mark_down(_short(exc))
            raise BackendUnavailable(f"{self._where}: {_short(exc)}") from exc
        return ticket

    def collect(self, ticket: Ticket, timeout: float | None = None) -> list[np.ndarray]:
        assert isinstance(ticket, _Ticket)
        limit = REQUEST_TIMEOUT_S + 1.0 if timeout is None else timeout
        if not ticket.wait(limit):
            reason = f"no answer within {limit:g}s"
            self._mark_down(reason)
            raise BackendUnavailable(f"{self._where}: {reason}")
        if ticket.error is not None or ticket.raw is None:
            reason = _short(ticket.error) if ticket.error is not None else "an answer without predictions"
            self._mark_down(reason)
            raise BackendUnavailable(f"{self._where}: {reason}") from ticket.error
        raw = ticket.raw[: ticket.n]
        if not raw.flags.writeable:  # the client's view of its response buffer; torch wants its own
            raw = raw.copy()
        with self._torch.inference_mode():
            return self._postprocess(raw)

    def infer(self, n: int) -> list[np.ndarray]:
        return self.collect(self.submit(n))

    def _forward(self, x: Any) -> Any:  # every batch goes through submit/collect
        raise NotImplementedError

    def close(self) -> None:
        self._transport.close()


def _short(exc: BaseException | None) -> str:
    """One line for an exception, without the gRPC debug string (which runs to a paragraph)."""
    if exc is None:
        return ""
    text = str(exc).split("debug_error_string", 1)[0].strip().rstrip(",( ")
    return " ".join(text.split())[:300] or type(exc).__name__


def _model_unknown(exc: BaseException) -> bool:
    """The server answered, and does not have the model (or has it unloaded): not worth waiting for."""
    text = str(exc).lower()
    return "unknown model" in text or "not found" in text
