"""Runtimes for the forward pass: TensorFlow, or the same graph compiled by OpenVINO.

Both take a float32 batch (B, H, W, 3) of 0-255 pixels and return NumPy arrays
`(probabilities (B, 2), pooled gate features (B, C))`. OpenVINO converts the Predictor's own
traced `tf.function` at start-up (about a second; no extra file in the bundle) and runs it several
times faster on a small CPU (README, Speed); its outputs match TensorFlow's within 1e-4
(tests/test_runtime.py). Grad-CAM needs gradients and always runs in TensorFlow.

    runtime = "auto"        OpenVINO when it is installed, else TensorFlow
              "openvino"    OpenVINO, or an error if it is not installed
              "tensorflow"  TensorFlow only
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading

import numpy as np

# OpenVINO's converter sends usage telemetry over the network unless the openvino_telemetry module is
# missing (it then uses a no-op stub). Nothing leaves this machine: hide the module before openvino loads.
sys.modules.setdefault("openvino_telemetry", None)

log = logging.getLogger(__name__)
RUNTIMES = ("auto", "openvino", "tensorflow")


def resolve(runtime: str | None) -> str:
    runtime = (runtime or "auto").lower()
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if runtime == "auto":
        return "openvino" if importlib.util.find_spec("openvino") is not None else "tensorflow"
    if runtime == "openvino" and importlib.util.find_spec("openvino") is None:
        raise ValueError("runtime 'openvino' asked for, but the openvino package is not installed "
                         "(pip install -r requirements.txt)")
    return runtime


class TensorFlowForward:
    name = "tensorflow"

    def __init__(self, forward):
        self._forward = forward

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import tensorflow as tf

        probs, features = self._forward(tf.constant(x))
        return probs.numpy(), features.numpy()


def _environment_setup(framework: str) -> dict:
    """What OpenVINO's `get_environment_setup` returns (the Python and TensorFlow versions, the platform), read
    without its exec() calls."""
    from openvino.frontend.tensorflow.utils import get_imported_module_version

    env = {"python_version": ".".join(map(str, sys.version_info[:3]))}
    if framework == "tf":
        import tensorflow  # noqa: F401  (what the original imports, for sys.modules)

        env["tensorflow"] = get_imported_module_version(sys.modules["tensorflow"])
    env["sys_platform"] = sys.platform
    return env


def convert(forward):
    """`openvino.convert_model(forward)`, mended for Python 3.13: OpenVINO's TensorFlow frontend (2026.4) reads the
    TensorFlow version with exec("import tensorflow") then exec("del tensorflow"), and under PEP 667 the second
    exec no longer sees what the first bound, so every in-memory TensorFlow model failed to convert with
    "NameError: name 'tensorflow' is not defined". Where that function fails so, it is replaced by one that reads
    the same versions without exec."""
    import openvino as ov
    from openvino.frontend.tensorflow import utils

    try:
        utils.get_environment_setup("tf")
    except NameError:
        log.info("OpenVINO's get_environment_setup fails on Python %d.%d; using a mended copy",
                 *sys.version_info[:2])
        utils.get_environment_setup = _environment_setup
    root = logging.getLogger()
    level = root.level
    try:
        return ov.convert_model(forward)
    finally:  # a conversion that fails leaves the root logger at ERROR, which would hide what is logged next
        root.setLevel(level)


class OpenVINOForward:
    """The traced tf.function converted to OpenVINO and compiled for this CPU.

    With several streams it is compiled twice: a lone request runs on all the threads at once (the
    lowest latency), and requests that arrive while another runs go to the streams, one forward
    pass per stream side by side (the highest throughput). Compiled models are shared by all
    threads; each thread keeps its own infer requests (requests are not thread-safe)."""

    name = "openvino"

    def __init__(self, forward, threads: int = 0, streams: int = 1):
        import openvino as ov

        core = ov.Core()
        model = convert(forward)
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.streams = int(streams) if streams else (os.cpu_count() or 1)
        self.latency = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "LATENCY"})
        self.throughput = None
        if self.streams > 1:
            self.throughput = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "THROUGHPUT",
                                                               "NUM_STREAMS": self.streams})
        self._local = threading.local()
        self._lock = threading.Lock()
        self._running = 0

    def _request(self, alone: bool):
        key = "latency" if alone or self.throughput is None else "throughput"
        request = getattr(self._local, key, None)
        if request is None:
            request = (self.latency if key == "latency" else self.throughput).create_infer_request()
            setattr(self._local, key, request)
        return request

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            alone = self._running == 0
            self._running += 1
        try:
            request = self._request(alone)
            request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
            # copies: the request reuses its output buffers on the next call
            return request.get_output_tensor(0).data.copy(), request.get_output_tensor(1).data.copy()
        finally:
            with self._lock:
                self._running -= 1


def make_forward(forward, runtime: str | None = "auto", threads: int = 0, streams: int = 1):
    """Wrap a traced tf.function (one float32 input, outputs (probs, features)) in the chosen runtime.

    `threads`: threads for the forward pass (0: one per core); `streams` (OpenVINO only): how many
    forward passes of concurrent requests may run at once, sharing those threads (0: one per core)."""
    asked = (runtime or "auto").lower()
    runtime = resolve(runtime)
    if runtime == "openvino":
        try:
            return OpenVINOForward(forward, threads, streams)
        except Exception as exc:  # auto: serve all the same, slower; openvino asked for by name: say why it failed
            if asked != "auto":
                raise
            log.warning("OpenVINO could not convert or compile the model (%s: %s); serving with TensorFlow instead",
                        type(exc).__name__, exc)
    return TensorFlowForward(forward)
