"""OpenVINO passes: IR export, NNCF static int8 (calibrated), and NNCF weight compression (int8 / int4).

`ov-export` converts the torch model with `openvino.convert_model` and checks it against torch on
padded batches; its `inference_precision` is the CPU plugin's precision hint, made explicit because
the plugin otherwise picks bf16 by itself on CPUs with AVX-512 BF16 or AMX. The NNCF passes read the
incoming IR and write a new one under the run's work directory, keeping the precision they were given.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from optimizer.errors import UserError
from optimizer.passes.base import Pass, PassConfig, PassContext

if TYPE_CHECKING:
    import numpy as np

    from optimizer.runtimes import Candidate
    from optimizer.runtimes.ov import OvCandidate

OV = frozenset({"openvino"})
Precision = Literal["auto", "f32", "bf16", "f16"]


class OvPass(Pass):
    """What the OpenVINO passes share: CPU only, the `openvino` extra."""

    devices = frozenset({"cpu"})
    requires = ("openvino", "nncf")
    extra = "openvino"


# ---------------------------------------------------------------- export


class OvExportConfig(PassConfig):
    inference_precision: Precision = Field(
        default="f32",
        description="CPU plugin precision for the float parts: f32, or bf16/f16 where the CPU has them; auto: bf16 "
        "where the CPU has it (AVX-512 BF16 / AMX), else f32, resolved on the machine that builds it and recorded",
    )
    tolerance: float = Field(
        default=1e-3, gt=0, description="max |torch - openvino| on real tokens (at f32), relative to max |torch|"
    )
    parity_texts: int = Field(default=16, ge=2)


class OvExport(OvPass):
    """torch -> OpenVINO IR (fp32 weights; KV cache for causal LMs), checked against torch on padded batches."""

    name = "ov-export"
    family = "export"
    requires = ("openvino",)
    runtime_out = "openvino"
    Config = OvExportConfig

    @classmethod
    def compute_dtype(cls, params: dict[str, Any]) -> str | None:
        precision = params.get("inference_precision", "f32")
        return {"bf16": "bf16", "f16": "fp16"}.get(_supported(precision) if precision == "auto" else precision)

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        from optimizer.ov_export import convert
        from optimizer.passes.calibration import next_folder, sample_texts
        from optimizer.passes.parity import check_parity
        from optimizer.runtimes import TorchCandidate
        from optimizer.runtimes.ov import OvCandidate

        assert isinstance(candidate, TorchCandidate)
        c = self.config
        precision = _supported(c.inference_precision)  # before the export: a CPU without it is told at once
        folder = next_folder(ctx, self.name)
        module = candidate.module.float().cpu()
        reference = TorchCandidate(info=candidate.info, module=module, device="cpu")
        io = convert(module, candidate.task, folder)
        f32 = OvCandidate(
            info=candidate.info,
            applied=list(candidate.applied),
            notes=list(candidate.notes),
            folder=folder,
            io=io,
            precision="f32",
        )
        # parity is a property of the conversion, so it is checked at f32; a lower precision is a choice whose
        # effect the quality measurement shows
        note = check_parity(self.name, "OpenVINO", reference, f32, sample_texts(ctx, c.parity_texts), c.tolerance)
        out = f32.derive(folder, precision=precision)
        chosen = " (auto on this CPU)" if c.inference_precision == "auto" else ""
        out.notes.append(note + f"; runs at inference precision {out.precision}{chosen}")
        candidate.module = None  # the torch weights are no longer needed
        return out


def _supported(precision: str) -> str:
    """The precision to compile with on this CPU (auto resolved); a one-line error where it has none such."""
    from optimizer.runtimes.ov import require_openvino

    ov = require_openvino()
    caps = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    if precision == "auto":
        return "bf16" if "BF16" in caps else "f32"
    wanted = {"f32": "FP32", "bf16": "BF16", "f16": "FP16"}[precision]
    if wanted not in caps:
        raise UserError(
            f"ov-export inference_precision {precision}: this CPU does not offer {wanted} "
            f"(it offers {', '.join(sorted(caps & {'FP32', 'BF16', 'FP16'}))})",
            "use inference_precision: f32 here, or run on a CPU with AVX-512 BF16 / AMX",
        )
    return precision


# ---------------------------------------------------------------- calibration data


def _feeds(candidate: OvCandidate, texts: list[str]) -> list[dict[str, np.ndarray]]:
    """One model input per calibration text, at its own length (no padding in the statistics)."""
    from optimizer import tasks

    out = []
    for b in tasks.make_batches(candidate, texts, batch_size=1, sort=False):
        feed = {"input_ids": b.input_ids.numpy(), "attention_mask": b.attention_mask.numpy()}
        if candidate.task == "causal-lm":
            feed |= candidate.empty_past(1)
        out.append(feed)
    return out


def _nncf() -> Any:
    """nncf, with its log lines off: a search runs these passes many times."""
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)
    return nncf


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF draws progress bars and tables on the console whatever its log level; keep them off ours."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _ignored(patterns: list[str]) -> Any:
    nncf = _nncf()

    # validate=False: a pattern that matches nothing in this model is not an error (one recipe, many models)
    return nncf.IgnoredScope(patterns=list(patterns), validate=False) if patterns else None


def _read(candidate: OvCandidate) -> Any:
    from optimizer.runtimes.ov import require_openvino

    return require_openvino().Core().read_model(str(candidate.model_path))


def _write(model: Any, candidate: OvCandidate, ctx: PassContext, name: str) -> OvCandidate:
    from optimizer.passes.calibration import next_folder
    from optimizer.runtimes.ov import MODEL_FILE, require_openvino

    folder = next_folder(ctx, name)
    require_openvino().save_model(model, str(folder / MODEL_FILE), compress_to_fp16=False)
    return candidate.derive(folder)


# ---------------------------------------------------------------- int8 static


class OvInt8StaticConfig(PassConfig):
    preset: Literal["mixed", "performance"] = Field(
        default="mixed", description="mixed: symmetric weights, asymmetric activations (NNCF's choice for transformers)"
    )
    samples: int = Field(default=300, ge=1, description="calibration texts (NNCF subset_size)")
    fast_bias_correction: bool = True
    smooth_quant_alpha: float = Field(
        default=0.95, ge=-1, le=1, description="SmoothQuant migration strength for MatMuls; -1 turns SmoothQuant off"
    )
    exclude: list[str] = Field(default=[], description="regexes on OpenVINO node names to keep in float")


class OvInt8Static(OvPass):
    """NNCF post-training int8 (weights and activations), calibrated on the recipe's calibration texts."""

    name = "ov-int8-static"
    family = "quantization"
    runtimes_in = OV
    # int8 activations x int8 weights: on an AVX2 AMD EPYC (no VNNI) MiniLM's chain cost 1.89x the f32 export's
    # in the same search (experiments/minilm-cpu/RESULTS.md); on AMX it is the faster one
    pays_on = frozenset({"int8-dot"})
    Config = OvInt8StaticConfig

    @classmethod
    def compute_dtype(cls, params: dict[str, Any]) -> str | None:
        return "int8"

    @classmethod
    def depends_on_batch(cls, chain: list[dict[str, Any]]) -> bool:
        # Measured on all-MiniLM-L6-v2 (Xeon with AMX): at f32 inference precision every embedding is the
        # same alone or in any batch; at bf16, some short texts' embeddings change with the batch they
        # are in (cosine 0.79 to their own embedding alone). Judged in serving batches there.
        return any(p["name"] == "ov-export" and p["params"].get("inference_precision", "f32") != "f32" for p in chain)

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        from optimizer.passes.calibration import sample_texts
        from optimizer.runtimes.ov import OvCandidate

        nncf = _nncf()
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

        assert isinstance(candidate, OvCandidate)
        c = self.config
        feeds = _feeds(candidate, sample_texts(ctx, c.samples))
        advanced = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=c.smooth_quant_alpha))
        with _quiet():
            model = nncf.quantize(
                _read(candidate),
                nncf.Dataset(feeds),
                preset=nncf.QuantizationPreset(c.preset),
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(feeds),
                fast_bias_correction=c.fast_bias_correction,
                ignored_scope=_ignored(c.exclude),
                advanced_parameters=advanced,
            )
        out = _write(model, candidate, ctx, self.name)
        out.notes.append(
            f"ov-int8-static calibrated on {len(feeds)} texts ({c.preset} preset, SmoothQuant "
            f"{'off' if c.smooth_quant_alpha < 0 else c.smooth_quant_alpha})"
        )
        return out


