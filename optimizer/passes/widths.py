"""Serve some input widths wider: the way around a runtime that is wrong at one input shape.

The width check (measure.widths) finds widths where a configuration's outputs stand far off the
baseline's, while its neighbours are fine: OpenVINO 2026.4's fused attention with the bf16 hint on an int8
MiniLM is wrong at exactly 32 tokens. Padding such a batch one column wider (masked, on the right, so every
real token keeps its position) runs the kernel that is right; outputs come back at the caller's width.
The confirmation adds this pass itself when a defect has a clean wider neighbour, and checks every width
again before it trusts the result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from optimizer.passes.base import Pass, PassConfig, PassContext

if TYPE_CHECKING:
    from optimizer.runtimes import Candidate


class PadWidthsConfig(PassConfig):
    widths: dict[int, int] = Field(description="padded input width -> the wider width to serve it at, e.g. {32: 33}")

    @field_validator("widths")
    @classmethod
    def _wider(cls, v: dict[int, int]) -> dict[int, int]:
        for w, to in v.items():
            if not 0 < w < to:
                raise ValueError(f"width {w} -> {to}: each width must map to a wider one")
        return v


class PadWidths(Pass):
    """Serve encoder inputs of the listed padded widths at a wider width (ONNX Runtime, OpenVINO)."""

    name = "pad-widths"
    family = "export"  # changes how the model is served, not the model
    tasks = frozenset({"embedding", "classification"})  # a causal LM's positions and KV cache would move
    runtimes_in = frozenset({"onnxruntime", "openvino"})
    Config = PadWidthsConfig

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        from optimizer.runtimes.graph import GraphCandidate

        assert isinstance(candidate, GraphCandidate)
        candidate.pad_widths = {**candidate.pad_widths, **self.config.widths}
        shown = ", ".join(f"{w} -> {to}" for w, to in sorted(self.config.widths.items()))
        candidate.notes.append(f"pad-widths: inputs {shown} tokens wide are served wider (padding masked out)")
        return candidate


def around(defective: list[int], checked: list[int]) -> dict[int, int] | None:
    """Each defective width -> the nearest wider checked width that is not defective; None when one has none."""
    bad = set(defective)
    out = {}
    for w in defective:
        wider = next((c for c in checked if c > w and c not in bad), None)
        if wider is None:
            return None
        out[w] = wider
    return out
