"""Pruning passes: unstructured (magnitude, Wanda), N:M, and structured (heads, FFN neurons, layers).

Unstructured and N:M pruning write zeros into dense tensors: dense kernels run no faster and the
saved file is no smaller, and the result says so. 2:4 on CUDA converts to PyTorch's semi-structured
sparse tensors, which have real kernels. Structured pruning physically shrinks the tensors and the config.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from optimizer.errors import UserError
from optimizer.passes.base import Pass, PassConfig, PassContext, no_grad

if TYPE_CHECKING:
    import torch
    from torch import nn

    from optimizer.runtimes import Candidate, TorchCandidate

log = logging.getLogger(__name__)
_NOT_PRUNED = ("embed", "lm_head", "classifier", "pooler", "score", "shared")


def target_linears(model: nn.Module) -> list[nn.Linear]:
    """The Linear layers inside the transformer blocks (embeddings and output heads stay dense)."""
    from torch import nn

    from optimizer import surgery

    try:
        return [lin for b in surgery.blocks(model) for lin in (b.q, b.k, b.v, b.o, *b.ffn_in, b.ffn_out)]
    except UserError:
        return [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not any(s in n for s in _NOT_PRUNED)]


def _zeros_note(cand: Candidate, name: str, linears: list[nn.Linear]) -> None:
    zeros = sum(int((lin.weight == 0).sum()) for lin in linears)
    total = sum(lin.weight.numel() for lin in linears)
    cand.notes.append(
        f"{name} writes zeros only ({zeros / total:.0%} of block weights): dense kernels run at the "
        "same speed and the saved file is not smaller; expect no speedup from this pass alone"
    )


class SparsityConfig(PassConfig):
    sparsity: float = Field(default=0.5, gt=0, lt=1, description="fraction of block weights set to zero")


class MagnitudeConfig(SparsityConfig):
    scope: Literal["global", "layer"] = "layer"


class PruneMagnitude(Pass):
    """Zero the smallest-magnitude weights, per layer or over all block layers at once."""

    name = "prune-magnitude"
    family = "pruning"
    Config = MagnitudeConfig

    @no_grad
    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        import torch

        from optimizer.runtimes import TorchCandidate

        assert isinstance(candidate, TorchCandidate)
        linears = target_linears(candidate.module)
        s = self.config.sparsity
        if self.config.scope == "global":
            mags = torch.cat([lin.weight.detach().abs().flatten().float().cpu() for lin in linears])
            k = max(1, int(s * mags.numel()))
            threshold = mags.kthvalue(k).values.item()
            for lin in linears:
                lin.weight.masked_fill_(lin.weight.abs() <= threshold, 0)
        else:
            for lin in linears:
                w = lin.weight
                k = max(1, int(s * w.numel()))
                threshold = w.abs().flatten().float().kthvalue(k).values.item()
                w.masked_fill_(w.abs() <= threshold, 0)
        _zeros_note(candidate, self.name, linears)
        return candidate


class WandaConfig(SparsityConfig):
    samples: int = Field(default=64, ge=1, description="calibration texts")


def wanda_scores(candidate: TorchCandidate, linears: list[nn.Linear], ctx: PassContext, samples: int) -> list[torch.Tensor]:
    """|W_ij| * ||X_j||_2 from calibration activations (Sun et al., 2023)."""
    from optimizer.passes.calibration import batches, input_norms

    norms = input_norms(candidate, linears, batches(candidate, ctx, samples))
    return [lin.weight.detach().abs().float() * n.to(lin.weight.device)[None, :] for lin, n in zip(linears, norms, strict=False)]


class PruneWanda(Pass):
    """Wanda: zero, in each output row, the weights with the smallest |weight| x input activation norm."""

    name = "prune-wanda"
    family = "pruning"
    Config = WandaConfig

    @no_grad
    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        from optimizer.runtimes import TorchCandidate

        assert isinstance(candidate, TorchCandidate)
        linears = target_linears(candidate.module)
        for lin, score in zip(linears, wanda_scores(candidate, linears, ctx, self.config.samples), strict=False):
            k = int(self.config.sparsity * lin.in_features)
            if k:
                drop = score.topk(k, dim=1, largest=False).indices
                lin.weight.scatter_(1, drop, 0)
        _zeros_note(candidate, self.name, linears)
        return candidate


class NMConfig(PassConfig):
    n: int = Field(default=2, ge=1)
    m: int = Field(default=4, ge=2)
    score: Literal["magnitude", "wanda"] = "wanda"
    samples: int = Field(default=64, ge=1)
    sparse_kernels: bool = Field(default=True, description="on CUDA, store 2:4 layers as semi-structured sparse tensors")


class PruneNM(Pass):
    """N:M pruning: in every group of M consecutive input weights keep the N with the highest score."""

    name = "prune-nm"
    family = "pruning"
    Config = NMConfig

    @no_grad
    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        import torch

        from optimizer.runtimes import TorchCandidate

        assert isinstance(candidate, TorchCandidate)
        c = self.config
        if c.n >= c.m:
            raise UserError(f"prune-nm n={c.n} must be below m={c.m}", "use e.g. n: 2, m: 4")
        linears = target_linears(candidate.module)
        bad = [lin.in_features for lin in linears if lin.in_features % c.m]
        if bad:
            raise UserError(
                f"prune-nm m={c.m} does not divide input width {bad[0]}", "choose m dividing the layer widths (4 or 8)"
            )
        scores = (
            wanda_scores(candidate, linears, ctx, c.samples)
            if c.score == "wanda"
            else [lin.weight.detach().abs().float() for lin in linears]
        )
        for lin, score in zip(linears, scores, strict=False):
            groups = score.view(lin.out_features, -1, c.m)
            drop = groups.topk(c.m - c.n, dim=-1, largest=False).indices
            mask = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False).view_as(lin.weight)
            lin.weight.mul_(mask.to(lin.weight.dtype))
        if ctx.device == "cuda" and (c.n, c.m) == (2, 4) and c.sparse_kernels:
            converted = _to_semi_structured(linears)
            candidate.notes.append(f"prune-nm: {converted}/{len(linears)} layers use semi-structured 2:4 sparse kernels")
        else:
            _zeros_note(candidate, self.name, linears)
        return candidate


def _to_semi_structured(linears: list[nn.Linear]) -> int:
    """Swap 2:4 weights for torch's semi-structured sparse tensors (CUDA, fp16/bf16); returns how many took."""
    import torch
    from torch import nn
    from torch.sparse import to_sparse_semi_structured

    done = 0
    for lin in linears:
        if lin.weight.dtype not in (torch.float16, torch.bfloat16):
            continue  # the sparse kernels take half precision only: cast before prune-nm
        try:
            lin.weight = nn.Parameter(to_sparse_semi_structured(lin.weight.detach()), requires_grad=False)
            done += 1
        except (RuntimeError, ValueError) as e:  # shape constraints of the kernels
            log.info("layer kept dense: %s", e)
    return done


