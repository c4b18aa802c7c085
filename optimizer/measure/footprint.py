"""What a saved configuration occupies: parameters, non-zeros, weight and disk bytes, and the memory of a
process serving it alone, as one typed figure (records keep it as its dict: `to_json` / `from_json`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optimizer.measure.stored import Stored


@dataclass
class Footprint(Stored):
    parameters: int
    nonzero_parameters: int
    disk_bytes: int  # the saved artifact's folder
    weight_bytes: int  # its weight files alone
    artifact: str | None = None  # where the artifact was kept (None: measured in a scratch folder, not kept)
    memory_alone: dict[str, Any] | None = None  # measure.alone's figures for a fresh process serving it alone
