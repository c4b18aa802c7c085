"""The export passes' check: the exported graph must agree with torch on padded batches of real text."""

from __future__ import annotations

import torch

from optimizer import tasks
from optimizer.errors import UserError
from optimizer.runtimes import Candidate, TorchCandidate


def parity(reference: TorchCandidate, exported: Candidate, texts: list[str]) -> tuple[float, float]:
    """(max |diff| on unpadded positions / max |reference|, min per-row cosine) over padded batches."""
    worst, min_cos = 0.0, 1.0
    for b in tasks.make_batches(reference, texts, batch_size=4, sort=False):  # unsorted: real padding
        ref = reference.forward(b.input_ids, b.attention_mask)
        got = exported.forward(b.input_ids, b.attention_mask)
        if ref.dim() == 3:
            keep = b.attention_mask.bool()
            ref, got = ref[keep], got[keep]
        scale = max(float(ref.abs().max()), 1e-6)
        worst = max(worst, float((ref - got).abs().max()) / scale)
        min_cos = min(min_cos, float(torch.nn.functional.cosine_similarity(ref, got, dim=-1).min()))
    return worst, min_cos


def check_parity(
    pass_name: str, runtime: str, reference: TorchCandidate, exported: Candidate, texts: list[str], tolerance: float
) -> str:
    """Raise a one-line error when `exported` disagrees with torch beyond `tolerance`; else the note to keep."""
    diff, cos = parity(reference, exported, texts)
    if diff > tolerance:
        raise UserError(
            f"{pass_name} parity check failed: {runtime} differs from torch by {diff:.2e} "
            f"(relative max |diff| on real tokens; min cosine {cos:.5f}; tolerance {tolerance:g})",
            f"this architecture does not export cleanly with our wrappers: keep it in torch "
            f"(drop {pass_name} and the passes after it) or report the model type",
        )
    return f"{pass_name} parity: relative max |diff| {diff:.1e}, min cosine {cos:.6f} on padded batches"
