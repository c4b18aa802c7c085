"""ONNX export and ONNX Runtime passes: graph optimization, int8 dynamic/static, int4 weight-only.

Every runtime pass reads the incoming candidate's model.onnx and writes a new folder under the
run's work directory, so each step's artifact stays intact for saving and comparison.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from optimizer.errors import UserError
from optimizer.passes.base import Pass, PassConfig, PassContext

if TYPE_CHECKING:
    import numpy as np

    from optimizer.runtimes import Candidate
    from optimizer.runtimes.ort import OrtCandidate


class _NoPreprocessAdvice(logging.Filter):
    """onnxruntime's quantizers log advice to run its shape-inference pre-processing on every call, on the
    root logger; our graphs come from our own exporter with shapes inferred, so the line is only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing before quantization")


logging.getLogger().addFilter(_NoPreprocessAdvice())

ORT = frozenset({"onnxruntime"})


def _derive(cand: OrtCandidate, folder: Path) -> OrtCandidate:
    from optimizer.runtimes.ort import OrtCandidate

    return OrtCandidate(
        info=cand.info, device=cand.device, applied=list(cand.applied), notes=list(cand.notes), folder=folder, io=dict(cand.io)
    )


def external_data(model_path: Path) -> bool:
    """Whether the graph keeps its weights in files beside it: the exporter does so past protobuf's 2 GB
    limit (a 1B-parameter model in fp32), and a quantizer's output must then do the same."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(t) for t in onnx.load(str(model_path), load_external_data=False).graph.initializer)


# ---------------------------------------------------------------- export


class ExportConfig(PassConfig):
    opset: int = Field(default=17, ge=14, le=21)
    tolerance: float = Field(default=1e-3, gt=0, description="max |torch - onnx| on real tokens, relative to max |torch|")
    parity_texts: int = Field(default=16, ge=2)


class OnnxExport(Pass):
    """Export to ONNX (fp32; KV cache for causal LMs) and check it against torch on padded batches."""

    name = "onnx-export"
    family = "export"
    VERSION = 2  # the KV cache is seeded without a concatenation to an empty tensor
    runtime_out = "onnxruntime"
    Config = ExportConfig

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        from optimizer.onnx_export import export
        from optimizer.passes.calibration import next_folder, sample_texts
        from optimizer.passes.parity import check_parity
        from optimizer.runtimes import TorchCandidate
        from optimizer.runtimes.ort import MODEL_FILE, OrtCandidate

        assert isinstance(candidate, TorchCandidate)
        folder = next_folder(ctx, self.name)
        module = candidate.module.float().cpu()  # the exported graph is fp32; parity is against this module
        reference = TorchCandidate(info=candidate.info, module=module, device="cpu")
        io = export(module, candidate.task, folder / MODEL_FILE, self.config.opset)
        ort_cand = OrtCandidate(
            info=candidate.info,
            device=ctx.device,
            applied=list(candidate.applied),
            notes=list(candidate.notes),
            folder=folder,
            io=io,
        )
        ort_cand.notes.append(
            check_parity(
                self.name, "ONNX Runtime", reference, ort_cand, sample_texts(ctx, self.config.parity_texts), self.config.tolerance
            )
        )
        candidate.module = None  # the torch weights are no longer needed
        return ort_cand


# ---------------------------------------------------------------- graph optimization


class OptimizeConfig(PassConfig):
    level: Literal["basic", "extended"] = Field(
        default="extended", description="ORT's offline level; 'all' is applied at load time, as it is hardware-specific"
    )
    fusions: bool = Field(default=True, description="transformer fusions (attention, layer norm, GELU) for encoders")


class OrtOptimize(Pass):
    """Offline graph optimization; for encoders also onnxruntime.transformers' attention/LayerNorm/GELU fusions."""

    name = "ort-optimize"
    family = "export"
    runtimes_in = ORT
    runtime_out = "onnxruntime"
    Config = OptimizeConfig

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        import onnxruntime as ort

        from optimizer.passes.calibration import next_folder
        from optimizer.runtimes.ort import MODEL_FILE, OrtCandidate, session_options

        assert isinstance(candidate, OrtCandidate)
        folder = next_folder(ctx, self.name)
        target = folder / MODEL_FILE
        source = candidate.model_path
        if self.config.fusions and candidate.task != "causal-lm":
            from onnxruntime.transformers.optimizer import optimize_model

            # Head count and width from the exported config: the graph's reshapes say -1 for heads.
            optimized = optimize_model(
                str(source),
                model_type="bert",
                opt_level=0,
                num_heads=candidate.io.get("num_heads", 0),
                hidden_size=candidate.io.get("hidden_size", 0),
            )
            fused = optimized.get_fused_operator_statistics()
            optimized.save_model_to_file(str(folder / "fused.onnx"))
            source = folder / "fused.onnx"
            counts = ", ".join(f"{k} {v}" for k, v in sorted(fused.items()) if v)
            candidate.notes.append(f"ort-optimize fusions: {counts or 'none matched'}")
        so = session_options(ctx.threads)
        so.graph_optimization_level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        }[self.config.level]
        so.optimized_model_filepath = str(target)
        if external_data(source):
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{MODEL_FILE}.data")
        ort.InferenceSession(str(source), so, providers=["CPUExecutionProvider"])
        if source != candidate.model_path:
            source.unlink()
        return _derive(candidate, folder)


