"""llama.cpp passes: the chain's torch model written as GGUF, and llama.cpp's own quantizer over it.

`gguf-export` hands a torch causal LM (pruned or distilled ones too) to the llama.cpp runtime as a GGUF
file, checked against torch on real text like the other exports, and computes the importance matrix on
the recipe's calibration text while the torch model is still at hand. `gguf-quantize` runs
`llama_model_quantize` with that matrix: llama.cpp's quant types (Q8_0 ... Q4_K_M, IQ4_XS) as a
searchable choice, the output / embedding tensors optionally kept at higher precision.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from optimizer.errors import UserError
from optimizer.passes.base import Pass, PassConfig, PassContext, no_grad

if TYPE_CHECKING:
    from optimizer.runtimes import Candidate, TorchCandidate

LLAMACPP = frozenset({"llamacpp"})
CAUSAL = frozenset({"causal-lm"})
# relative max |diff| of the logits on real tokens: llama.cpp's kernels round activations to the weights'
# type (f16 / bf16) before each dot product, so those formats sit a rounding step from torch fp32
TOLERANCE = {"f32": 1e-2, "f16": 5e-2, "bf16": 1e-1, "source": 1e-1}

# llama.cpp's quant types a search may choose (llama_ftype values); IQ types want the importance matrix
QUANT_TYPES = {
    "Q8_0": 7,
    "Q6_K": 18,
    "Q5_K_M": 17,
    "Q5_K_S": 16,
    "Q4_K_M": 15,
    "Q4_K_S": 14,
    "Q4_0": 2,
    "IQ4_XS": 30,
    "IQ4_NL": 25,
    "Q3_K_M": 12,
    "Q2_K": 10,
}
KEEP_TYPES = {"F16": 1, "Q8_0": 8}  # ggml types for the tensors kept at higher precision


def _linears(module: Any) -> dict[str, Any]:
    """GGUF tensor name -> the torch Linear whose inputs it multiplies (for the importance matrix)."""
    from torch import nn

    from optimizer.gguf_export import gguf_name

    tied = bool(getattr(module.config, "tie_word_embeddings", False))
    out = {}
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            target = gguf_name(f"{name}.weight")
            if target == "output.weight" and tied:
                target = "token_embd.weight"  # a tied output multiplies by the embedding tensor, under its name
            if target is not None:
                out[target] = sub
    return out


@no_grad
def importance_matrix(cand: TorchCandidate, ctx: PassContext, texts: int) -> dict[str, Any]:
    """Per GGUF tensor, the mean square of each input column over the calibration tokens: what llama.cpp's
    `llama-imatrix` collects and its quantizer weighs rounding errors by."""
    import numpy as np

    from optimizer.passes.calibration import batches, input_norms

    data = batches(cand, ctx, texts, batch_size=4, max_length=512)
    tokens = int(sum(int(b.attention_mask.sum()) for b in data))
    names, linears = zip(*_linears(cand.module).items(), strict=True)
    norms = input_norms(cand, list(linears), data)
    return {n: (v.double() ** 2 / max(tokens, 1)).numpy().astype(np.float32) for n, v in zip(names, norms, strict=True)}


class ExportConfig(PassConfig):
    dtype: Literal["f32", "f16", "bf16", "source"] = Field(
        default="f16",
        description="weights in the file; 'source': serve the GGUF file the model was loaded from, as shipped "
        "(only when no pass before changed the weights)",
    )
    imatrix_texts: int = Field(default=64, ge=0, description="calibration texts for the importance matrix; 0: none")
    tolerance: float | None = Field(
        default=None, gt=0, description="max |torch - llama.cpp| on real tokens, relative to max |torch|; None: per dtype"
    )
    parity_texts: int = Field(default=8, ge=2)


class GgufExport(Pass):
    """Write the torch causal LM as GGUF for llama.cpp and check it against torch on padded batches."""

    name = "gguf-export"
    family = "export"
    tasks = CAUSAL
    runtime_out = "llamacpp"
    devices = frozenset({"cpu"})
    requires = ("llama_cpp", "gguf")
    extra = "llamacpp"
    Config = ExportConfig
    VERSION = 2  # 2: its importance matrix travels with the candidate (saved and cached beside the file)

    @classmethod
    def compute_dtype(cls, params: dict[str, Any]) -> str | None:
        return {"f16": "fp16", "bf16": "bf16"}.get(params.get("dtype", "f16"))

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        import shutil

        import numpy as np

        from optimizer import gguf_export, gguf_file
        from optimizer.passes.calibration import next_folder, sample_texts
        from optimizer.passes.parity import check_parity
        from optimizer.runtimes import TorchCandidate
        from optimizer.runtimes.llamacpp import IMATRIX_FILE, MODEL_FILE, LlamaCppCandidate, LlamaSettings

        assert isinstance(candidate, TorchCandidate)
        c = self.config
        folder = next_folder(ctx, self.name)
        module = candidate.module.float().cpu()
        reference = TorchCandidate(info=candidate.info, module=module, device="cpu")
        source = gguf_file.source_info(candidate.info.source)
        target = folder / MODEL_FILE
        if c.dtype == "source":
            if source is None:
                raise UserError(
                    "gguf-export(dtype=source) serves the GGUF file the model came from, and this model came from "
                    f"{candidate.info.source}, not a GGUF file",
                    "set dtype to f32, f16 or bf16",
                )
            if candidate.applied:
                raise UserError(
                    f"gguf-export(dtype=source) after {', '.join(a['name'] for a in candidate.applied)}: the shipped file does not hold those changes",
                    "put gguf-export(dtype=source) first in the chain, or export with dtype f32 / f16 / bf16",
                )
            shutil.copy2(source["file"], target)
        else:
            gguf_export.export(
                module,
                candidate.info.tokenizer,
                target,
                c.dtype,
                Path(source["file"]) if source else None,
                name=Path(candidate.info.source).name,
            )
        matrix = None
        if c.imatrix_texts:
            matrix = folder / IMATRIX_FILE
            np.savez(matrix, **importance_matrix(reference, ctx, c.imatrix_texts))
        out = LlamaCppCandidate(
            info=candidate.info,
            device=ctx.device,
            applied=list(candidate.applied),
            notes=list(candidate.notes),
            gguf=target,
            settings=LlamaSettings(),  # threads: the process's, as the run sets them
            gguf_info=gguf_file.describe(target),
            imatrix=matrix,
        )
        tolerance = c.tolerance or TOLERANCE[c.dtype]
        out.notes.append(check_parity(self.name, "llama.cpp", reference, out, sample_texts(ctx, c.parity_texts), tolerance))
        candidate.module = None
        return out


class QuantizeConfig(PassConfig):
    type: Literal[tuple(QUANT_TYPES)] = Field(default="Q4_K_M", description="llama.cpp's quant type (llama-quantize's name)")  # type: ignore[valid-type]
    imatrix: bool = Field(default=True, description="weigh rounding by the importance matrix gguf-export computed")
    keep: Literal["default", "Q8_0", "F16"] = Field(
        default="default",
        description="output and token-embedding tensors at this type instead of llama.cpp's choice for the quant type",
    )


class GgufQuantize(Pass):
    """llama.cpp's quantizer (`llama_model_quantize`, as llama-quantize runs it) over the exported GGUF."""

    name = "gguf-quantize"
    family = "quantization"
    tasks = CAUSAL
    runtimes_in = LLAMACPP
    devices = frozenset({"cpu"})
    requires = ("llama_cpp", "gguf")
    extra = "llamacpp"
    Config = QuantizeConfig

    @classmethod
    def compute_dtype(cls, params: dict[str, Any]) -> str | None:
        return "int8"  # llama.cpp's quantized dot products run on int8 activations (q8 blocks)

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        from optimizer import gguf_file
        from optimizer.passes.calibration import next_folder
        from optimizer.runtimes.llamacpp import MODEL_FILE, LlamaCppCandidate, lib

        assert isinstance(candidate, LlamaCppCandidate) and candidate.gguf is not None
        c = self.config
        ll = lib()
        folder = next_folder(ctx, self.name)
        target = folder / MODEL_FILE
        p = ll.llama_model_quantize_default_params()
        p.ftype = QUANT_TYPES[c.type]
        p.nthread = ctx.threads
        p.allow_requantize = candidate.gguf_info.get("quantized", False)
        if c.keep != "default":
            p.output_tensor_type = p.token_embedding_type = KEEP_TYPES[c.keep]
        keepalive: list[Any] = []
        if c.imatrix:
            matrix = candidate.imatrix
            if matrix is None or not matrix.is_file():
                raise UserError(
                    "gguf-quantize(imatrix=true) needs the importance matrix gguf-export computes",
                    "set gguf-export's imatrix_texts above 0, or gguf-quantize's imatrix to false",
                )
            p.imatrix = _imatrix_array(matrix, keepalive)
        elif c.type.startswith("IQ") and c.type not in ("IQ4_XS", "IQ4_NL"):
            raise UserError(f"{c.type} needs an importance matrix", "set gguf-quantize's imatrix to true")
        from optimizer.runtimes.llamacpp import forget_complaints, last_complaint

        forget_complaints()
        rc = ll.llama_model_quantize(str(candidate.gguf).encode(), str(target).encode(), ctypes.byref(p))
        if rc != 0 or not target.is_file():
            raise UserError(
                f"llama.cpp's quantizer failed on {candidate.gguf.name} for {c.type} (code {rc}){last_complaint()}",
                "pick another type",
            )
        note = f"gguf-quantize {c.type}" + (" with the importance matrix" if c.imatrix else "")
        out = LlamaCppCandidate(
            info=candidate.info,
            device=candidate.device,
            applied=list(candidate.applied),
            notes=[*candidate.notes, note],
            gguf=target,
            settings=candidate.settings,
            gguf_info=gguf_file.describe(target),
            imatrix=candidate.imatrix,
        )
        candidate.close()
        return out


