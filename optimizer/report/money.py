"""Measured prices -> monthly cost, saving, break-even, energy and CO2 at a workload (cost/ does the arithmetic)."""

from __future__ import annotations

from typing import Any

from cost.pricing import TokenPrice
from cost.workload import DAYS_PER_MONTH, Workload, monthly_cost, monthly_energy_kwh, saving, whole_instances

ASSUMED_TOKENS_PER_MONTH = 1e9  # only when neither the recipe nor the command line gives a workload


def token_price(cost: dict[str, Any], grid_kg_per_kwh: float | None = None) -> TokenPrice:
    """The TokenPrice a trial stored (as a dict), optionally at another grid intensity."""
    fields = {
        k: cost[k]
        for k in (
            "hardware",
            "hourly_usd",
            "utilization",
            "input_usd_per_m",
            "output_usd_per_m",
            "input_kwh_per_m",
            "output_kwh_per_m",
            "grid_kg_per_kwh",
        )
    }
    if grid_kg_per_kwh is not None:
        fields["grid_kg_per_kwh"] = grid_kg_per_kwh
    return TokenPrice(**fields)


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


def monthly(cost: dict[str, Any], workload: Workload, grid: float | None) -> dict[str, Any]:
    p = token_price(cost, grid)
    kwh = monthly_energy_kwh(p, workload)
    instances, whole_usd = whole_instances(p, workload)
    return {
        "instances": instances,
        "monthly_usd_whole_instances": whole_usd,
        "hardware": p.hardware,
        "input_usd_per_m": p.input_usd_per_m,
        "output_usd_per_m": p.output_usd_per_m,
        "blended_usd_per_m": cost.get("blended_usd_per_m"),
        "monthly_usd": monthly_cost(p, workload),
        "monthly_kwh": kwh,
        "monthly_co2_kg": kwh * p.grid_kg_per_kwh,
        "grid_kg_per_kwh": p.grid_kg_per_kwh,
    }


def saving_of(
    base_cost: dict[str, Any], chosen_cost: dict[str, Any], workload: Workload, job_hours: float, job_usd_per_hour: float
) -> dict[str, Any]:
    s = saving(token_price(base_cost), token_price(chosen_cost), workload, job_hours, job_usd_per_hour)
    return {
        "baseline_monthly_usd": s.baseline_monthly_usd,
        "chosen_monthly_usd": s.optimized_monthly_usd,
        "monthly_usd": s.monthly_usd,
        "yearly_usd": s.yearly_usd,
        "cheaper_x": s.ratio,
        "job_hours": job_hours,
        "job_usd_per_hour": job_usd_per_hour,
        "job_usd": job_hours * job_usd_per_hour,
        "break_even_days": s.break_even_days,
    }


def workload_summary(workload: Workload, origin: str) -> dict[str, Any]:
    i, o = workload.per_month()
    return {
        "origin": origin,
        "input_tokens_per_month": i,
        "output_tokens_per_month": o,
        "tokens_per_day": (i + o) / DAYS_PER_MONTH,
    }