# ---------------------------------------------------------------- int8


# MatMuls with two activation inputs (attention scores) stay in float; fused contrib ops defeat ONNX
# shape inference, so their outputs are declared float.
_QUANT_OPTIONS = {"MatMulConstBOnly": True, "DefaultTensorType": 1}  # 1 = onnx.TensorProto.FLOAT


def _node_choice(model_path: Path, wanted_ops: list[str], exclude: list[str]) -> tuple[list[str], list[str]]:
    """From one read of the graph: the wanted op types it contains, and node names matching `exclude` regexes."""
    import onnx

    nodes = onnx.load(str(model_path), load_external_data=False).graph.node
    present = {n.op_type for n in nodes}
    excluded = [n.name for n in nodes if any(re.search(p, n.name) for p in exclude)]
    return [op for op in wanted_ops if op in present], excluded


# A causal LM's FFN output projection (Llama's down_proj, OPT's fc2, GPT-2's c_proj, GPT-NeoX's
# dense_4h_to_h) reads the activations with the largest outliers; one int8 scale per tensor of them wrecks a
# real LLM: on SmolLM2-135M (AVX2, 7-bit weights) KL to the baseline 0.72 nats per token with it quantized,
# 0.11 with it kept in float (24 stdlib docstrings, measured 2026-12-07).
LLM_FFN_OUTPUT = r"/mlp/(down_proj|fc2|c_proj|dense_4h_to_h)/"


class DynamicInt8Config(PassConfig):
    per_channel: bool = True
    reduce_range: bool | Literal["auto"] = Field(
        default="auto",
        description="7-bit weights; auto: where the CPU's int8 dot products saturate (x86 without VNNI), "
        "which otherwise wreck per-channel weights",
    )
    op_types: list[Literal["MatMul", "Gemm", "Attention", "Gather", "Conv"]] = ["MatMul", "Gemm", "Attention"]
    weight_type: Literal["int8", "uint8"] = "int8"
    exclude: list[str] | None = Field(
        default=None,
        description="regexes on ONNX node names to keep in float; None: for causal LMs the FFN output "
        f"projections ({LLM_FFN_OUTPUT}), for other tasks none",
    )


