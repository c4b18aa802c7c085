"""OpenVINO candidate: the same forward/prefill/decode calls as torch, on a compiled CPU model.

The model is an OpenVINO IR folder (model.xml + model.bin). The CPU plugin is compiled with the
process's thread count (`INFERENCE_NUM_THREADS`, one stream, latency hint) so its figures compare
with torch and ONNX Runtime in the same process, and with an explicit `INFERENCE_PRECISION_HINT`:
left alone, the plugin runs f32 models in bf16 on CPUs with AVX-512 BF16 or AMX, which changes
both speed and quality; a user must see and choose that. Causal LMs take and return the KV cache as
plain tensors (past.{i}.key -> present.{i}.key), like the ONNX graph, so prefill and decode are one model.

Static widths (`static_step`, set by the ov-static-shapes pass): the CPU plugin runs a model compiled for
one input shape faster than the same model compiled for any shape (1.10x [1.02, 1.15] on all-MiniLM-L6-v2
int8 at the bf16 hint, Xeon with AMX, experiments/minilm-cpu: the matmuls and the fused attention both pick
better kernels), so an encoder
can be served by one compiled model per input shape: widths are padded (masked, on the right) up to their
bucket and rows up to a power of two, each shape's model is compiled the first time a request needs it
(about 0.4 s), and outputs come back at the caller's shape. Each compiled model holds its own repacked
weights and buffers (about 90 MiB each for the int8 MiniLM, measured), which is why shapes are bucketed
rather than exact and at most `max_shapes` are kept (the least recently used is dropped).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from optimizer.errors import UserError
from optimizer.model import load_model_info, saved_spec
from optimizer.runtimes.base import copy_files, fresh_folder, run_streams
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


_CORE: Any = None


def _core() -> Any:
    """One OpenVINO Core for the static-width models: one CPU plugin, so the many compiled models share its
    executors (measured: a Core per compiled model took most of their speed-up away)."""
    global _CORE
    if _CORE is None:
        _CORE = require_openvino().Core()
    return _CORE


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


def static_width(width: int, step: int, limit: int) -> int:
    """The bucket an input `width` tokens wide is served at: rounded up to a multiple of `step`, or of an
    eighth of the next power of two when that is coarser (padding stays under a quarter of the width, and
    the number of buckets grows with the log of the limit: 16 up to 256 tokens at step 8), never past the
    model's `limit` unless the input itself is wider."""
    grain = max(step, (1 << max(width - 1, 1).bit_length()) // 8)
    return max(width, min(-(-width // grain) * grain, limit))


@dataclass
class _StaticModel:
    """One input shape's compiled model and its idle infer requests (one per stream that has used it)."""

    compiled: Any
    idle: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)


@dataclass
class OvCandidate(GraphCandidate):
    MODEL_FILE: ClassVar[str] = MODEL_FILE
    precision: str = "f32"  # the CPU plugin's inference precision
    runtime: str = "openvino"
    _request: Any = field(default=None, repr=False)
    _compiled: Any = field(default=None, repr=False)
    _stream_models: dict[int, tuple[Any, Any]] = field(default_factory=dict, repr=False)  # streams -> (compiled, queue)
    static_step: int = 0  # 0: one model for every width; n: one model per width bucket (static_width)
    max_shapes: int = 32  # compiled shapes kept at once; the least recently used one goes first
    _static: OrderedDict[tuple[int, int, int], _StaticModel] = field(
        default_factory=OrderedDict, repr=False
    )  # (rows, width, threads)
    _static_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def compiled(self) -> Any:
        if self._compiled is None:
            ov = require_openvino()
            self._compiled = ov.Core().compile_model(str(self.model_path), "CPU", compile_config(self.precision, threads()))
            self._request = self._compiled.create_infer_request()
        return self._compiled

    @property
    def compiled_per_shape(self) -> bool:
        return bool(self.static_step)

    def served_width(self, width: int) -> int:
        width = super().served_width(width)
        return static_width(width, self.static_step, self.info.limit) if self.static_step else width

    def _static_model(self, rows: int, width: int, n_threads: int) -> _StaticModel:
        key = (rows, width, n_threads)
        with self._static_lock:  # streams may ask for the same new shape at once: compiled once
            if key in self._static:
                self._static.move_to_end(key)
            else:
                ov = require_openvino()
                model = _core().read_model(str(self.model_path))
                model.reshape({port.get_any_name(): ov.PartialShape([rows, width]) for port in model.inputs})
                # Not pinned: each shape is its own compiled model, and pinned ones would all put their
                # first stream on the same core (measured: two streams ran at the speed of one).
                config = compile_config(self.precision, n_threads) | {"ENABLE_CPU_PINNING": False}
                self._static[key] = _StaticModel(_core().compile_model(model, "CPU", config))
                while len(self._static) > self.max_shapes:  # each holds its own repacked weights (~90 MiB on MiniLM)
                    self._static.popitem(last=False)
            return self._static[key]

    def _infer_static(self, feeds: dict[str, np.ndarray], n_threads: int) -> list[np.ndarray]:
        # The batch is static too (a dynamic one gave back half the gain, measured): rows are padded up to
        # a power of two, so a short last batch reuses a model; padded rows are fully masked and dropped.
        rows, width = feeds["input_ids"].shape
        served = 1 << (rows - 1).bit_length()
        if served > rows:
            pad = self.tokenizer.pad_token_id or 0
            feeds = {
                "input_ids": np.pad(feeds["input_ids"], ((0, served - rows), (0, 0)), constant_values=pad),
                "attention_mask": np.pad(feeds["attention_mask"], ((0, served - rows), (0, 0))),
            }
        model = self._static_model(served, width, n_threads)
        try:
            request = model.idle.get_nowait()
        except queue.Empty:
            request = model.compiled.create_infer_request()
        try:
            request.infer(feeds)
            return [np.array(request.get_tensor(out).data[:rows]) for out in model.compiled.outputs]
        finally:
            model.idle.put(request)

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.static_step:
            return self._infer_static(feeds, threads())
        compiled = self.compiled
        result = self._request.infer(feeds)
        # copies: the request's output buffers are reused by the next call
        return [np.array(result[out]) for out in compiled.outputs]

    def infer_streams(
        self, feeds: Sequence[dict[str, np.ndarray]], streams: int, latencies: list[float] | None
    ) -> list[list[np.ndarray]]:
        if self.static_step:  # one worker thread per stream, each running its batch on its share of the threads
            per_stream = max(1, threads() // streams)
            jobs = [lambda f=f: self._infer_static(f, per_stream) for f in feeds]
            return run_streams(jobs, streams, latencies)
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
            static_step=self.static_step,
            max_shapes=self.max_shapes,
        )

    def serving_copy(self) -> OvCandidate:
        return self.derive(self.folder) if self.static_step else self

    def save(self, directory: Path) -> Path:
        directory = fresh_folder(directory)
        copy_files(self.model_path.parent, directory)
        self.write_common(
            directory,
            io=self.io,
            precision=self.precision,
            **({"static_step": self.static_step, "max_shapes": self.max_shapes} if self.static_step else {}),
        )
        return directory

    def parameter_counts(self) -> tuple[int, int]:
        # Counted on the torch module at export: compression changes how weights are stored, not how many
        # there are, and an IR's constants mix weights with scales and shapes.
        return int(self.io["parameters"]), int(self.io["nonzero_parameters"])


def load_artifact(directory: Path, meta: dict[str, Any], device: str) -> OvCandidate:
    require_openvino()
    info = load_model_info(saved_spec(directory), meta["task"])
    return OvCandidate(
        info=info,
        device="cpu",
        folder=directory,
        io=meta["io"],
        precision=meta.get("precision", "f32"),
        static_step=int(meta.get("static_step", 0)),
        max_shapes=int(meta.get("max_shapes", 32)),
    )
