"""ONNX Runtime candidate: the same forward/prefill/decode calls as torch, on an InferenceSession.

The session uses the process's thread count (`runtimes.threads.threads()`), so torch and ONNX Runtime
figures compare; inter-op parallelism is off for both.
"""

from __future__ import annotations

import queue
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from optimizer.model import load_model_info, saved_spec
from optimizer.runtimes.base import copy_files, fresh_folder, run_streams
from optimizer.runtimes.graph import GraphCandidate
from optimizer.runtimes.threads import threads

MODEL_FILE = "model.onnx"
# Initializers that are quantization metadata, not parameters.
_META_SUFFIXES = ("_scale", "_zero_point", "_scales", "_zero_points", "scale", "zero_point")


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


def providers(device: str) -> list[str]:
    import onnxruntime as ort

    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass
class OrtCandidate(GraphCandidate):
    MODEL_FILE: ClassVar[str] = MODEL_FILE
    runtime: str = "onnxruntime"
    _session: Any = field(default=None, repr=False)
    _stream_sessions: dict[int, list[Any]] = field(default_factory=dict, repr=False)

    def _new_session(self, n_threads: int) -> Any:
        import onnxruntime as ort

        return ort.InferenceSession(str(self.model_path), session_options(n_threads), providers=providers(self.device))

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = self._new_session(threads())
        return self._session

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)

    def infer_streams(
        self, feeds: Sequence[dict[str, np.ndarray]], streams: int, latencies: list[float] | None
    ) -> list[list[np.ndarray]]:
        # one session per stream, each with its share of the threads; a job takes whichever is free
        if streams not in self._stream_sessions:
            self._stream_sessions[streams] = [self._new_session(max(1, threads() // streams)) for _ in range(streams)]
        free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for sess in self._stream_sessions[streams]:
            free.put(sess)

        def job(f: dict[str, np.ndarray]) -> list[np.ndarray]:
            sess = free.get()
            try:
                return sess.run(None, f)
            finally:
                free.put(sess)

        return run_streams([lambda f=f: job(f) for f in feeds], streams, latencies)

    def save(self, directory: Path) -> Path:
        directory = fresh_folder(directory)
        copy_files(self.model_path.parent, directory)
        self.write_common(directory, io=self.io)
        return directory

    def parameter_counts(self) -> tuple[int, int]:
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(self.model_path))
        packed4 = {n.input[1] for n in model.graph.node if n.op_type == "MatMulNBits"}
        total = nonzero = 0
        for init in model.graph.initializer:
            if init.data_type == onnx.TensorProto.INT64 or init.name.endswith(_META_SUFFIXES):
                continue  # shapes and quantization scales are not weights
            arr = numpy_helper.to_array(init)
            if arr.size < 2:
                continue
            if init.name in packed4:  # two 4-bit codes per byte; a zero weight is not a zero code, so all count
                total += arr.size * 2
                nonzero += arr.size * 2
            else:
                total += arr.size
                nonzero += int(np.count_nonzero(arr))
        return total, nonzero


def load_artifact(directory: Path, meta: dict[str, Any], device: str) -> OrtCandidate:
    info = load_model_info(saved_spec(directory), meta["task"])
    return OrtCandidate(info=info, device=device, folder=directory, io=meta["io"])