# ---------------------------------------------------------------- static widths


class OvStaticShapesConfig(PassConfig):
    step: int = Field(
        default=8,
        ge=1,
        le=256,
        description="widths round up to a multiple of this (or of an eighth of the next power of two, when "
        "coarser): 16 compiled models up to 256 tokens at 8",
    )
    max_shapes: int = Field(
        default=32,
        ge=1,
        description="compiled shapes kept at once (each holds its own weights: about 90 MiB for the int8 MiniLM); "
        "the least recently used one is dropped and compiled again when next needed. One serving setup meets at "
        "most 16 widths (step 8) and a few short-batch row counts; costopt's own measurements also run one "
        "stream's shapes beside the serving streams' (compiled per thread count)",
    )


class OvStaticShapes(OvPass):
    """Serve an encoder with one model compiled per input-width bucket instead of one for every width."""

    name = "ov-static-shapes"
    family = "export"  # changes how the model is served, not the model
    tasks = frozenset({"embedding", "classification"})  # a causal LM's KV cache grows every step
    runtimes_in = OV
    requires = ("openvino",)
    Config = OvStaticShapesConfig

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        from optimizer.runtimes.ov import OvCandidate

        assert isinstance(candidate, OvCandidate)
        candidate.static_step, candidate.max_shapes = self.config.step, self.config.max_shapes
        candidate.notes.append(
            f"ov-static-shapes: one compiled model per input-width bucket (step {self.config.step}), each compiled when "
            "first needed; inputs padded up to their bucket (masked out)"
        )
        return candidate


