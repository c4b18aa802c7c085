"""Quantization passes that stay in torch."""

from __future__ import annotations

from typing import Literal

from optimizer.model import DTYPES
from optimizer.passes import register
from optimizer.passes.base import Pass, PassConfig, PassContext
from optimizer.runtime import Candidate, TorchCandidate


class CastConfig(PassConfig):
    dtype: Literal["bfloat16", "float16"] = "bfloat16"


@register
class Cast(Pass):
    """Cast all floating-point weights to bf16 or fp16 (halves weight bytes; speed depends on kernels)."""

    name = "cast"
    family = "quantization"
    Config = CastConfig

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        assert isinstance(candidate, TorchCandidate)
        candidate.module.to(DTYPES[self.config.dtype])
        return candidate
