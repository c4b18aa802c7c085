"""Measured prices -> monthly cost, saving, break-even, energy and CO2 at a workload (cost/ does the arithmetic)."""

from __future__ import annotations

import dataclasses
from typing import Any

from cost.pricing import TokenPrice
from cost.workload import DAYS_PER_MONTH, Workload, monthly_cost, monthly_energy_kwh, whole_instances
from optimizer.measure.price import Price

ASSUMED_TOKENS_PER_MONTH = 1e9  # only when neither the recipe nor the command line gives a workload


def token_price(cost: Price, grid_kg_per_kwh: float | None = None) -> TokenPrice:
    """The TokenPrice a trial's price holds, optionally at another grid intensity."""
    kept = {f.name: getattr(cost, f.name) for f in dataclasses.fields(TokenPrice)}  # Price holds them all
    if grid_kg_per_kwh is not None:
        kept["grid_kg_per_kwh"] = grid_kg_per_kwh
    return TokenPrice(**kept)


def resolve_workload(
    recipe_workload: Workload | None, given: Workload | None, input_share: float, encoder: bool
) -> tuple[Workload, str, list[str]]:
    """The traffic the monthly figures are for, where it came from, and notes about it."""
    notes: list[str] = []
    if given is not None:
        workload, origin = given, "command line"
    elif recipe_workload is not None:
        workload, origin = recipe_workload, "recipe"
    else:
        total = ASSUMED_TOKENS_PER_MONTH
        workload = Workload(input_tokens_per_month=total * input_share, output_tokens_per_month=total * (1 - input_share))
        origin = "assumed"
        notes.append(
            f"no workload in the recipe or on the command line: monthly figures assume {total:,.0f} tokens "
            "a month; give yours with --workload input_tokens_per_day=... (or a workload: section)"
        )
    i, o = workload.per_month()
    if encoder and o:
        notes.append(f"the workload's {o:,.0f} output tokens a month are left out: an encoder produces none")
        workload = Workload(input_tokens_per_month=i)
    return workload, origin, notes


def monthly(cost: Price, workload: Workload, grid: float | None) -> dict[str, Any]:
    p = token_price(cost, grid)
    kwh = monthly_energy_kwh(p, workload)
    instances, whole_usd = whole_instances(p, workload)
    return {
        "instances": instances,
        "monthly_usd_whole_instances": whole_usd,
        "hardware": p.hardware,
        "input_usd_per_m": p.input_usd_per_m,
        "output_usd_per_m": p.output_usd_per_m,
        "blended_usd_per_m": cost.blended_usd_per_m,
        "monthly_usd": monthly_cost(p, workload),
        "monthly_kwh": kwh,
        "monthly_co2_kg": kwh * p.grid_kg_per_kwh,
        "grid_kg_per_kwh": p.grid_kg_per_kwh,
    }


def saving_at_ratio(
    chosen_monthly_usd: float,
    ratio: dict[str, float],
    against: str,
    confirmed: str | None,
    job_hours: float,
    job_usd_per_hour: float,
) -> dict[str, Any]:
    """The money of one saving: the chosen configuration's monthly bill and how many times cheaper it is than
    the baseline (`ratio`: median and, when measured, low / high); `confirmed`: how the confirmation judged
    that ratio, None for the search's own figure. Every dollar figure, its interval and the
    break-even follow from that one ratio, so the headline and the money can never tell different stories."""
    job = job_hours * job_usd_per_hour

    def monthly(x: float | None) -> float | None:
        return None if x is None else chosen_monthly_usd * (x - 1.0)

    def break_even(saved: float | None) -> float | None:
        return job / (saved / DAYS_PER_MONTH) if saved is not None and saved > 0 else None

    m, lo, hi = monthly(ratio["median"]), monthly(ratio.get("low")), monthly(ratio.get("high"))
    return {
        "against": against,
        "confirmed": confirmed is not None,
        "why": confirmed,
        "cheaper_x": ratio["median"],
        "cheaper_low": ratio.get("low"),
        "cheaper_high": ratio.get("high"),
        "baseline_monthly_usd": chosen_monthly_usd * ratio["median"],
        "chosen_monthly_usd": chosen_monthly_usd,
        "monthly_usd": m,
        "monthly_low": lo,
        "monthly_high": hi,
        "yearly_usd": 12 * m,
        "yearly_low": None if lo is None else 12 * lo,
        "yearly_high": None if hi is None else 12 * hi,
        "job_hours": job_hours,
        "job_usd_per_hour": job_usd_per_hour,
        "job_usd": job,
        "break_even_days": break_even(m),
        # the break-even's range: the larger saving pays back sooner
        "break_even_low": break_even(hi),
        "break_even_high": break_even(lo),
    }


def workload_summary(workload: Workload, origin: str) -> dict[str, Any]:
    i, o = workload.per_month()
    return {
        "origin": origin,
        "input_tokens_per_month": i,
        "output_tokens_per_month": o,
        "tokens_per_day": (i + o) / DAYS_PER_MONTH,
    }
