"""A real Triton Inference Server for the tests, through PyTriton, and the class that runs it.

PyPI's `nvidia-pytriton` bundles tritonserver with only its python backend, so the model is
served by a callable bound to it that runs the exported ONNX (an entry `vistream export-triton`
wrote) with onnxruntime. Everything between the daemon and that callable is Triton's own: the
gRPC and HTTP protocols, the model config, the dynamic batcher, the statistics.

One deviation from a real repository entry: PyTriton writes the model config itself and offers
no way to add config `parameters`. The `metadata` parameter of the entry's config.pbtxt is put
into the config PyTriton generates (beside its own `workspace-path` parameter) by wrapping its
`Model._get_triton_model_config`, so the server answers the same `parameters.metadata` a real one
serving the entry would.

This file runs twice: imported by the tests (`TritonServer`, on the project's Python), and as a
script under `.venv-triton`, a venv of Debian's /usr/bin/python3 with `nvidia-pytriton`,
`numpy<2` and onnxruntime (PyTriton's python stub fails under the pyenv Python with
`_thread.RLock has no attribute _recursion_count`, and under numpy 2 PyTriton 0.7 returns empty
outputs). scripts/venv.sh builds that venv.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV = REPO_ROOT / ".venv-triton"
PYTHON = VENV / "bin" / "python"


def missing_dependency() -> str | None:
    """Why the test server cannot run here, or None."""
    if not PYTHON.is_file():
        return f"{VENV} not found (scripts/venv.sh builds it: setup_triton_venv)"
    probe = subprocess.run(
        [str(PYTHON), "-c", "import pytriton, onnxruntime, numpy; assert numpy.__version__ < '2'"],
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        return f"{PYTHON} lacks nvidia-pytriton, onnxruntime or numpy<2: {probe.stderr.strip()[-300:]}"
    return None


class TritonServer:
    """tritonserver serving one entry of a model repository, on the given ports, as a subprocess."""

    def __init__(
        self, entry: Path, grpc_port: int, http_port: int, metrics_port: int, threads: int = 1
    ) -> None:
        self.entry, self.threads = entry, threads
        self.grpc_port, self.http_port, self.metrics_port = grpc_port, http_port, metrics_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = entry.parent / f".triton-{grpc_port}.log"
        self._ready = entry.parent / f".triton-{grpc_port}.ready"

    @property
    def name(self) -> str:
        return self.entry.name

    def start(self, timeout: float = 120.0) -> Self:
        """Start the server and wait until it serves the entry: the server script creates its
        ready file once PyTriton's `run()` returned. (Not a line on its stdout: PyTriton prints
        tritonserver's own log lines there from another thread, and one of them written in the
        middle of ours left the line unrecognised and the wait blocked in `readline` for good.)
        Everything the server prints goes to `log_path`."""
        self._ready.unlink(missing_ok=True)
        cmd = [
            str(PYTHON), __file__, "--entry", str(self.entry), "--grpc-port", str(self.grpc_port),
            "--http-port", str(self.http_port), "--metrics-port", str(self.metrics_port),
            "--threads", str(self.threads), "--ready-file", str(self._ready),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = (
                    f"exited with {self.proc.returncode}"
                    if self.proc.poll() is not None
                    else f"not ready after {timeout} s"
                )
                self.stop()
                raise RuntimeError(f"the test Triton server {why}: {self.log()[-3000:]}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the server's process group (PyTriton, tritonserver, the python stubs), then SIGKILL."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        finally:
            self._reap_group(self.proc.pid)
            self.proc = None
            self._ready.unlink(missing_ok=True)

    @staticmethod
    def _reap_group(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # stubs left behind hold the ports

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def statistics(self) -> dict[str, int]:
        """Triton's own figures for the model: requests, images inferred, executions (batches)."""
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")
        try:
            stats = client.get_inference_statistics(self.name, as_json=True, client_timeout=5)
        finally:
            client.close()
        model = stats["model_stats"][0]
        return {
            "inference_count": int(model.get("inference_count", 0)),
            "execution_count": int(model.get("execution_count", 0)),
            "success_count": int(model.get("inference_stats", {}).get("success", {}).get("count", 0)),
        }

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the server side: runs under .venv-triton ------------------------------------------------------


def entry_metadata(config_pbtxt: str) -> str:
    """The `metadata` parameter's string_value in an entry's config.pbtxt (a text-format string)."""
    m = re.search(r'key:\s*"metadata"\s*value\s*\{\s*string_value:\s*"((?:[^"\\]|\\.)*)"', config_pbtxt)
    if not m:
        raise SystemExit("the entry's config.pbtxt has no metadata parameter")
    return re.sub(r"\\(.)", lambda c: {"n": "\n"}.get(c.group(1), c.group(1)), m.group(1))


def max_batch_size(config_pbtxt: str) -> int:
    m = re.search(r"^max_batch_size:\s*(\d+)", config_pbtxt, re.M)
    return int(m.group(1)) if m else 8


def serve(args: argparse.Namespace) -> None:
    import numpy as np
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.models.model import Model
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    entry = Path(args.entry)
    text = (entry / "config.pbtxt").read_text()
    metadata = entry_metadata(text)
    max_batch = max_batch_size(text)

    generate = Model._get_triton_model_config

    def with_metadata(self: Any) -> Any:
        config = generate(self)
        config.backend_parameters["metadata"] = metadata
        return config

    Model._get_triton_model_config = with_metadata  # type: ignore[method-assign]

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    session = ort.InferenceSession(
        str(entry / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    in_name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    # An `--input uint8` entry takes the batch as bytes, NHWC; the default one float32 NCHW.
    raw = session.get_inputs()[0].type == "tensor(uint8)"
    in_dtype, in_shape = (np.uint8, (-1, -1, 3)) if raw else (np.float32, (3, -1, -1))

    @batch
    def infer(**inputs: Any) -> dict[str, Any]:
        out = session.run(None, {in_name: inputs[in_name].astype(in_dtype, copy=False)})[0]
        return {out_name: out}

    sizes = sorted({max(1, max_batch // 2), max_batch})
    config = TritonConfig(
        grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port,
        grpc_address="127.0.0.1", http_address="127.0.0.1", metrics_address="127.0.0.1",
        exit_timeout_secs=2, log_verbose=0,
    )  # fmt: skip
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    # PyTriton restricts the statistics endpoint to a token of its own by default (a custom token
    # trips its own start-up checks); the tests read statistics, on 127.0.0.1 only.
    with Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=[])) as triton:
        triton.bind(
            model_name=entry.name,
            infer_func=infer,
            inputs=[Tensor(name=in_name, dtype=in_dtype, shape=in_shape)],
            outputs=[Tensor(name=out_name, dtype=np.float32, shape=(-1, -1))],
            config=ModelConfig(
                max_batch_size=max_batch,
                batcher=DynamicBatcher(preferred_batch_size=sizes, max_queue_delay_microseconds=2000),
            ),
            strict=False,
        )
        triton.run()
        Path(args.ready_file).touch()
        while not stop:
            time.sleep(0.1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--entry", required=True)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ready-file", required=True, help="created once the entry is served")
    serve(p.parse_args())
    sys.exit(0)


if __name__ == "__main__":
    main()
