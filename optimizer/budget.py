"""The quality budget: one rule for what "within budget" means, used by search, confirmation and reports.

A configuration is within budget when the upper end of the confidence interval of its drop in the
budget's metric is at most `max_drop` (relative to the baseline's value when `relative`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Literal

from optimizer.formatting import amount
from optimizer.measure.stats import Drop

POWER_AT = 0.3  # the power figure's true drop, as a share of the budget: a small, real loss
POWER_WANTED = 0.8  # the certification probability the "examples needed" figure aims at


@dataclass(frozen=True)
class Budget:
    metric: str
    max_drop: float
    relative: bool = True
    confidence: float = 0.95

    def _end(self, drop: Drop, side: Literal["low", "high"]) -> float:
        return float(drop.end(side, self.relative))

    def violation(self, drop: Drop) -> float:
        """Upper end of the drop's interval minus the budget: <= 0 means within budget."""
        return self._end(drop, "high") - self.max_drop

    def within(self, drop: Drop) -> bool:
        return self.violation(drop) <= 0

    def worst(self, drops_by_set: dict[str, dict[str, Drop]]) -> tuple[str, float]:
        """With several eval sets the budget must hold on each: the set furthest over it, and its violation.

        `drops_by_set` maps a set's name to its drops by metric."""
        name = max(drops_by_set, key=lambda n: self.violation(drops_by_set[n][self.metric]))
        return name, self.violation(drops_by_set[name][self.metric])

    def surely_over(self, drop: Drop) -> bool:
        """Even the optimistic (low) end of the interval is over budget."""
        return self._end(drop, "low") > self.max_drop

    def low(self, drop: Drop) -> float:
        return self._end(drop, "low")

    def spread(self, drop: Drop) -> float:
        """The drop's standard error in the budget's unit, read from its two-sided interval (the bootstrap's
        percentiles, close to normal for a mean over examples)."""
        return (self._end(drop, "high") - self._end(drop, "low")) / (2 * _z(drop.confidence))

    def power(self, drop: Drop) -> dict[str, float]:
        """How likely this eval set certifies a configuration as noisy as `drop`'s, whose true drop is
        POWER_AT of the budget: P(upper end <= max_drop) = Phi((max_drop - true) / se - z). Also the true drop
        certified with POWER_WANTED probability, and how many examples that would take for POWER_AT's drop
        (the standard error falls as 1/sqrt(examples)). A spread of 0 (outputs that match the baseline's
        example by example) certifies any true drop under the budget."""
        z, z_want = _z(drop.confidence), NormalDist().inv_cdf(POWER_WANTED)
        se, at, n = self.spread(drop), POWER_AT * self.max_drop, drop.n
        if se <= 0:
            return {"true_drop": at, "probability": 1.0, "certified_at_wanted": self.max_drop, "examples": n, "se": 0.0}
        return {
            "true_drop": at,
            "probability": NormalDist().cdf((self.max_drop - at) / se - z),
            "wanted": POWER_WANTED,
            "certified_at_wanted": self.max_drop - (z + z_want) * se,  # below 0: only a gain is certified that often
            "examples": n,
            "examples_needed": round(n * ((z + z_want) * se / (self.max_drop - at)) ** 2) if n else None,
            "se": se,
        }

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


def power_text(p: dict[str, Any], relative: bool) -> str:
    """`Budget.power`'s figures in one line."""

    def amt(x: float) -> str:
        return amount(x, relative)

    n = p["examples"] or "these"
    if p["se"] == 0:
        return f"power: outputs match the baseline's on all {n} examples, so any true drop under the budget is certified"
    head = (
        f"power: a true drop of {amt(p['true_drop'])} would be certified with probability {p['probability']:.0%} "
        f"on {n} examples like these (standard error {amt(p['se']).lstrip('+')})"
    )
    if p["examples"] and p["examples_needed"] <= p["examples"]:  # more than enough: the data is not the limit
        fewer = f" ({p['examples_needed']:,} examples would give {p['wanted']:.0%})" if p["examples_needed"] >= 30 else ""
        return f"{head}: the data is not the limit{fewer}"
    return (
        f"{head}; {p['wanted']:.0%} needs a true drop <= {amt(p['certified_at_wanted'])}, "
        f"or about {p['examples_needed']:,} examples for {amt(p['true_drop'])}"
    )


def _z(confidence: float) -> float:
    """The normal quantile of a two-sided interval at `confidence` (its upper end's distance in standard errors)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)
