"""The torch runtime: a transformers module (eager or torch.compile'd; bf16/fp16, bitsandbytes,
torchao int8 / int4).

Saved artifacts are Hugging Face folders; a torchao-quantized module, which save_pretrained cannot
write, is saved as the config plus its state dict (torchao tensors) and rebuilt on reload.
"""

from __future__ import annotations

import copy
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from optimizer.errors import UserError
from optimizer.model import ModelSpec, auto_class, cache_kwarg, load_model_info, load_module, saved_spec
from optimizer.runtimes.base import Candidate, Pair, fresh_folder, run_streams
from optimizer.runtimes.threads import threads

QUANTIZED_STATE = "quantized_state.pt"
QUANTIZED_FORMAT = "torchao"
OLD_QUANTIZED_FORMATS = ("torchao-int8",)  # the same layout, written when only int8 existed


def dynamic_int8(module: torch.nn.Module, per_channel: bool) -> torch.nn.Module:
    """torchao int8 dynamic quantization of every Linear: int8 weights, activations quantized at run time.

    per_channel: weights per output row and activations per token, so one input's outputs do not depend
    on the rest of its batch; otherwise one scale per tensor for both (they do)."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, PerRow, PerTensor, quantize_

    module = module.float()
    granularity = PerRow() if per_channel else PerTensor()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(module, Int8DynamicActivationInt8WeightConfig(granularity=granularity, set_inductor_config=False))
    return module


def weight_only(
    module: torch.nn.Module, bits: int, group_size: int | None, algorithm: str, device: str, skip: list[str]
) -> tuple[torch.nn.Module, list[str]]:
    """torchao weight-only quantization of the Linears whose names match no `skip` regex.

    int8: one scale per output row. int4 on a GPU: tinygemm's packed layout (bf16), scales and zero points
    from min/max ("rtn") or fitted by HQQ; int4 on the CPU: codes kept one per byte and dequantized at
    run time (torchao has no packed int4 CPU kernel here), symmetric scales from min/max or HQQ.
    Returns the module and the Linears left in float because their input width is not a multiple of the
    group size (torchao does not pad)."""
    import re

    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, IntxWeightOnlyConfig, PerGroup, PerRow, quantize_

    group = group_size or (None if bits == 8 else 128 if device == "cuda" else 32)
    if bits == 8:
        config: Any = Int8WeightOnlyConfig(granularity=PerRow() if group is None else PerGroup(group))
    elif device == "cuda":  # the caller checked the module is bf16, tinygemm's kernel's type
        config = Int4WeightOnlyConfig(
            group_size=group,
            int4_packing_format="tile_packed_to_4d",
            int4_choose_qparams_algorithm="hqq" if algorithm == "hqq" else "tinygemm",
        )
    else:
        config = IntxWeightOnlyConfig(
            weight_dtype=torch.int4,
            granularity=PerGroup(group),
            intx_choose_qparams_algorithm="hqq_scale_only" if algorithm == "hqq" else "affine",
        )
    unfit: list[str] = []

    def chosen(m: torch.nn.Module, name: str) -> bool:
        if not isinstance(m, torch.nn.Linear) or any(re.search(p, name) for p in skip):
            return False
        if group is not None and m.in_features % group:
            unfit.append(name)
            return False
        return True

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(module, config, filter_fn=chosen)
    return module, unfit


def float8(module: torch.nn.Module, per_row: bool, skip: list[str]) -> torch.nn.Module:
    """torchao float8 dynamic quantization (e4m3 activations and weights) of the Linears whose names match
    no `skip` regex; per-row weight and per-token activation scales, or one scale per tensor."""
    import re

    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow() if per_row else PerTensor())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(
            module,
            config,
            filter_fn=lambda m, name: isinstance(m, torch.nn.Linear) and not any(re.search(p, name) for p in skip),
        )
    return module


def _torchao_codes(p: torch.Tensor) -> torch.Tensor | None:
    """The integer codes of a torchao-quantized weight, or None for an ordinary tensor."""
    return getattr(p, "qdata", None) if type(p).__module__.startswith("torchao.") else None


def need_cpp_compiler(otherwise: str) -> None:
    """torch.compile's CPU backend (Inductor) builds C++: refuse in one line before compiling starts."""
    if shutil.which("g++") is None and shutil.which("c++") is None:
        raise UserError(
            "torch.compile on the CPU needs a C++ compiler, and none is on PATH", f"install one (apt install g++), or {otherwise}"
        )


def compile_module(module: torch.nn.Module) -> Any:
    """torch.compile with dynamic shapes (batch and length vary): Inductor fuses torchao's
    quantize-matmul-rescale steps, which eager mode runs one by one (slower than fp32)."""
    need_cpp_compiler("set compile: false on the pass")
    # torchao's tensors do not hash for torch's compile cache: a notice on every first call, no advice
    warnings.filterwarnings("ignore", message=".*_stable_hash_for_caching", category=UserWarning)
    return torch.compile(module, dynamic=True)


