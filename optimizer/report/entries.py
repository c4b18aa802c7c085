"""One row per measured configuration, the same shape for a run's candidate and a search's trials."""

from __future__ import annotations

import math
from typing import Any

from optimizer.cli_format import chain_text
from optimizer.formatting import drop_x
from optimizer.measurement import Measurement
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
    m: Measurement,
    *,
    trial: int | None = None,
    state: str = "ok",
    objective: float | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """A report row from a measurement; only a fully measured one ("ok") is judged against the budget."""
    dep, speed = m.deployment, m.speed or {}
    violation = m.violation if state == "ok" else None
    return {
        "label": label,
        "trial": trial,
        "state": state,
        "family": family_of(m.passes),
        "chain": chain_text(m.passes),
        "passes": [{"name": p["name"], "params": p.get("params", {})} for p in m.passes],
        "runtime": dep.get("runtime") or runtime_of(m.passes),
        "batch_size": dep.get("batch_size") or speed.get("batch_size"),
        "threads": dep.get("threads") or speed.get("threads"),
        "streams": dep.get("streams") or speed.get("streams") or 1,
        "quality": m.quality,
        "drops": m.drops,
        "drop": m.drop,
        "drops_by_set": m.budget_drops(),  # with several eval sets: the budget metric's drop on each
        "violation": violation,
        "feasible": m.feasible if state == "ok" else None,  # the record's one rule: width defects included
        "cost": m.cost,
        "usd_per_m": m.cost.blended_usd_per_m if m.cost else None,
        "objective": objective,
        "speed": m.speed,
        "footprint": m.footprint,
        "reason": m.reason,
        "seconds": seconds,
        "screen": m.screen,
        "same_as": m.same_as,
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
