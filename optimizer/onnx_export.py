"""torch -> ONNX export that keeps padded batches and the KV cache right.

transformers 5 builds its attention masks with Python-level logic that the tracer freezes to the
example's shape, so a plain export of an encoder disagrees with torch on padded batches (cosine about
0.97 on MiniLM). The wrappers here build the 4-D additive mask themselves from the 2-D padding mask
and hand it to the model, which uses a 4-D mask as given. Causal LMs take and return the KV cache as
plain tensors (past.{i}.key / present.{i}.key), so prefill (empty past) and decode run one graph.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AttentionInterface, DynamicCache

from optimizer.model import cache_kwarg

OPSET = 17
EXPORT_ATTENTION = "costopt_export"


def _export_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **_: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder attention written as onnxruntime's BERT fusion expects: QK^T / sqrt(d) + mask -> softmax -> V.

    transformers 5's eager attention scales with a Mul after QK^T, which the fusion mistakes for the mask
    branch, so no fused Attention op (and no QAttention after int8) comes out of it.
    """
    scores = torch.matmul(query, key.transpose(2, 3)) / math.sqrt(query.shape[-1])
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attention_mask = _additive(attention_mask, scores.dtype)
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


AttentionInterface.register(EXPORT_ATTENTION, _export_attention)


def _additive(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.where(keep, torch.zeros((), dtype=dtype), torch.full((), torch.finfo(dtype).min, dtype=dtype))


class EncoderGraph(torch.nn.Module):
    """(input_ids, attention_mask) -> last_hidden_state (embedding) or logits (classification)."""

    def __init__(self, module: torch.nn.Module, output: str) -> None:
        super().__init__()
        self.m, self.output = module, output

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # (1 - mask) * min, shaped [B, 1, 1, T]: the pattern onnxruntime's attention fusion recognizes.
        dtype = self.m.dtype
        bias = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        out = self.m(input_ids=input_ids, attention_mask=bias)
        return getattr(out, self.output)


class CausalGraph(torch.nn.Module):
    """(input_ids [B,T], attention_mask [B,P+T], past k/v [B,kv,P,d] x layers) -> logits, present k/v."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.m = module
        self.layers = module.config.num_hidden_layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, t = input_ids.shape
        p = past[0].shape[2]
        cache = DynamicCache(config=self.m.config)
        for i in range(self.layers):
            # Seed each layer with the past as it is: `update` would concatenate it to an empty 1-D tensor,
            # which torch accepts but OpenVINO's frontend cannot convert.
            layer = cache.layers[i]
            layer.lazy_initialization(past[2 * i], past[2 * i + 1])
            layer.keys, layer.values = past[2 * i], past[2 * i + 1]
        positions = (torch.arange(t, device=input_ids.device) + p).unsqueeze(0).expand(b, -1)
        q = torch.arange(t, device=input_ids.device).view(t, 1) + p
        k = torch.arange(p + t, device=input_ids.device).view(1, p + t)
        keep = attention_mask[:, None, None, :].bool() & (k <= q)[None, None]
        out = self.m(
            input_ids=input_ids,
            attention_mask=_additive(keep, self.m.dtype),
            position_ids=positions,
            use_cache=True,
            **{cache_kwarg(self.m): cache},
        )
        present: list[torch.Tensor] = []
        for layer in out.past_key_values.layers[: self.layers]:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def kv_shape(config: Any) -> tuple[int, int]:
    """(key/value heads, head dim) of a causal LM config."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return kv, head_dim


def past_names(layers: int) -> tuple[list[str], list[str]]:
    return (
        [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")],
        [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")],
    )


def export(module: torch.nn.Module, task: str, path: Path, opset: int = OPSET) -> dict[str, Any]:
    """Write `module` (fp32, CPU) to `path`; returns the graph's I/O description for the runtime."""
    module = module.float().cpu().eval()
    previous = module.config._attn_implementation
    if hasattr(module, "set_attn_implementation"):
        # sdpa's mask-skipping branches trace badly; encoders get the fusion-friendly form above.
        module.set_attn_implementation("eager" if task == "causal-lm" else EXPORT_ATTENTION)
    try:
        return _export(module, task, path, opset)
    finally:  # the torch model keeps its own attention (the parity check compares against it)
        if hasattr(module, "set_attn_implementation"):
            module.set_attn_implementation(previous)


def _export(module: torch.nn.Module, task: str, path: Path, opset: int) -> dict[str, Any]:
    ids = torch.randint(5, 100, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "total"}}
    if task == "causal-lm":
        layers = module.config.num_hidden_layers
        kv, hd = kv_shape(module.config)
        past = [torch.randn(2, kv, 3, hd) for _ in range(2 * layers)]
        mask = torch.ones(2, 3 + 6, dtype=torch.long)
        ins, outs = past_names(layers)
        graph: torch.nn.Module = CausalGraph(module)
        args: tuple[torch.Tensor, ...] = (ids, mask, *past)
        inputs, outputs = ["input_ids", "attention_mask", *ins], ["logits", *outs]
        axes |= {n: {0: "batch", 2: "past"} for n in ins} | {n: {0: "batch", 2: "total"} for n in outs}
        axes["logits"] = {0: "batch", 1: "tokens"}
    else:
        out_name = "last_hidden_state" if task == "embedding" else "logits"
        graph, args = EncoderGraph(module, out_name), (ids, mask)
        inputs, outputs = ["input_ids", "attention_mask"], [out_name]
        axes[out_name] = {0: "batch", 1: "tokens"} if task == "embedding" else {0: "batch"}
    graph.eval()  # a fresh wrapper is in training mode, and export restores that mode onto the model (dropout on)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow we replaced
        torch.onnx.export(
            graph, args, str(path), dynamo=False, input_names=inputs, output_names=outputs, dynamic_axes=axes, opset_version=opset
        )
    cfg = module.config
    io: dict[str, Any] = {
        "inputs": inputs,
        "outputs": outputs,
        "num_heads": getattr(cfg, "num_attention_heads", 0),
        "hidden_size": getattr(cfg, "hidden_size", 0),
    }
    if task == "causal-lm":
        io |= {"layers": layers, "kv_heads": kv, "head_dim": hd}
    return io