class ServingConfig(PassConfig):
    ubatch: int = Field(default=512, ge=16, le=4096, description="physical micro-batch of a prompt step (-ub)")
    kv_cache: Literal["f16", "q8_0"] = Field(default="f16", description="KV cache type (-ctk / -ctv)")
    flash_attn: Literal["auto", "on", "off"] = Field(default="auto", description="flash attention (-fa)")
    threads_batch: int | None = Field(
        default=None, ge=1, description="threads for prompt processing (-tb); None: as for generation"
    )


class LlamaCppServing(Pass):
    """llama.cpp's serving knobs that change cost (llama-server's flags); the model is unchanged."""

    name = "llamacpp-serving"
    family = "export"  # changes how the model is served, not the model
    tasks = CAUSAL
    runtimes_in = LLAMACPP
    devices = frozenset({"cpu"})
    requires = ("llama_cpp",)
    extra = "llamacpp"
    Config = ServingConfig

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        from optimizer.runtimes.llamacpp import LlamaCppCandidate, LlamaSettings

        assert isinstance(candidate, LlamaCppCandidate)
        c = self.config
        candidate.close()  # contexts are built with the settings
        candidate.settings = LlamaSettings(
            threads=candidate.settings.threads,
            threads_batch=c.threads_batch,
            ubatch=c.ubatch,
            kv_cache=c.kv_cache,
            flash_attn=c.flash_attn,
        )
        return candidate


def _imatrix_array(path: Path, keepalive: list[Any]) -> Any:
    """The saved matrix as llama.cpp's null-terminated llama_model_imatrix_data array; the buffers it points
    into go in `keepalive`, which must outlive the quantize call."""
    import numpy as np

    from optimizer.runtimes.llamacpp import lib

    ll = lib()
    saved = np.load(path)
    entries = (ll.llama_model_imatrix_data * (len(saved.files) + 1))()
    for i, name in enumerate(saved.files):
        values = np.ascontiguousarray(saved[name], np.float32)
        keepalive += [values, name.encode()]
        entries[i].name = keepalive[-1]
        entries[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = values.size
    keepalive.append(entries)
    return ctypes.cast(entries, ctypes.POINTER(ll.llama_model_imatrix_data))
