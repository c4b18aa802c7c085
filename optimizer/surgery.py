"""Physical model surgery: remove layers, FFN neurons and attention head groups, and fix the config.

Works on the two block layouts that cover most open models: BERT-style encoders
(encoder.layer[i].attention.self.query/key/value, attention.output.dense, intermediate.dense,
output.dense) and Llama-style decoders (model.layers[i].self_attn.q/k/v/o_proj, mlp.gate/up/down_proj,
also Mistral, Qwen2/3, SmolLM). The result is an ordinary transformers model whose config matches its
tensors, so save_pretrained/from_pretrained round-trip it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from optimizer.errors import UserError


@dataclass
class Block:
    """Handles on one transformer block's prunable parts."""

    module: nn.Module
    ffn_in: list[nn.Linear]  # rows are FFN neurons (BERT: intermediate.dense; Llama: gate_proj, up_proj)
    ffn_out: nn.Linear  # columns are FFN neurons
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear  # columns are attention heads' outputs
    attention: nn.Module


def layer_list(model: nn.Module) -> tuple[nn.Module, str]:
    """(parent module, attribute) of the ModuleList of blocks."""
    for path in ("encoder.layer", "bert.encoder.layer", "model.layers", "layers", "roberta.encoder.layer"):
        parent = model
        parts = path.split(".")
        try:
            for p in parts[:-1]:
                parent = getattr(parent, p)
            if isinstance(getattr(parent, parts[-1]), nn.ModuleList):
                return parent, parts[-1]
        except AttributeError:
            continue
    raise UserError(
        f"structured pruning does not know the block layout of {type(model).__name__}",
        "use a BERT-style encoder or a Llama-style decoder, or use unstructured pruning (prune-magnitude)",
    )


def blocks(model: nn.Module) -> list[Block]:
    parent, attr = layer_list(model)
    out = []
    for layer in getattr(parent, attr):
        if hasattr(layer, "mlp"):  # Llama-style
            a = layer.self_attn
            out.append(
                Block(
                    layer,
                    [layer.mlp.gate_proj, layer.mlp.up_proj],
                    layer.mlp.down_proj,
                    a.q_proj,
                    a.k_proj,
                    a.v_proj,
                    a.o_proj,
                    a,
                )
            )
        else:  # BERT-style
            s = layer.attention.self
            out.append(
                Block(
                    layer,
                    [layer.intermediate.dense],
                    layer.output.dense,
                    s.query,
                    s.key,
                    s.value,
                    layer.attention.output.dense,
                    s,
                )
            )
    return out


