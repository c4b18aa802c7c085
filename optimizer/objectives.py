"""What a search can minimize or maximize: one table entry per objective, next to how it is read.

Each entry reads its value from a trial's measured speed (the benchmark's dict) and price (a
`measure.price.Price`, None without a catalog entry). Adding an objective is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from optimizer.measure.price import Price

Figures = dict[str, Any]


def _latency(speed: Figures, cost: Price | None) -> float:
    if "token_latency_s" in speed:  # causal LM: per decoded token
        return float(speed["token_latency_s"]["p50"])
    return float(speed["batch_latency_s"]["p50"])


@dataclass(frozen=True)
class ObjectiveKind:
    direction: str  # minimize | maximize
    label: str  # how reports and dashboards name it
    needs_price: bool  # reads the cost, so the recipe needs hardware.catalog
    read: Callable[[Figures, Price | None], float]


OBJECTIVES: dict[str, ObjectiveKind] = {
    "cost": ObjectiveKind("minimize", "$ per 1M tokens (blended)", True, lambda speed, cost: float(cost.blended_usd_per_m)),  # type: ignore[union-attr]
    "throughput": ObjectiveKind(
        "maximize", "input tokens/s", False, lambda speed, cost: float(speed["input_tokens_per_s"]["median"])
    ),
    "latency": ObjectiveKind("minimize", "latency p50 (s)", False, _latency),
}
