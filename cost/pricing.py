"""Measured tokens/s + a hardware entry -> dollars (and energy, CO2) per million tokens.

A replica that serves `tps` tokens/s while busy, busy a share `utilization` of the hours it is paid
for, costs hourly_usd / (tps * 3600 * utilization) per token. Input (prefill/encode) and output
(decode) run at very different speeds, so they are priced separately, like model APIs bill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cost.catalog import Entry
from cost.errors import CostInputError, require_fraction, require_positive

DEFAULT_GRID_KG_PER_KWH = 0.4  # roughly the world-average grid; set your region's figure


def usd_per_million(tokens_per_s: float, hourly_usd: float, utilization: float = 1.0) -> float:
    require_positive("tokens/s", tokens_per_s)
    require_fraction("utilization", utilization, "give the busy share of paid hours, e.g. 0.5")
    return hourly_usd / (tokens_per_s * 3600.0 * utilization) * 1e6


def kwh_per_million(tokens_per_s: float, watts: float) -> float:
    """Energy drawn while busy at the entry's power (idle draw is not counted)."""
    require_positive("tokens/s", tokens_per_s)
    return watts / 1000.0 * (1e6 / tokens_per_s / 3600.0)


@dataclass
class TokenPrice:
    hardware: str
    hourly_usd: float
    utilization: float
    input_usd_per_m: float
    output_usd_per_m: float | None
    input_kwh_per_m: float
    output_kwh_per_m: float | None
    grid_kg_per_kwh: float

    def blended_usd_per_m(self, input_share: float) -> float:
        """Per-token price of a mix with `input_share` of tokens being input (share-weighted, prices are linear)."""
        if not 0 <= input_share <= 1:
            raise CostInputError(f"input share must be in [0, 1] (got {input_share})", "give input / (input + output) tokens")
        if self.output_usd_per_m is None:
            if input_share < 1:
                raise CostInputError("this model has no output (decode) speed", "use input share 1 for encoders")
            return self.input_usd_per_m
        return input_share * self.input_usd_per_m + (1 - input_share) * self.output_usd_per_m

    def co2_kg_per_m(self, kind: Literal["input", "output"] = "input") -> float | None:
        kwh = self.input_kwh_per_m if kind == "input" else self.output_kwh_per_m
        return None if kwh is None else kwh * self.grid_kg_per_kwh


def token_price(
    entry: Entry,
    input_tps: float,
    output_tps: float | None = None,
    utilization: float = 1.0,
    pricing: Literal["on_demand", "spot", "committed"] = "on_demand",
    grid_kg_per_kwh: float = DEFAULT_GRID_KG_PER_KWH,
) -> TokenPrice:
    hourly = entry.hourly_usd(pricing)
    if output_tps is not None:
        require_positive("output tokens/s", output_tps)
    if grid_kg_per_kwh < 0:
        raise CostInputError("grid intensity cannot be negative", "give kg CO2 per kWh, e.g. 0.4")
    return TokenPrice(
        hardware=entry.name,
        hourly_usd=hourly,
        utilization=utilization,
        input_usd_per_m=usd_per_million(input_tps, hourly, utilization),
        output_usd_per_m=None if output_tps is None else usd_per_million(output_tps, hourly, utilization),
        input_kwh_per_m=kwh_per_million(input_tps, entry.watts),
        output_kwh_per_m=None if output_tps is None else kwh_per_million(output_tps, entry.watts),
        grid_kg_per_kwh=grid_kg_per_kwh,
    )
