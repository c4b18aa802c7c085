"""Quantization passes that stay in torch: dtype casts, torchao dynamic int8 and weight-only int8/int4,
bitsandbytes int8/4-bit."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from optimizer.errors import UserError
from optimizer.passes.base import Pass, PassConfig, PassContext

if TYPE_CHECKING:
    from optimizer.runtimes import Candidate, TorchCandidate


class CastConfig(PassConfig):
    dtype: Literal["bfloat16", "float16"] = "bfloat16"


class Cast(Pass):
    """Cast all floating-point weights to bf16 or fp16 (halves weight bytes; speed depends on kernels)."""

    name = "cast"
    family = "quantization"
    Config = CastConfig

    @classmethod
    def compute_dtype(cls, params: dict[str, Any]) -> str | None:
        return {"bfloat16": "bf16", "float16": "fp16"}[params.get("dtype", "bfloat16")]

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        from optimizer.model import torch_dtype
        from optimizer.runtimes import TorchCandidate

        assert isinstance(candidate, TorchCandidate)
        candidate.module.to(torch_dtype(self.config.dtype))
        return candidate


# ---------------------------------------------------------------- torch dynamic int8


class DynamicInt8Config(PassConfig):
    per_channel: bool = Field(
        True,
        description="weights per output row and activations per token (one input's outputs do not depend on its "
        "batch); false: one scale per tensor for both",
    )
    compile: bool = Field(
        True,
        description="serve through torch.compile (compiled once per process, about 40 s for MiniLM): eager torchao "
        "int8 runs its quantize and rescale steps one by one and is slower than fp32 on the CPU",
    )


class TorchDynamicInt8(Pass):
    """torchao's int8 dynamic quantization (`quantize_` with Int8DynamicActivationInt8WeightConfig) of every
    Linear: int8 weights, activations quantized at run time; CPU only."""

    name = "torch-dynamic-int8"
    family = "quantization"
    VERSION = 2  # 1 was torch.ao.quantization.quantize_dynamic (per-tensor activations), deprecated by PyTorch
    devices = frozenset({"cpu"})
    Config = DynamicInt8Config

    @classmethod
    def compute_dtype(cls, params: dict[str, Any]) -> str | None:
        return "int8"

    @classmethod
    def depends_on_batch(cls, chain: list[dict[str, Any]]) -> bool:
        return any(p["name"] == cls.name and not p.get("params", {}).get("per_channel", True) for p in chain)

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        from optimizer.runtimes.pytorch import TorchCandidate, dynamic_int8

        assert isinstance(candidate, TorchCandidate)
        candidate.module = dynamic_int8(candidate.module.cpu().eval(), self.config.per_channel)
        candidate.compiled = candidate.compiled or self.config.compile
        return candidate


class WeightOnlyConfig(PassConfig):
    bits: Literal[4, 8] = 4
    group_size: int | None = Field(
        default=None, ge=16, le=256, description="weights per scale; default 32 (int4 CPU), 128 (int4 GPU), a whole row (int8)"
    )
    algorithm: Literal["rtn", "hqq"] = Field(
        default="rtn",
        description="int4 scales: rtn = from each group's min/max; hqq = fitted by half-quadratic optimization (no data)",
    )
    exclude: list[str] = Field(default=[], description="regexes on module names to keep in float (e.g. lm_head)")
    compile: bool = Field(
        default=False,
        description="serve through torch.compile, which fuses the dequantization into the matmul; off by default "
        "because compiling a causal LM's prefill and decode takes minutes",
    )


class TorchWeightOnly(Pass):
    """torchao weight-only quantization of every Linear: int8 per row, or int4 per group with round-to-nearest
    or HQQ scales. GPU: tinygemm's packed int4 kernel (bf16 activations). CPU: int4 codes stored one per
    byte and dequantized at run time: smaller and, with HQQ, closer to fp32, but no int4 kernel."""

    name = "torch-weight-only"
    family = "quantization"
    Config = WeightOnlyConfig

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        import torch

        from optimizer.runtimes.pytorch import TorchCandidate, weight_only

        assert isinstance(candidate, TorchCandidate)
        c = self.config
        if c.group_size is not None and c.group_size & (c.group_size - 1):
            raise UserError(f"torch-weight-only group_size {c.group_size} is not a power of two", "use 16, 32, 64, 128 or 256")
        if c.bits == 8 and c.algorithm != "rtn":
            raise UserError("torch-weight-only: hqq applies to bits 4", "use algorithm: rtn with bits: 8")
        device = "cuda" if str(candidate.device).startswith("cuda") else "cpu"
        if device == "cuda" and c.bits == 4 and next(candidate.module.parameters()).dtype != torch.bfloat16:
            raise UserError(
                "torch-weight-only int4 on a GPU runs tinygemm's bf16 kernel, and this model is not bf16",
                "put {name: cast, dtype: bfloat16} before it in the chain",
            )
        candidate.module, unfit = weight_only(candidate.module.eval(), c.bits, c.group_size, c.algorithm, device, c.exclude)
        candidate.compiled = candidate.compiled or c.compile
        candidate.notes.append(f"torch-weight-only int{c.bits} ({c.algorithm}), group {c.group_size or 'default'}")
        if unfit:
            candidate.notes.append(
                f"torch-weight-only kept {len(unfit)} Linears in float: input width not a multiple of the group size "
                f"(e.g. {unfit[0]})"
            )
        return candidate


class Float8Config(PassConfig):
    per_row: bool = Field(default=True, description="one scale per weight row and per activation token; false: per tensor")
    exclude: list[str] = Field(default=[], description="regexes on module names to keep in bf16 (e.g. lm_head)")
    compile: bool = Field(default=False, description="serve through torch.compile (fuses the activation quantization)")


class TorchFloat8(Pass):
    """torchao float8 (e4m3) dynamic activations and weights for every Linear: the tensor cores' fp8
    matmul on Hopper and Ada GPUs (compute capability 8.9 or later); the model must be bf16 first."""

    name = "torch-float8"
    family = "quantization"
    devices = frozenset({"cuda"})
    Config = Float8Config

    @classmethod
    def compute_dtype(cls, params: dict[str, Any]) -> str | None:
        return "fp8"

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        import torch

        from optimizer.runtimes.pytorch import TorchCandidate, float8

        assert isinstance(candidate, TorchCandidate)
        major, minor = torch.cuda.get_device_capability()
        if (major, minor) < (8, 9):
            raise UserError(
                f"torch-float8 needs a GPU with fp8 tensor cores (compute capability 8.9+); this one is {major}.{minor}",
                "use torch-weight-only (int8 or int4) on this GPU",
            )
        if next(candidate.module.parameters()).dtype != torch.bfloat16:
            raise UserError(
                "torch-float8 scales bf16 activations and this model is not bf16", "put {name: cast, dtype: bfloat16} before it"
            )
        candidate.module = float8(candidate.module.eval(), self.config.per_row, self.config.exclude)
        candidate.compiled = candidate.compiled or self.config.compile
        return candidate


class TorchCompile(Pass):
    """Serve the torch model through torch.compile (Inductor, dynamic shapes): fuses elementwise work
    around the matmuls; compiled on the first call of each process."""

    name = "torch-compile"
    family = "export"

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        from optimizer.runtimes.pytorch import TorchCandidate

        assert isinstance(candidate, TorchCandidate)
        candidate.compiled = True
        return candidate


# ---------------------------------------------------------------- bitsandbytes


def _bnb_reload(candidate: TorchCandidate, ctx: PassContext, quantization_config: object, tag: str) -> TorchCandidate:
    """Quantize as users do: from_pretrained with a BitsAndBytesConfig, from the incoming weights.

    Going through transformers (rather than swapping layers by hand) keeps lm_head/embeddings in float,
    as transformers does, and makes the result save and reload with its quantization config.
    """
    from optimizer.model import auto_class

    if getattr(candidate.module, "hf_quantizer", None) is not None:
        raise UserError(
            f"{tag}: the model is already quantized by bitsandbytes", "use one bitsandbytes pass per chain (bnb-int8 or bnb-4bit)"
        )
    if candidate.task == "classification":  # the class head stays in float, as lm_head does
        quantization_config.llm_int8_skip_modules = list(quantization_config.llm_int8_skip_modules or []) + [
            "classifier",
            "score",
        ]
    folder = Path(ctx.work_dir) / f"{tag}-input"
    # The layers left in float keep the incoming dtype: a cast before this pass is the dtype users pass
    # to from_pretrained next to the quantization config (fp32 CPU layers stay fp32).
    dtype = next(candidate.module.parameters()).dtype
    candidate.module.save_pretrained(folder, safe_serialization=True)
    candidate.module = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = auto_class(candidate.task).from_pretrained(
            folder, quantization_config=quantization_config, device_map={"": ctx.device}, dtype=dtype
        )
    candidate.module = module.eval()
    candidate.device = ctx.device
    return candidate


class BnbInt8Config(PassConfig):
    threshold: float = Field(default=6.0, ge=0, description="LLM.int8 outlier threshold (0 = no fp16 outlier path)")
    skip_modules: list[str] = Field(default=[], description="module names kept in float (lm_head always is)")


class BnbInt8(Pass):
    """bitsandbytes LLM.int8: int8 weights, outlier feature columns in fp16."""

    name = "bnb-int8"
    requires = ("bitsandbytes", "accelerate")
    extra = "bnb"
    batch_dependent = True  # LLM.int8 picks outlier columns from the whole batch
    family = "quantization"
    Config = BnbInt8Config

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        import torch
        from transformers import BitsAndBytesConfig

        from optimizer.runtimes import TorchCandidate

        assert isinstance(candidate, TorchCandidate)
        if ctx.device == "cpu" and torch.cuda.is_available():
            # Seen with bitsandbytes 0.50 on an H100 machine: CPU tensors reach its CUDA int8 kernel
            # ("invalid argument to getCurrentStream").
            raise UserError(
                "bnb-int8 on the CPU fails on a machine with a CUDA GPU: bitsandbytes sends the int8 matmul to its CUDA kernel",
                "set hardware.device: cuda (or auto) to run bnb-int8 on the GPU",
            )
        cfg = BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_threshold=self.config.threshold, llm_int8_skip_modules=self.config.skip_modules or None
        )
        return _bnb_reload(candidate, ctx, cfg, self.name)


class Bnb4bitConfig(PassConfig):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = Field(default=True, description="quantize the per-block scales too")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    block_size: Literal[64] = Field(default=64, description="bitsandbytes' 4-bit block size via transformers (fixed at 64)")


class Bnb4bit(Pass):
    """bitsandbytes 4-bit weights (NF4 or FP4, per-64-block scales), dequantized to compute_dtype."""

    name = "bnb-4bit"
    family = "quantization"
    requires = ("bitsandbytes", "accelerate")
    extra = "bnb"
    Config = Bnb4bitConfig

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        import torch
        from transformers import BitsAndBytesConfig

        from optimizer.model import torch_dtype
        from optimizer.runtimes import TorchCandidate

        assert isinstance(candidate, TorchCandidate)
        c = self.config
        if ctx.device == "cpu":
            narrow = sorted(
                {
                    m.in_features
                    for n, m in candidate.module.named_modules()
                    if isinstance(m, torch.nn.Linear) and m.in_features % 64 and "lm_head" not in n
                }
            )
            if narrow:
                raise UserError(
                    f"bnb-4bit on the CPU needs layer input widths that are multiples of 64 "
                    f"(bitsandbytes' block size); this model has {narrow[:3]}",
                    "run bnb-4bit on a GPU, or use ort-int4 (block_size 16 or 32) for this model",
                )
        cfg = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=c.quant_type,
            bnb_4bit_use_double_quant=c.double_quant,
            bnb_4bit_compute_dtype=torch_dtype(c.compute_dtype),
        )
        return _bnb_reload(candidate, ctx, cfg, self.name)
