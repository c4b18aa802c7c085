"""A traffic profile -> monthly cost, saving between two configurations, break-even of the optimization."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cost.errors import CostInputError
from cost.pricing import TokenPrice

DAYS_PER_MONTH = 365.25 / 12


class Workload(BaseModel):
    """Tokens per day (or per month), or requests per day times tokens per request; input and output apart."""

    model_config = ConfigDict(extra="forbid")
    input_tokens_per_day: float | None = Field(default=None, ge=0)
    output_tokens_per_day: float | None = Field(default=None, ge=0)
    input_tokens_per_month: float | None = Field(default=None, ge=0)
    output_tokens_per_month: float | None = Field(default=None, ge=0)
    requests_per_day: float | None = Field(default=None, ge=0)
    input_tokens_per_request: float | None = Field(default=None, ge=0)
    output_tokens_per_request: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_way(self) -> Workload:
        ways = [
            self.input_tokens_per_day is not None or self.output_tokens_per_day is not None,
            self.input_tokens_per_month is not None or self.output_tokens_per_month is not None,
            self.requests_per_day is not None,
        ]
        if sum(ways) != 1:
            raise ValueError(
                "describe traffic one way: tokens per day, tokens per month, or requests per day with tokens per request"
            )
        if self.requests_per_day is not None and self.input_tokens_per_request is None and self.output_tokens_per_request is None:
            raise ValueError("requests_per_day needs input_tokens_per_request and/or output_tokens_per_request")
        return self

    def per_day(self) -> tuple[float, float]:
        if self.requests_per_day is not None:
            return (
                self.requests_per_day * (self.input_tokens_per_request or 0),
                self.requests_per_day * (self.output_tokens_per_request or 0),
            )
        if self.input_tokens_per_month is not None or self.output_tokens_per_month is not None:
            return ((self.input_tokens_per_month or 0) / DAYS_PER_MONTH, (self.output_tokens_per_month or 0) / DAYS_PER_MONTH)
        return self.input_tokens_per_day or 0.0, self.output_tokens_per_day or 0.0

    def per_month(self) -> tuple[float, float]:
        i, o = self.per_day()
        return i * DAYS_PER_MONTH, o * DAYS_PER_MONTH

    @property
    def input_share(self) -> float:
        i, o = self.per_day()
        return i / (i + o) if i + o else 1.0


def monthly_cost(price: TokenPrice, workload: Workload) -> float:
    i, o = workload.per_month()
    if o and price.output_usd_per_m is None:
        raise CostInputError(
            "the workload has output tokens but this model has no decode speed", "give output tokens only for causal LMs"
        )
    return i / 1e6 * price.input_usd_per_m + (o / 1e6 * price.output_usd_per_m if o else 0.0)


HOURS_PER_MONTH = 24 * DAYS_PER_MONTH


def whole_instances(price: TokenPrice, workload: Workload) -> tuple[int, float]:
    """Machines to rent for the workload, and their monthly cost: per-token prices assume a machine
    can be rented by the fraction of time it is busy; a deployment rents whole ones (at least one).

    Busy machine-hours a month are the monthly cost over the hourly price (the prices already hold
    the assumed utilization); the instances are those hours over the hours in a month, rounded up."""
    busy_hours = monthly_cost(price, workload) / price.hourly_usd
    instances = max(1, math.ceil(busy_hours / HOURS_PER_MONTH - 1e-9))
    return instances, instances * price.hourly_usd * HOURS_PER_MONTH


def monthly_energy_kwh(price: TokenPrice, workload: Workload) -> float:
    i, o = workload.per_month()
    return i / 1e6 * price.input_kwh_per_m + (o / 1e6 * (price.output_kwh_per_m or 0.0))


@dataclass
class Saving:
    baseline_monthly_usd: float
    optimized_monthly_usd: float
    monthly_usd: float
    yearly_usd: float
    break_even_days: float | None  # None: no saving, never breaks even

    @property
    def ratio(self) -> float:
        return self.baseline_monthly_usd / self.optimized_monthly_usd if self.optimized_monthly_usd else float("inf")


def saving(
    baseline: TokenPrice,
    optimized: TokenPrice,
    workload: Workload,
    optimization_hours: float = 0.0,
    optimization_hourly_usd: float = 0.0,
) -> Saving:
    """Saving per month and year; break-even = the optimization job's own cost / saving per day."""
    if optimization_hours < 0 or optimization_hourly_usd < 0:
        raise CostInputError("optimization hours and price cannot be negative", "give the job's hours and $/hour")
    b, o = monthly_cost(baseline, workload), monthly_cost(optimized, workload)
    monthly = b - o
    job = optimization_hours * optimization_hourly_usd
    be = (job / (monthly / DAYS_PER_MONTH)) if monthly > 0 else None
    return Saving(b, o, monthly, monthly * 12, be)
