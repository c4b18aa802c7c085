"""One row per measured configuration, the same shape for a run's candidate and a search's trials."""

from __future__ import annotations

import math
from typing import Any

from optimizer.cli_format import chain_text
from optimizer.formatting import drop_x
from optimizer.passes import REGISTRY, runtime_of

FAMILY_ORDER = ("distillation", "pruning", "quantization")


def family_of(passes: list[dict[str, Any]]) -> str:
    """The technique families a chain uses, e.g. 'pruning + quantization'; export alone is a runtime change."""
    fams = {getattr(REGISTRY.get(p["name"]), "family", "other") for p in passes}
    core = [f for f in FAMILY_ORDER if f in fams] + sorted(fams - set(FAMILY_ORDER) - {"export"})
    if core:
        return " + ".join(core)
    return "runtime change" if fams else "baseline"


def make_entry(
    label: str,
    passes: list[dict[str, Any]],
    *,
    trial: int | None = None,
    state: str = "ok",
    quality: dict[str, float] | None = None,
    drops: dict[str, Any] | None = None,
    metric: str = "",
    violation: float | None = None,
    cost: dict[str, Any] | None = None,
    objective: float | None = None,
    speed: dict[str, Any] | None = None,
    footprint: dict[str, Any] | None = None,
    deployment: dict[str, Any] | None = None,
    reason: str | None = None,
    seconds: float | None = None,
    screen: dict[str, Any] | None = None,
    same_as: int | None = None,
    drops_by_set: dict[str, Any] | None = None,
) -> dict[str, Any]:
    deployment = deployment or {}
    return {
        "label": label,
        "trial": trial,
        "state": state,
        "family": family_of(passes),
        "chain": chain_text(passes),
        "passes": [{"name": p["name"], "params": p.get("params", {})} for p in passes],
        "runtime": deployment.get("runtime") or runtime_of(passes),
        "batch_size": deployment.get("batch_size") or (speed or {}).get("batch_size"),
        "threads": deployment.get("threads") or (speed or {}).get("threads"),
        "streams": deployment.get("streams") or (speed or {}).get("streams") or 1,
        "quality": quality or {},
        "drops": drops or {},
        "drop": (drops or {}).get(metric),
        "drops_by_set": drops_by_set or {},  # with several eval sets: the budget metric's drop on each
        "violation": violation,
        "feasible": None if violation is None else bool(violation <= 0),
        "cost": cost,
        "usd_per_m": (cost or {}).get("blended_usd_per_m"),
        "objective": objective,
        "speed": speed,
        "footprint": footprint,
        "reason": reason,
        "seconds": seconds,
        "screen": screen,
        "same_as": same_as,
        "pareto": False,  # same_as: a repeat of that trial's configuration, its figures reused
    }


def mark_pareto(entries: list[dict[str, Any]], relative: bool, sign: int = 1) -> None:
    """Flag the configurations no other beats on both the drop and the objective (sign -1: higher is better)."""
    pts = [(e, drop_x(e["drop"], relative), e["objective"]) for e in entries]
    pts = [(e, x[0], sign * y) for e, x, y in pts if x is not None and y is not None and math.isfinite(y)]
    for e, x, y in pts:
        e["pareto"] = not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for _, x2, y2 in pts)


def family_best(entries: list[dict[str, Any]], sign: int = 1) -> list[dict[str, Any]]:
    """Per technique family, its cheapest feasible configuration, else the one nearest the budget."""
    out = []
    for fam in sorted({e["family"] for e in entries if e["state"] == "ok" and e["objective"] is not None}):
        group = [e for e in entries if e["family"] == fam and e["state"] == "ok" and e["objective"] is not None]
        feasible = [e for e in group if e["feasible"]]
        best = (
            min(feasible, key=lambda e: sign * e["objective"])
            if feasible
            else min(group, key=lambda e: e["violation"] if e["violation"] is not None else math.inf)
        )
        out.append(
            {
                "family": fam,
                "label": best["label"],
                "trial": best["trial"],
                "chain": best["chain"],
                "runtime": best["runtime"],
                "usd_per_m": best["usd_per_m"],
                "objective": best["objective"],
                "feasible": best["feasible"],
                "drop": best["drop"],
                "trials": len(group),
            }
        )
    return out