COMPILED_TOLERANCE = 0.02  # compiled against eager decode logits, relative to the eager logits' largest
CACHE_ROUNDING = 64  # static caches are sized in steps of this many tokens: fewer shapes to compile


def compile_decode_step(module: torch.nn.Module, device: str) -> Any:
    """One decode step (batch x 1 token into a static KV cache), compiled for fixed shapes: on CUDA with
    CUDA graphs ("reduce-overhead": the step's hundreds of kernel launches replayed as one), on the CPU
    with Inductor's fused kernels."""
    if device == "cpu":
        need_cpp_compiler("set compile: false on torch-static-cache")
    mode = "reduce-overhead" if device.startswith("cuda") else None
    return torch.compile(module, mode=mode, fullgraph=True, dynamic=False)


@dataclass
class TorchCandidate(Candidate):
    module: torch.nn.Module | None = None
    runtime: str = "torch"
    compiled: bool = False  # served through torch.compile; compiled on the first call, once per process
    # causal LMs: decode into a static KV cache with room for this many new tokens (0: the dynamic cache),
    # its step compiled when compile_decode (once per batch size and cache length, per process)
    static_cache: int = 0
    compile_decode: bool = False
    # causal LMs served by transformers' continuous-batching engine: its ContinuousBatchingConfig settings
    # (None: static batches); used where requests are served (measure.requests), not by prefill/decode
    continuous: dict[str, Any] | None = None
    _runner: Any = field(default=None, repr=False)
    _step: Any = field(default=None, repr=False)
    _checked: set[int] = field(default_factory=set, repr=False)  # batch sizes whose compiled step agreed

    def _to(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True)

    @property
    def model(self) -> Any:
        """What serves calls: the module, or its compiled form."""
        if not self.compiled:
            return self.module
        if self._runner is None or self._runner._orig_mod is not self.module:
            self._runner = compile_module(self.module)
        return self._runner

    @property
    def _cache_kw(self) -> str:
        return cache_kwarg(self.module)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=self._to(input_ids), attention_mask=self._to(attention_mask))
        y = out.last_hidden_state if self.task == "embedding" else out.logits
        return y.float().cpu()

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
        mask = self._to(attention_mask)
        if self.static_cache and bool(mask.all()):
            return self._static_prefill(self._to(input_ids))
        # padded prompts keep the dynamic cache: a static one would need each step's full-length mask
        out = self.model(input_ids=self._to(input_ids), attention_mask=mask, use_cache=True)
        return out.logits[:, -1, :].float().cpu(), {"cache": out.past_key_values, "mask": mask}

    @torch.inference_mode()
    def decode(self, next_ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        if "position" in state:
            return self._static_decode(self._to(next_ids), state)
        mask = torch.cat([state["mask"], state["mask"].new_ones((state["mask"].shape[0], 1))], dim=1)
        out = self.model(input_ids=self._to(next_ids), attention_mask=mask, use_cache=True, **{self._cache_kw: state["cache"]})
        return out.logits[:, -1, :].float().cpu(), {"cache": out.past_key_values, "mask": mask}

    def _static_prefill(self, ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        from transformers import StaticCache

        n = ids.shape[1]
        size = -(-(n + self.static_cache) // CACHE_ROUNDING) * CACHE_ROUNDING
        cache = StaticCache(config=self.module.config, max_cache_len=size)
        # the prompt runs eagerly (its length varies; it is compute-bound, launches matter little)
        out = self.module(
            input_ids=ids, use_cache=True, cache_position=torch.arange(n, device=ids.device), **{self._cache_kw: cache}
        )
        return out.logits[:, -1, :].float().cpu(), {"cache": cache, "position": n, "size": size}

    def _static_decode(self, ids: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        at = state["position"]
        if at >= state["size"]:
            raise UserError(
                f"decoding past the static KV cache ({state['size']} tokens: the prompt and "
                f"torch-static-cache's new_tokens {self.static_cache})",
                "raise new_tokens on torch-static-cache",
            )
        if self.compile_decode and self._step is None:
            self._step = compile_decode_step(self.module, self.device)
        step = self._step if self.compile_decode else self.module
        position = torch.tensor([at], device=ids.device)
        eager = None
        if self.compile_decode and ids.shape[0] not in self._checked:  # the eager step on a copy of the cache
            eager = self.module(
                input_ids=ids, use_cache=True, cache_position=position, **{self._cache_kw: copy.deepcopy(state["cache"])}
            )
        out = step(input_ids=ids, use_cache=True, cache_position=position, **{self._cache_kw: state["cache"]})
        logits = out.logits[:, -1, :].float().cpu()
        if eager is not None:
            self._check_compiled(logits, eager.logits[:, -1, :].float().cpu())
        return logits, state | {"position": at + 1}

    def _check_compiled(self, compiled: torch.Tensor, eager: torch.Tensor) -> None:
        """The compiled step's first logits at a batch size against the eager step's: Inductor has been
        seen to miscompile a chain (torchao int8 on the CPU: logits 10^4 off, and five times faster than the
        weights' bytes allow), so a compiled step is used only after it agrees."""
        off = float((compiled - eager).abs().max() / eager.abs().max().clamp_min(1e-6))
        if not off <= COMPILED_TOLERANCE:  # NaN fails too
            raise UserError(
                f"the compiled decode step disagrees with the eager one at batch {compiled.shape[0]} (largest "
                f"difference {off:.3g} of the logits' range, allowed {COMPILED_TOLERANCE}): torch.compile "
                "miscompiled this chain",
                "set compile: false on torch-static-cache",
            )
        self._checked.add(compiled.shape[0])

    def concurrent(self, batches: Sequence[Pair], streams: int, latencies: list[float] | None) -> list[torch.Tensor]:
        # torch has one intra-op pool per process: each stream thread sets its own share, and the
        # process's count comes back afterwards
        n = threads()
        per = max(1, n // streams)
        try:
            return run_streams(
                [lambda b=b: self.forward(*b) for b in batches], streams, latencies, lambda: torch.set_num_threads(per)
            )
        finally:
            torch.set_num_threads(n)

    @property
    def torchao_quantized(self) -> bool:
        """True after a torchao pass: its weight tensors, which save_pretrained cannot write."""
        return any(_torchao_codes(p) is not None for p in self.module.parameters())

    def save(self, directory: Path) -> Path:
        directory = fresh_folder(directory)
        fmt = "hf"
        if self.torchao_quantized:  # config + the state dict of torchao tensors; reload assigns them
            fmt = QUANTIZED_FORMAT
            self.module.config.save_pretrained(directory)
            torch.save(self.module.state_dict(), directory / QUANTIZED_STATE)
        else:
            self.module.save_pretrained(directory, safe_serialization=True)
        self.write_common(
            directory,
            format=fmt,
            compiled=self.compiled,
            static_cache=self.static_cache,
            compile_decode=self.compile_decode,
            continuous=self.continuous,
        )
        return directory

    def weight_bytes(self) -> int | None:
        """Plain tensors' bytes (tied weights once); None for torchao and bitsandbytes tensors, whose
        packed storage only the saved artifact shows."""
        seen: dict[int, int] = {}
        for p in self.module.parameters():
            if type(p) not in (torch.nn.Parameter, torch.Tensor) or _torchao_codes(p) is not None:
                return None
            seen[p.data_ptr()] = p.numel() * p.element_size()
        return sum(seen.values())

    def parameter_counts(self) -> tuple[int, int]:
        seen: set[int] = set()
        total = nonzero = 0
        for p in self.module.parameters():
            codes = _torchao_codes(p)
            ptr = (p if codes is None else codes).data_ptr()  # a torchao tensor's own data_ptr is not its storage
            if ptr in seen:  # tied weights count once
                continue
            seen.add(ptr)
            if type(p).__name__ == "Params4bit":  # two 4-bit codes per byte; zero weights are not zero codes
                total += p.numel() * 2
                nonzero += p.numel() * 2
                continue
            total += p.numel()
            if codes is not None and codes.numel() != p.numel():  # packed int4: a zero code is no zero weight
                nonzero += p.numel()
                continue
            nonzero += int(torch.count_nonzero(p if codes is None else codes).item())
        return total, nonzero


def load_candidate(spec: ModelSpec, task: str, device: str) -> TorchCandidate:
    """The uncompressed baseline as a torch candidate on `device`."""
    info = load_model_info(spec, task)
    return TorchCandidate(info=info, module=load_module(info, spec, task, device), device=device)


def load_artifact(directory: Path, meta: dict[str, Any], device: str) -> TorchCandidate:
    spec = saved_spec(directory)
    fmt = meta.get("format", "hf")
    if fmt == "hf":
        cand = load_candidate(spec, meta["task"], device)
    elif fmt == QUANTIZED_FORMAT or fmt in OLD_QUANTIZED_FORMATS:
        from transformers import AutoConfig

        module = auto_class(meta["task"]).from_config(AutoConfig.from_pretrained(directory)).eval()
        # assign=True puts the saved torchao tensors in place of the fresh float weights
        module.load_state_dict(torch.load(directory / QUANTIZED_STATE, weights_only=False), assign=True)
        module.to(device)
        cand = TorchCandidate(info=load_model_info(spec, meta["task"]), module=module, device=device)
    else:
        raise UserError(
            f"{directory} holds a torch artifact in the {fmt!r} format, which this costopt no longer reads",
            "rebuild it: costopt deploy <deploy.yaml>, or run the recipe again",
        )
    cand.compiled = bool(meta.get("compiled", False))
    cand.static_cache, cand.compile_decode = int(meta.get("static_cache", 0)), bool(meta.get("compile_decode", False))
    cand.continuous = meta.get("continuous")
    return cand
