"""Sequence-length cap: serve an encoder on at most `tokens` tokens of each input.

Work per input falls with its length (linearly in the matmuls, quadratically in attention), so for
long documents a cap is a cost lever; what it costs in quality is measured like any other pass,
because the text past the cap is no longer read. Requests are still counted at the model's own
limit (measure.speed), so a cap never looks cheaper by counting fewer tokens. It runs on any runtime
and changes no weights: put it last in a recipe, so the artifacts before it are shared in the cache.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from pydantic import Field

from optimizer.passes.base import Pass, PassConfig, PassContext

if TYPE_CHECKING:
    from optimizer.runtimes import Candidate


class InputCapConfig(PassConfig):
    tokens: int = Field(ge=8, description="read at most this many tokens of each input")


class InputCap(Pass):
    name = "max-length"
    family = "input"
    tasks = frozenset({"embedding", "classification"})  # a causal LM's prompt length is the workload itself
    runtimes_in = frozenset({"torch", "onnxruntime", "openvino"})
    Config = InputCapConfig

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        own = candidate.info.max_length
        cap = self.config.tokens
        # a copy: the model description may be shared with the candidates it was derived from
        candidate.info = dataclasses.replace(candidate.info, input_cap=cap if cap < own else None)
        candidate.notes.append(
            f"max-length: reads at most {cap} of the model's {own} tokens per input"
            if cap < own
            else f"max-length: {cap} is not below the model's own limit of {own} tokens; nothing capped"
        )
        return candidate
