"""The quality budget: one rule for what "within budget" means, used by search, confirmation and reports.

A configuration is within budget when the upper end of the confidence interval of its drop in the
budget's metric is at most `max_drop` (relative to the baseline's value when `relative`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from optimizer.formatting import amount


@dataclass(frozen=True)
class Budget:
    metric: str
    max_drop: float
    relative: bool = True
    confidence: float = 0.95

    def _end(self, drop: dict[str, Any], side: str) -> float:
        rel = drop.get(f"relative_{side}")
        return float(rel if self.relative and rel is not None else drop[side])

    def violation(self, drop: dict[str, Any]) -> float:
        """Upper end of the drop's interval minus the budget: <= 0 means within budget."""
        return self._end(drop, "high") - self.max_drop

    def within(self, drop: dict[str, Any]) -> bool:
        return self.violation(drop) <= 0

    def worst(self, drops_by_set: dict[str, dict[str, Any]]) -> tuple[str, float]:
        """With several eval sets the budget must hold on each: the set furthest over it, and its violation.

        `drops_by_set` maps a set's name to its drops by metric."""
        name = max(drops_by_set, key=lambda n: self.violation(drops_by_set[n][self.metric]))
        return name, self.violation(drops_by_set[name][self.metric])

    def surely_over(self, drop: dict[str, Any]) -> bool:
        """Even the optimistic (low) end of the interval is over budget."""
        return self._end(drop, "low") > self.max_drop

    def low(self, drop: dict[str, Any]) -> float:
        return self._end(drop, "low")

    @property
    def shown(self) -> float:
        """max_drop in the unit drops are shown in: percent when relative."""
        return 100 * self.max_drop if self.relative else self.max_drop

    def amount(self, x: float) -> str:
        return amount(x, self.relative)

    @property
    def text(self) -> str:
        limit = f"{self.shown:.3g}% (relative)" if self.relative else f"{self.max_drop:g}"
        return f"{self.metric} drop <= {limit}, at the upper end of the {self.confidence:.0%} interval"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"max_drop_display": self.shown, "text": self.text}