class OrtInt8Dynamic(Pass):
    """Dynamic int8: weights quantized offline, activations per batch at run time (no calibration)."""

    name = "ort-int8-dynamic"
    family = "quantization"
    VERSION = 2  # defaults that keep a real LLM intact: 7-bit weights where int8 dots saturate, FFN outputs in float
    batch_dependent = True  # one activation scale per tensor of the batch
    runtimes_in = ORT
    runtime_out = "onnxruntime"
    Config = DynamicInt8Config

    @classmethod
    def compute_dtype(cls, params: dict[str, Any]) -> str | None:
        return "int8"

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from optimizer.measure.system import int8_dot_saturates
        from optimizer.passes.calibration import next_folder
        from optimizer.runtimes.ort import MODEL_FILE, OrtCandidate

        assert isinstance(candidate, OrtCandidate)
        folder = next_folder(ctx, self.name)
        c = self.config
        exclude = c.exclude if c.exclude is not None else ([LLM_FFN_OUTPUT] if ctx.task == "causal-lm" else [])
        reduce_range = int8_dot_saturates() if c.reduce_range == "auto" else c.reduce_range
        ops, excluded = _node_choice(candidate.model_path, c.op_types, exclude)
        quantize_dynamic(
            candidate.model_path,
            folder / MODEL_FILE,
            per_channel=c.per_channel,
            reduce_range=reduce_range,
            op_types_to_quantize=ops,
            weight_type=QuantType.QInt8 if c.weight_type == "int8" else QuantType.QUInt8,
            nodes_to_exclude=excluded,
            extra_options=_QUANT_OPTIONS,
            use_external_data_format=external_data(candidate.model_path),
        )
        out = _derive(candidate, folder)
        out.notes.append(
            f"ort-int8-dynamic: {'7-bit' if reduce_range else '8-bit'} weights"
            + (" (auto on this CPU)" if c.reduce_range == "auto" else "")
            + (f"; kept in float: {len(excluded)} nodes matching {', '.join(exclude)}" if exclude else "")
        )
        return out


class StaticInt8Config(PassConfig):
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    samples: int = Field(default=64, ge=1, description="calibration texts")
    batch_size: int = Field(default=8, ge=1)
    format: Literal["qdq", "qoperator"] = "qdq"
    per_channel: bool = True
    activation_type: Literal["uint8", "int8"] = "uint8"
    percentile: float = Field(default=99.999, gt=90, lt=100)
    op_types: list[Literal["MatMul", "Gemm", "Attention", "Add", "Mul"]] = ["MatMul", "Gemm"]
    exclude: list[str] = Field(default=[], description="regexes on ONNX node names to keep in float")


class _Reader:
    """onnxruntime CalibrationDataReader over tokenized calibration batches.

    The feeds are made once and held as arrays, with no reference to the candidate (and its live
    inference session), so a quantizer may copy the reader."""

    def __init__(self, candidate: OrtCandidate, texts: list[str], batch_size: int) -> None:
        from optimizer import tasks

        self.texts = texts
        self.feeds: list[dict[str, np.ndarray]] = []
        for b in tasks.make_batches(candidate, texts, batch_size):
            feed = {"input_ids": b.input_ids.numpy(), "attention_mask": b.attention_mask.numpy()}
            if candidate.task == "causal-lm":
                feed |= candidate.empty_past(b.input_ids.shape[0])
            self.feeds.append(feed)
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)

    def rewind(self) -> None:
        self.it: Iterator[dict[str, np.ndarray]] = iter(self.feeds)


class OrtInt8Static(Pass):
    """Static int8 (QDQ by default): activation ranges calibrated on the recipe's calibration texts."""

    name = "ort-int8-static"
    family = "quantization"
    runtimes_in = ORT
    runtime_out = "onnxruntime"
    Config = StaticInt8Config

    @classmethod
    def compute_dtype(cls, params: dict[str, Any]) -> str | None:
        return "int8"

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

        from optimizer.passes.calibration import next_folder, sample_texts
        from optimizer.runtimes.ort import MODEL_FILE, OrtCandidate

        assert isinstance(candidate, OrtCandidate)
        c = self.config
        folder = next_folder(ctx, self.name)
        reader = type("Reader", (_Reader, CalibrationDataReader), {})(candidate, sample_texts(ctx, c.samples), c.batch_size)
        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[c.method]
        extra = _QUANT_OPTIONS | {"CalibTensorRangeSymmetric": c.activation_type == "int8"}
        if c.method == "percentile":
            extra["CalibPercentile"] = c.percentile
        ops, excluded = _node_choice(candidate.model_path, c.op_types, c.exclude)
        quantize_static(
            candidate.model_path,
            folder / MODEL_FILE,
            reader,
            quant_format=QuantFormat.QDQ if c.format == "qdq" else QuantFormat.QOperator,
            op_types_to_quantize=ops,
            per_channel=c.per_channel,
            activation_type=QuantType.QUInt8 if c.activation_type == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=method,
            extra_options=extra,
            use_external_data_format=external_data(candidate.model_path),
        )
        for f in folder.glob("*.onnx-augmented*"):
            f.unlink()  # the calibration tool's temporary graph
        candidate.notes.append(f"ort-int8-static calibrated on {min(c.samples, len(reader.texts))} texts ({c.method})")
        return _derive(candidate, folder)