class StructuredConfig(PassConfig):
    heads: float = Field(default=0.0, ge=0, lt=1, description="fraction of attention head groups removed per layer")
    neurons: float = Field(default=0.0, ge=0, lt=1, description="fraction of FFN neurons removed per layer")
    layers: int = Field(default=0, ge=0, description="number of whole blocks removed")
    samples: int = Field(default=64, ge=1, description="calibration texts for importance")
    multiple_of: int = Field(default=8, ge=1, description="round kept FFN widths to this (kernel-friendly shapes)")
    reconstruct: bool = Field(
        default=True,
        description="refit each block's attention and FFN output projections by least squares on the calibration "
        "activations, so what the block writes changes as little as it can (Kwon et al., 2022); off: the kept "
        "weights stay as they were",
    )


RIDGE = 1e-3  # of the Gram matrix's mean diagonal: keeps the refit well posed where kept inputs are collinear or dead


def keep_and_refit(
    gram: torch.Tensor, weight: torch.Tensor, unit: int, keep_n: int, refit: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Which `keep_n` of a layer's input units (contiguous runs of `unit` columns: one FFN neuron, or one
    head group's outputs) to keep, and, with `refit`, the layer's new weight over their columns.

    A unit's importance is the output energy it contributes, E||W_u x_u||^2 = tr(W_u G_uu W_u^T) with G the
    input's Gram matrix; the refit is the least-squares W' = argmin E||W' x_kept - W x||^2, solved from G."""
    import torch

    w = weight.detach().double().cpu()
    n = w.shape[1] // unit
    energy = (gram * (w.T @ w)).view(n, unit, n, unit).diagonal(dim1=0, dim2=2).sum(dim=(0, 1))
    keep = energy.topk(keep_n).indices.sort().values
    cols = (keep[:, None] * unit + torch.arange(unit)).flatten()
    if not refit:
        return keep, None
    g_kk = gram[cols][:, cols]
    ridge = RIDGE * float(g_kk.diagonal().mean()) * torch.eye(len(cols), dtype=torch.float64)
    return keep, torch.linalg.solve(g_kk + ridge, gram[cols] @ w.T).T


class PruneStructured(Pass):
    """Remove the least important heads, FFN neurons and blocks (measured on calibration data); tensors shrink."""

    name = "prune-structured"
    family = "pruning"
    Config = StructuredConfig
    VERSION = 2  # 2: importance as output energy; output projections refit by least squares (reconstruct)

    @no_grad
    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        from optimizer import surgery
        from optimizer.passes.calibration import batches, block_influence, input_gram
        from optimizer.runtimes import TorchCandidate

        assert isinstance(candidate, TorchCandidate)
        c = self.config
        model = candidate.module
        if not (c.heads or c.neurons or c.layers):
            raise UserError("prune-structured has nothing to remove", "set heads, neurons (fractions) or layers (a count)")
        n_blocks = len(surgery.blocks(model))
        if c.layers >= n_blocks:
            raise UserError(
                f"prune-structured layers={c.layers} would remove all {n_blocks} blocks", f"remove at most {n_blocks - 1}"
            )
        data = batches(candidate, ctx, c.samples)
        before = candidate.parameter_counts()[0]
        if c.heads:
            heads, kv, hd = surgery.head_layout(model)
            per, keep_groups = heads // kv, max(1, kv - round(c.heads * kv))
        if c.neurons:
            width = surgery.blocks(model)[0].ffn_out.in_features
            keep_neurons = min(width, max(c.multiple_of, int(round(width * (1 - c.neurons) / c.multiple_of)) * c.multiple_of))
        # Block by block, heads then FFN: each refit sees the inputs the blocks before it now give.
        for i in range(n_blocks):
            if c.heads:
                b = surgery.blocks(model)[i]
                groups, w = keep_and_refit(input_gram(candidate, b.o, data), b.o.weight, per * hd, keep_groups, c.reconstruct)
                surgery.shrink_block_heads(b, groups, per, hd, w)
            if c.neurons:
                b = surgery.blocks(model)[i]
                neurons, w = keep_and_refit(
                    input_gram(candidate, b.ffn_out, data), b.ffn_out.weight, 1, keep_neurons, c.reconstruct
                )
                surgery.shrink_block_ffn(b, neurons, w)
        if c.heads:
            surgery.set_heads(model, keep_groups, per, hd)
        if c.neurons:
            model.config.intermediate_size = keep_neurons
        if c.layers:
            bl = surgery.blocks(model)
            influence = block_influence(candidate, [b.module for b in bl], data)
            drop = set(influence.topk(c.layers, largest=False).indices.tolist())
            surgery.keep_layers(model, [i for i in range(len(bl)) if i not in drop])
            candidate.notes.append(f"prune-structured removed blocks {sorted(drop)} (lowest 1 - cos(in, out) on calibration)")
        after = candidate.parameter_counts()[0]
        refit = f"; output projections refit by least squares on {sum(b.real_tokens for b in data):,} calibration tokens"
        candidate.notes.append(
            f"prune-structured: {before:,} -> {after:,} parameters ({1 - after / before:.1%} fewer)"
            + (refit if c.reconstruct and (c.heads or c.neurons) else "")
        )
        return candidate