# ---------------------------------------------------------------- weight compression


class OvWeightConfig(PassConfig):
    mode: Literal["int8_sym", "int8_asym", "int4_sym", "int4_asym"] = "int4_asym"
    group_size: int = Field(default=64, ge=-1, description="int4: weights per scale (-1: one per output channel)")
    ratio: float = Field(
        default=1.0, gt=0, le=1, description="int4: share of layers in int4, the rest int8 (NNCF ranks them by sensitivity)"
    )
    awq: bool = Field(default=False, description="int4: activation-aware scales (needs calibration texts)")
    scale_estimation: bool = Field(default=False, description="int4: scales fitted to calibration activations")
    gptq: bool = Field(default=False, description="int4: GPTQ error-compensating rounding")
    group_fallback: Literal["adjust", "ignore", "error"] = Field(
        default="adjust",
        description="int4: a layer whose width the group size does not divide gets the nearest "
        "group size that does (adjust), stays uncompressed (ignore), or stops the pass (error)",
    )
    samples: int = Field(default=64, ge=1, description="calibration texts for the data-aware options")
    exclude: list[str] = Field(default=[], description="regexes on OpenVINO node names to keep uncompressed")


class OvWeightCompress(OvPass):
    """NNCF weight-only compression: int8 or int4 weights, activations in float (the LLM CPU path)."""

    name = "ov-weight-compress"
    family = "quantization"
    runtimes_in = OV
    Config = OvWeightConfig

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        from optimizer.passes.calibration import sample_texts
        from optimizer.runtimes.ov import OvCandidate

        nncf = _nncf()
        assert isinstance(candidate, OvCandidate)
        c = self.config
        int4 = c.mode.startswith("int4")
        data_aware = int4 and (c.awq or c.scale_estimation or c.gptq)
        if not int4 and (c.awq or c.scale_estimation or c.gptq):
            raise UserError(
                f"ov-weight-compress: awq / scale_estimation / gptq apply to int4 modes, not {c.mode}",
                "use mode int4_sym or int4_asym, or turn those options off",
            )
        kwargs: dict[str, Any] = {}
        if int4:
            from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

            kwargs |= {
                "group_size": c.group_size,
                "ratio": c.ratio,
                "awq": c.awq,
                "scale_estimation": c.scale_estimation,
                "gptq": c.gptq,
                "advanced_parameters": AdvancedCompressionParameters(
                    group_size_fallback_mode=GroupSizeFallbackMode(c.group_fallback)
                ),
            }
        if data_aware:
            feeds = _feeds(candidate, sample_texts(ctx, c.samples))
            kwargs |= {"dataset": nncf.Dataset(feeds), "subset_size": len(feeds)}
        with _quiet():
            model = nncf.compress_weights(
                _read(candidate), mode=nncf.CompressWeightsMode(c.mode), ignored_scope=_ignored(c.exclude), **kwargs
            )
        out = _write(model, candidate, ctx, self.name)
        how = [k for k in ("awq", "scale_estimation", "gptq") if getattr(c, k)]
        out.notes.append(
            f"ov-weight-compress {c.mode}"
            + (f", group {c.group_size}, ratio {c.ratio}" if int4 else "")
            + (f", {' + '.join(how)} on {kwargs['subset_size']} texts" if data_aware else "")
        )
        return out