# ---------------------------------------------------------------- int4


class Int4Config(PassConfig):
    block_size: int = Field(default=32, ge=16, le=256)
    symmetric: bool = True
    algorithm: Literal["rtn", "hqq"] = Field(
        default="rtn", description="rtn: round to nearest; hqq: half-quadratic fit of scales and zero points (no data)"
    )
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        default=4, description="compute type on CPU: 4 = int8 activations (fast), 0 = unset (fp32)"
    )
    exclude: list[str] = Field(
        default=[],
        description="regexes on ONNX node names to keep out of int4 "
        "(a later ort-int8-dynamic pass can take them to int8: mixed precision)",
    )


class OrtInt4(Pass):
    """Weight-only 4-bit (MatMulNBits, per-block scales); activations stay in float unless accuracy_level=4.

    Round to nearest or HQQ, both from onnxruntime's own quantizer; HQQ always writes asymmetric blocks
    (scales and zero points fitted together). onnxruntime's GPTQ is not offered: in onnxruntime 1.32 it
    propagates each column's error along the zero triangle of its inverse-Hessian factor, so its output
    equals round to nearest (checked on stories260K and on a random layer); GPTQ is on OpenVINO
    (ov-weight-compress gptq: true).
    """

    name = "ort-int4"
    family = "quantization"
    requires = ("onnx_ir",)  # onnxruntime's MatMulNBits quantizer imports it
    extra = "int4"
    runtimes_in = ORT
    runtime_out = "onnxruntime"
    Config = Int4Config

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

        from optimizer.passes.calibration import next_folder
        from optimizer.runtimes.ort import MODEL_FILE, OrtCandidate

        assert isinstance(candidate, OrtCandidate)
        c = self.config
        if c.block_size & (c.block_size - 1):
            raise UserError(f"ort-int4 block_size {c.block_size} is not a power of two", "use 16, 32, 64, 128 or 256")
        folder = next_folder(ctx, self.name)
        _, excluded = _node_choice(candidate.model_path, [], c.exclude)
        big = external_data(candidate.model_path)
        q = MatMulNBitsQuantizer(
            onnx.load(str(candidate.model_path)),
            bits=4,
            block_size=c.block_size,
            is_symmetric=c.symmetric,
            accuracy_level=c.accuracy_level or None,
            nodes_to_exclude=excluded,
            algo_config=HQQWeightOnlyQuantConfig(block_size=c.block_size, bits=4) if c.algorithm == "hqq" else None,
        )
        q.process()
        if c.algorithm == "hqq" and c.accuracy_level:
            _set_accuracy_level(q.model.model, c.accuracy_level)  # its quantizer leaves the attribute out
        if c.exclude:
            candidate.notes.append(f"ort-int4 kept {len(excluded)} nodes matching ({', '.join(c.exclude)}) out of int4")
        if c.algorithm == "hqq":
            candidate.notes.append(f"ort-int4 HQQ scales and zero points, block {c.block_size}")
        q.model.save_model_to_file(str(folder / MODEL_FILE), use_external_data_format=big)
        return _derive(candidate, folder)


def _set_accuracy_level(model: Any, level: int) -> None:
    """Give every MatMulNBits node the compute type the config asks for (int8 activations at 4)."""
    import onnx

    for node in model.graph.node:
        if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", level))
