"""Calibration data for passes: texts, and activation statistics gathered with forward hooks.

Statistics count real tokens only (the attention mask), so padding never weighs in.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from optimizer import tasks
from optimizer.data import stdlib_split
from optimizer.passes.base import PassContext
from optimizer.runtimes import TorchCandidate


def sample_texts(ctx: PassContext, n: int) -> list[str]:
    """Calibration texts: the recipe's calibration split, else its train split, else built-in docstrings."""
    data = ctx.calibration or ctx.train
    texts = data.all_texts() if data is not None else [e.text for e in stdlib_split("calibration")]
    return texts[:n]


def batches(
    cand: TorchCandidate, ctx: PassContext, samples: int, batch_size: int = 8, max_length: int = 256
) -> list[tasks.Batch]:
    return tasks.make_batches(cand, sample_texts(ctx, samples), batch_size, max_length=min(max_length, cand.info.limit))


def _run(cand: TorchCandidate, data: Iterable[tasks.Batch]) -> None:
    for b in data:
        cand.module(input_ids=b.input_ids.to(cand.device), attention_mask=b.attention_mask.to(cand.device))


@torch.no_grad()
def input_norms(cand: TorchCandidate, linears: list[nn.Linear], data: list[tasks.Batch]) -> list[torch.Tensor]:
    """Per input feature, the L2 norm over calibration tokens of each Linear's input (Wanda's ||X_j||)."""
    sums = [torch.zeros(lin.in_features, dtype=torch.float64) for lin in linears]
    mask: list[torch.Tensor] = []

    def hook(i: int):  # noqa: ANN202
        def fn(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].float()
            m = mask[0].to(x.device).bool()
            rows = x[m] if x.dim() == 3 and x.shape[:2] == m.shape else x.reshape(-1, x.shape[-1])  # real tokens
            sums[i] += (rows.double() ** 2).sum(0).cpu()

        return fn

    handles = [lin.register_forward_pre_hook(hook(i)) for i, lin in enumerate(linears)]
    try:
        for b in data:
            mask[:] = [b.attention_mask]
            _run(cand, [b])
    finally:
        for h in handles:
            h.remove()
    return [s.sqrt().float() for s in sums]


class _Captured(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward is not run."""


@torch.no_grad()
def input_gram(cand: TorchCandidate, linear: nn.Linear, data: list[tasks.Batch]) -> torch.Tensor:
    """E[x x^T] over the real calibration tokens of `linear`'s input (float64, [in, in]): what a least-squares
    refit of that layer needs. Each forward stops at the layer."""
    gram = torch.zeros(linear.in_features, linear.in_features, dtype=torch.float64)
    mask: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].double()
        m = mask[0].to(x.device).bool()
        rows = x[m] if x.dim() == 3 and x.shape[:2] == m.shape else x.reshape(-1, x.shape[-1])
        gram.add_((rows.T @ rows).cpu())
        raise _Captured

    handle = linear.register_forward_pre_hook(hook)
    tokens = 0
    try:
        for b in data:
            mask[:] = [b.attention_mask]
            tokens += b.real_tokens
            try:
                _run(cand, [b])
            except _Captured:
                pass
    finally:
        handle.remove()
    return gram / max(tokens, 1)


@torch.no_grad()
def block_influence(cand: TorchCandidate, layers: list[nn.Module], data: list[tasks.Batch]) -> torch.Tensor:
    """Per block, mean over real tokens of 1 - cos(input, output): how much the block changes the stream."""
    total = torch.zeros(len(layers), dtype=torch.float64)
    keep: list[torch.Tensor] = []
    count = 0

    def hook(i: int):  # noqa: ANN202
        def fn(_m: nn.Module, args: tuple, kwargs: dict, out: object) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            k = keep[0].to(x.device)
            cos = torch.nn.functional.cosine_similarity(x[k].float(), y[k].float(), dim=-1)
            total[i] += float((1 - cos).sum())

        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for b in data:
            keep[:] = [b.attention_mask.bool()]
            count += b.real_tokens
            _run(cand, [b])
    finally:
        for h in handles:
            h.remove()
    return (total / max(count, 1)).float()


def next_folder(ctx: PassContext, name: str) -> Path:
    """A new numbered folder under the run's work directory for a pass's output artifact."""
    work = Path(ctx.work_dir)
    n = len(list(work.glob("*"))) if work.exists() else 0
    folder = work / f"{n:02d}-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
