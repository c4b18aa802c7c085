"""The width check's figure (`WidthCheck`) and its text, on the record's side: `measure.widths` makes one by
running a candidate at every input width; the record, the CLI and the report read it without torch."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from optimizer.measure.stored import Stored


@dataclass
class WidthCheck(Stored):
    """Relative error of the candidate's outputs against the baseline's, per input width."""

    widths: list[int]
    errors: list[float]
    defects: list[dict[str, float]] = field(default_factory=list)  # width, error, its neighbours' median error
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.defects

    def text(self) -> str:
        span = f"input widths {self.widths[0]}-{self.widths[-1]} ({len(self.widths)} checked)"
        if self.ok:
            return f"{span}: relative error {statistics.median(self.errors):.3f} (median), {max(self.errors):.3f} at most; no width stands out"
        worst = max(self.defects, key=lambda d: d["error"] / max(d["neighbours"], 1e-9))
        more = f" (and {len(self.defects) - 1} more width(s))" if len(self.defects) > 1 else ""
        return (
            f"{span}: at width {int(worst['width'])} the outputs are {worst['error']:.2f} off the baseline's against "
            f"{worst['neighbours']:.2f} at neighbouring widths{more}: a runtime defect at that input shape, not servable as is"
        )


def check_text(check: WidthCheck | dict[str, Any] | None) -> str | None:
    """A check, typed or as stored (`WidthCheck.to_json`), in one line."""
    return c.text() if (c := WidthCheck.maybe(check)) else None


def padded_text(widths: dict[Any, int], first: WidthCheck | dict[str, Any]) -> str:
    """What the confirmation did about a defect: which widths it serves wider, and what it had found."""
    moved = ", ".join(f"{w} at {to}" for w, to in sorted((int(w), to) for w, to in widths.items()))
    return f"served width {moved} tokens (pad-widths), where the first check found: {check_text(first)}"
