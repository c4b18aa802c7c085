"""What a saved configuration occupies: parameters, non-zeros, weight and disk bytes, and the memory of a
process serving it alone, as one typed figure (records keep it as its dict: `to_json` / `from_json`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class Footprint:
    parameters: int
    nonzero_parameters: int
    disk_bytes: int  # the saved artifact's folder
    weight_bytes: int  # its weight files alone
    artifact: str | None = None  # where the artifact was kept (None: measured in a scratch folder, not kept)
    memory_alone: dict[str, Any] | None = None  # measure.alone's figures for a fresh process serving it alone

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Footprint | dict[str, Any]) -> Footprint:
        if isinstance(d, Footprint):
            return d
        return cls(**{k: d[k] for k in _FIELDS if k in d})

    @classmethod
    def maybe(cls, d: Footprint | dict[str, Any] | None) -> Footprint | None:
        return None if not d else cls.from_json(d)


_FIELDS = tuple(f.name for f in fields(Footprint))
