"""A measurement's price: measured tokens/s priced at a catalog entry's rate, as one typed figure.

Every reader of a price (the objective, the operating point, deploy.yaml, the CLI, the report, tracking)
reads these fields; records keep it as its dict (`to_json`) and read it back with `from_json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from optimizer.measure.stored import Stored


@dataclass(frozen=True)
class Price(Stored):
    hardware: str  # the catalog entry's name
    hourly_usd: float
    utilization: float
    input_usd_per_m: float
    output_usd_per_m: float | None  # None: the model has no decode (an encoder)
    input_kwh_per_m: float
    output_kwh_per_m: float | None
    grid_kg_per_kwh: float
    input_share: float  # of the tokens billed, the input (prefill) share the blended price weighs
    blended_usd_per_m: float
    replicas: int = 1  # copies of the measured process the entry's vCPUs hold, assumed to scale linearly
    note: str = ""
    monthly_usd: float | None = None  # at the recipe's workload, when it states one

    @classmethod
    def of(cls, token_price: Any, input_share: float, replicas: int, note: str, monthly_usd: float | None) -> Price:
        """From `cost.TokenPrice` and how the recipe bills it."""
        return cls(
            **asdict(token_price),
            input_share=input_share,
            blended_usd_per_m=token_price.blended_usd_per_m(input_share),
            replicas=replicas,
            note=note,
            monthly_usd=monthly_usd,
        )
