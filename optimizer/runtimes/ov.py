"""OpenVINO candidate: the same forward/prefill/decode calls as torch, on a compiled CPU model.

The model is an OpenVINO IR folder (model.xml + model.bin). The CPU plugin is compiled with the
process's thread count (`INFERENCE_NUM_THREADS`, one stream, latency hint) so its figures compare
with torch and ONNX Runtime in the same process, and with an explicit `INFERENCE_PRECISION_HINT`:
left alone, the plugin runs f32 models in bf16 on CPUs with AVX-512 BF16 or AMX, which changes
both speed and quality; a user must see and choose that. Causal LMs take and return the KV cache as
plain tensors (past.{i}.key -> present.{i}.key), like the ONNX graph, so prefill and decode are one model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from optimizer.errors import UserError
from optimizer.model import load_model_info, saved_spec
from optimizer.runtimes.base import copy_files, fresh_folder
from optimizer.runtimes.graph import GraphCandidate
from optimizer.runtimes.threads import threads

MODEL_FILE = "model.xml"
PRECISIONS = ("f32", "bf16", "f16")
INSTALL_HINT = "pip install 'costopt[openvino]' (openvino and nncf)"


def require_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise UserError("the OpenVINO runtime is not installed", INSTALL_HINT) from None
    return openvino


def compile_config(precision: str, n_threads: int, streams: int = 1) -> dict[str, Any]:
    """CPU plugin properties: the thread count every runtime gets, split over `streams` streams, the
    precision asked for."""
    if precision not in PRECISIONS:
        raise UserError(f"OpenVINO inference precision {precision!r} is not known", f"use one of {', '.join(PRECISIONS)}")
    return {
        "INFERENCE_NUM_THREADS": n_threads,
        "NUM_STREAMS": streams,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": precision,
    }


@dataclass
class OvCandidate(GraphCandidate):
    MODEL_FILE: ClassVar[str] = MODEL_FILE
    precision: str = "f32"  # the CPU plugin's inference precision
    runtime: str = "openvino"
    _request: Any = field(default=None, repr=False)
    _compiled: Any = field(default=None, repr=False)
    _stream_models: dict[int, tuple[Any, Any]] = field(default_factory=dict, repr=False)  # streams -> (compiled, queue)

    @property
    def compiled(self) -> Any:
        if self._compiled is None:
            ov = require_openvino()
            self._compiled = ov.Core().compile_model(str(self.model_path), "CPU", compile_config(self.precision, threads()))
            self._request = self._compiled.create_infer_request()
        return self._compiled

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        compiled = self.compiled
        result = self._request.infer(feeds)
        # copies: the request's output buffers are reused by the next call
        return [np.array(result[out]) for out in compiled.outputs]

    def infer_streams(
        self, feeds: Sequence[dict[str, np.ndarray]], streams: int, latencies: list[float] | None
    ) -> list[list[np.ndarray]]:
        # the plugin's own streams: one compiled model, `streams` requests in flight, threads split among them
        ov = require_openvino()
        if streams not in self._stream_models:  # compiled once per stream count; its requests are reused
            config = compile_config(self.precision, threads(), streams)
            compiled = ov.Core().compile_model(str(self.model_path), "CPU", config)
            self._stream_models[streams] = (compiled, ov.AsyncInferQueue(compiled, streams))
        compiled, jobs = self._stream_models[streams]
        results: list[list[np.ndarray]] = [[] for _ in feeds]
        lat = [0.0] * len(feeds)
        submitted = [0.0] * len(feeds)

        def done(request: Any, i: int) -> None:
            results[i] = [np.array(request.get_tensor(out).data) for out in compiled.outputs]
            lat[i] = time.perf_counter() - submitted[i]

        jobs.set_callback(done)
        for i, f in enumerate(feeds):
            jobs.get_idle_request_id()  # waits for a free stream, so the latency is the batch's own run
            submitted[i] = time.perf_counter()
            jobs.start_async(f, i)
        jobs.wait_all()
        if latencies is not None:
            latencies.extend(lat)
        return results

    def derive(self, folder: Path, precision: str | None = None) -> OvCandidate:
        """The same model description over another IR folder (what each OpenVINO pass returns)."""
        return OvCandidate(
            info=self.info,
            device=self.device,
            applied=list(self.applied),
            notes=list(self.notes),
            folder=folder,
            io=dict(self.io),
            precision=precision or self.precision,
            pad_widths=dict(self.pad_widths),
        )

    def save(self, directory: Path) -> Path:
        directory = fresh_folder(directory)
        copy_files(self.model_path.parent, directory)
        self.write_common(directory, io=self.io, precision=self.precision)
        return directory

    def parameter_counts(self) -> tuple[int, int]:
        # Counted on the torch module at export: compression changes how weights are stored, not how many
        # there are, and an IR's constants mix weights with scales and shapes.
        return int(self.io["parameters"]), int(self.io["nonzero_parameters"])


def load_artifact(directory: Path, meta: dict[str, Any], device: str) -> OvCandidate:
    require_openvino()
    info = load_model_info(saved_spec(directory), meta["task"])
    return OvCandidate(info=info, device="cpu", folder=directory, io=meta["io"], precision=meta.get("precision", "f32"))
