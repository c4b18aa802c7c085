"""When nothing met the budget: what came closest and what to try next, each line computed from the data."""

from __future__ import annotations

import collections
import math
from typing import Any

from optimizer.formatting import drop_x, shown_amount
from optimizer.passes import REGISTRY
from optimizer.report.entries import FAMILY_ORDER


def looser_budgets(
    entries: list[dict[str, Any]], baseline_objective: float | None, relative: bool, sign: int = 1, limit: int = 3
) -> list[dict[str, Any]]:
    """What each looser budget would buy: the cheapest configuration whose interval's upper end fits it,
    for the smallest budgets that admit something better than the baseline."""
    done = [e for e in entries if e["state"] == "ok" and e["objective"] is not None and e["drop"]]
    if baseline_objective is not None:
        done = [e for e in done if sign * e["objective"] < sign * baseline_objective]
    done.sort(key=lambda e: drop_x(e["drop"], relative)[2])
    out, best = [], math.inf
    for e in done:  # walk budgets upward; keep each one that buys a cheaper configuration
        if sign * e["objective"] < best:
            best = sign * e["objective"]
            out.append(
                {
                    "budget": drop_x(e["drop"], relative)[2],
                    "label": e["label"],
                    "trial": e["trial"],
                    "objective": e["objective"],
                    "usd_per_m": e["usd_per_m"],
                    "chain": e["chain"],
                }
            )
    return out[:limit]


def suggestions(
    entries: list[dict[str, Any]],
    budget: dict[str, Any],
    task: str,
    space_size: int | None,
    baseline_objective: float | None,
    eval_examples: int | None,
    sign: int = 1,
) -> dict[str, Any]:
    relative = budget["relative"]
    done = [e for e in entries if e["state"] == "ok" and e["violation"] is not None]
    closest = min(done, key=lambda e: e["violation"]) if done else None
    lines: list[str] = []
    if closest is not None:
        point, low, high = drop_x(closest["drop"], relative)
        over = 100 * closest["violation"] if relative else closest["violation"]
        lines.append(
            f"Closest: {closest['label']} ({closest['chain']}) lost {shown_amount(point, relative)} "
            f"[{shown_amount(low, relative)}, {shown_amount(high, relative)}] {budget['metric']}, over the budget by "
            f"{over:.2f} {'points' if relative else ''}".rstrip()
            + "."
        )
        if point <= budget["max_drop_display"] < high:
            half = (high - low) / 2
            lines.append(
                f"Its point estimate is inside the budget; only the interval (±{half:.2f}"
                f"{' points' if relative else ''}) is not. A larger eval set narrows it: about 4x the "
                f"{eval_examples or 'current'} examples halves it."
            )
    for lb in looser_budgets(entries, baseline_objective, relative, sign):
        price = f"${lb['usd_per_m']:.5g} per 1M tokens" if lb["usd_per_m"] is not None else f"objective {lb['objective']:.5g}"
        gain = (
            f", {baseline_objective / lb['objective']:.2f}x cheaper than the baseline"
            if baseline_objective and lb["usd_per_m"] is not None and sign == 1
            else ""
        )
        lines.append(
            f"A looser budget: max_drop {shown_amount(lb['budget'], relative).lstrip('+')} would accept {lb['label']} at {price}{gain}."
        )
    tried = {e["chain"] + f"|{e['batch_size']}|{e['threads']}|{e.get('streams')}" for e in entries if e["trial"] is not None}
    if space_size is not None and tried:
        if len(tried) < space_size:
            lines.append(
                f"More trials: {len(tried)} of the space's {space_size} configurations were tried "
                "(raise --trials; a re-run resumes the study)."
            )
        else:
            lines.append(
                f"All {space_size} configurations of the space were tried: more trials cannot help; "
                "widen the ranges toward milder settings or add a technique."
            )
    states = collections.Counter(e["state"] for e in entries if e["trial"] is not None)
    for state in ("pruned", "failed"):
        if states[state]:
            reasons = collections.Counter((e["reason"] or "").split(":")[0] for e in entries if e["state"] == state)
            reason, n = reasons.most_common(1)[0]
            lines.append(f"{states[state]} trial(s) {state}; most often: {reason} ({n}).")
    by_family: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for e in done:
        by_family[e["family"]].append(e)
    for fam, group in sorted(by_family.items()):
        best = min(group, key=lambda e: drop_x(e["drop"], relative)[2])
        lines.append(
            f"{fam}: {len(group)} measured, smallest upper bound {shown_amount(drop_x(best['drop'], relative)[2], relative)} "
            f"({best['label']})."
        )
    used = {p["name"] for e in entries for p in e["passes"]}
    untried = collections.defaultdict(list)
    for name, cls in REGISTRY.items():
        if task in cls.tasks and name not in used and cls.family in FAMILY_ORDER:
            untried[cls.family].append(name)
    if untried:
        lines.append(
            "Not tried: "
            + "; ".join(f"{fam} ({', '.join(sorted(untried[fam]))})" for fam in FAMILY_ORDER if fam in untried)
            + "."
        )
    return {
        "closest": None
        if closest is None
        else {k: closest[k] for k in ("label", "trial", "chain", "drop", "violation", "usd_per_m", "objective")},
        "suggestions": lines,
    }