def _slice(lin: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping `keep` output rows (dim=0) or input columns (dim=1)."""
    w = lin.weight.data.index_select(dim, keep.to(lin.weight.device))
    new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if lin.bias is not None:
        new.bias.data.copy_(lin.bias.data if dim == 1 else lin.bias.data.index_select(0, keep.to(w.device)))
    return new


def _replace(parent: nn.Module, old: nn.Linear, new: nn.Linear) -> None:
    for name, child in parent.named_modules():
        if child is old:
            owner = parent.get_submodule(name.rsplit(".", 1)[0]) if "." in name else parent
            setattr(owner, name.rsplit(".", 1)[-1], new)
            return
    raise RuntimeError("linear layer not found in its block")


def keep_layers(model: nn.Module, keep: list[int]) -> None:
    """Keep only the blocks at `keep` (in order); updates num_hidden_layers and per-layer indices."""
    parent, attr = layer_list(model)
    layers = getattr(parent, attr)
    if not keep or any(i < 0 or i >= len(layers) for i in keep):
        raise UserError(
            f"keep_layers {keep} is not a non-empty list of layer indices below {len(layers)}",
            f"give indices from 0 to {len(layers) - 1}",
        )
    setattr(parent, attr, nn.ModuleList([layers[i] for i in sorted(set(keep))]))
    cfg = model.config
    kept = sorted(set(keep))
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in kept]
    cfg.num_hidden_layers = len(kept)
    for new_idx, layer in enumerate(getattr(parent, attr)):
        for m in layer.modules():
            if hasattr(m, "layer_idx"):  # the KV cache is indexed by it
                m.layer_idx = new_idx


def _set_weight(lin: nn.Linear, weight: torch.Tensor | None) -> nn.Linear:
    if weight is not None:
        lin.weight.data.copy_(weight.to(lin.weight.dtype))
    return lin


def shrink_block_ffn(b: Block, keep: torch.Tensor, out_weight: torch.Tensor | None = None) -> None:
    """Keep the FFN neurons `keep` (sorted) of one block; `out_weight` replaces the output projection's
    kept columns (a refit), else they are kept as they were. The config is the caller's to update."""
    for lin in b.ffn_in:
        _replace(b.module, lin, _slice(lin, keep, 0))
    _replace(b.module, b.ffn_out, _set_weight(_slice(b.ffn_out, keep, 1), out_weight))


def shrink_ffn(model: nn.Module, keep: list[torch.Tensor]) -> None:
    """Keep the FFN neurons `keep[i]` in block i; all blocks must keep the same count (one config value)."""
    sizes = {len(k) for k in keep}
    if len(sizes) != 1:
        raise RuntimeError("every block must keep the same number of FFN neurons")
    for b, k in zip(blocks(model), keep, strict=False):
        shrink_block_ffn(b, k.sort().values)
    model.config.intermediate_size = sizes.pop()


def head_layout(model: nn.Module) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim); refuses configs that cannot express fewer heads."""
    cfg = model.config
    heads = cfg.num_attention_heads
    if not hasattr(cfg, "head_dim") and cfg.model_type not in ("llama", "mistral", "qwen2", "qwen3"):
        raise UserError(
            f"{cfg.model_type} derives its head size from hidden_size / num_attention_heads, so a "
            "config with fewer heads cannot describe the pruned tensors",
            "prune neurons and layers for this model (prune-structured heads: 0)",
        )
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return heads, kv, head_dim


def group_columns(groups: list[int], per: int, hd: int) -> torch.Tensor:
    """The o_proj input columns (query rows) of key/value head groups `groups`, `per` query heads of `hd` each."""
    return torch.cat([torch.arange(h * hd, (h + 1) * hd) for g in groups for h in range(g * per, (g + 1) * per)])


def shrink_block_heads(b: Block, groups: torch.Tensor, per: int, hd: int, out_weight: torch.Tensor | None = None) -> None:
    """Keep the key/value head groups `groups` (sorted) of one block, with all their query heads;
    `out_weight` replaces o_proj's kept columns (a refit). The config is the caller's to update."""
    kv_rows = torch.cat([torch.arange(g * hd, (g + 1) * hd) for g in groups.tolist()])
    q_rows = group_columns(groups.tolist(), per, hd)
    _replace(b.module, b.q, _slice(b.q, q_rows, 0))
    _replace(b.module, b.k, _slice(b.k, kv_rows, 0))
    _replace(b.module, b.v, _slice(b.v, kv_rows, 0))
    _replace(b.module, b.o, _set_weight(_slice(b.o, q_rows, 1), out_weight))


def set_heads(model: nn.Module, kv_groups: int, per: int, hd: int) -> None:
    model.config.head_dim = hd
    model.config.num_key_value_heads = kv_groups
    model.config.num_attention_heads = kv_groups * per


def shrink_heads(model: nn.Module, keep_groups: list[torch.Tensor]) -> None:
    """Keep the key/value head groups `keep_groups[i]` in block i (with all their query heads)."""
    heads, kv, hd = head_layout(model)
    per = heads // kv
    sizes = {len(k) for k in keep_groups}
    if len(sizes) != 1:
        raise RuntimeError("every block must keep the same number of head groups")
    for b, groups in zip(blocks(model), keep_groups, strict=False):
        shrink_block_heads(b, groups.sort().values, per, hd)
    set_heads(model, sizes.pop(), per, hd)
