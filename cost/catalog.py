"""Hardware catalog: prices (with source and date), power, peak FLOP/s per dtype, memory, bandwidth.

The packaged `hardware.yaml` is the default; a user catalog file is merged over it by entry name
(a user entry with a known name replaces that entry). An owned machine is an entry whose hourly
cost comes from purchase price, lifetime, power, electricity price and utilization.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cost.errors import CostInputError

DEFAULT_CATALOG = Path(__file__).with_name("hardware.yaml")
HOURS_PER_YEAR = 8766.0  # 365.25 days


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on_demand: float = Field(gt=0, description="USD per hour")
    spot: float | None = Field(default=None, gt=0)
    committed: float | None = Field(default=None, gt=0, description="1-year commitment, USD per hour")
    region: str | None = None
    source: str = Field(min_length=4)
    as_of: str = Field(pattern=r"^\d{4}-\d{2}(-\d{2})?$")


class Owned(BaseModel):
    """A machine you bought: its hourly cost is amortized purchase plus electricity."""

    model_config = ConfigDict(extra="forbid")
    purchase_usd: float = Field(gt=0)
    lifetime_years: float = Field(gt=0)
    electricity_usd_per_kwh: float = Field(ge=0)
    utilization: float = Field(default=1.0, gt=0, le=1, description="share of hours the machine does useful work")
    source: str = "owner's figures"
    as_of: str = Field(default="", pattern=r"^(\d{4}-\d{2}(-\d{2})?)?$")


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["cpu", "gpu"]
    provider: str
    description: str = ""
    family: str | None = Field(
        default=None, description="CPU generation, as CPU_FAMILIES names it (Sapphire Rapids, Genoa, Milan, ...)"
    )
    isa: list[str] = Field(
        default=[], description="CPU instruction sets as `costopt hardware` names them (AVX2, AVX-512, AMX-INT8, ...)"
    )
    vcpus: int | None = Field(default=None, gt=0)
    gpu: str | None = None
    gpus: int = Field(default=0, ge=0)
    memory_gb: float = Field(gt=0, description="device memory for GPUs, RAM for CPU instances")
    memory_bandwidth_gbs: float = Field(gt=0)
    watts: float = Field(gt=0, description="board power (GPUs) or the instance's share of socket power (CPUs)")
    peak_tflops: dict[str, float | None] = Field(description="dense peak per dtype")
    peak_source: str = ""
    price: Price | None = None
    owned: Owned | None = None

    @model_validator(mode="after")
    def _one_cost(self) -> Entry:
        if (self.price is None) == (self.owned is None):
            raise ValueError("give exactly one of price (rented) or owned (bought)")
        if self.kind == "gpu" and self.gpus < 1:
            raise ValueError("a gpu entry needs gpus >= 1")
        return self

    def hourly_usd(self, pricing: Literal["on_demand", "spot", "committed"] = "on_demand") -> float:
        """USD per hour of the whole entry. For owned machines: per hour of useful work."""
        if self.owned:
            o = self.owned
            capital = o.purchase_usd / (o.lifetime_years * HOURS_PER_YEAR)
            energy = self.watts / 1000.0 * o.electricity_usd_per_kwh
            return (capital + energy) / o.utilization
        assert self.price is not None
        value = getattr(self.price, pricing)
        if value is None:
            raise CostInputError(
                f"{self.name} has no {pricing} price in the catalog", "use on_demand, or add the price to your catalog file"
            )
        return value

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for a dtype (bf16 and fp16 stand in for each other where one is missing)."""
        for d in (dtype, {"bf16": "fp16", "fp16": "bf16"}.get(dtype)):
            if d and self.peak_tflops.get(d):
                return float(self.peak_tflops[d]) * 1e12
        have = ", ".join(k for k, v in self.peak_tflops.items() if v)
        raise CostInputError(f"{self.name} has no peak FLOP/s for {dtype}", f"use one of: {have}")


# CPU generation from what a machine reports about itself -> the `family` catalog entries declare.
# Cloud VMs hide the exact model ("Intel(R) Xeon(R) Processor"), so the instruction set decides.
CPU_FAMILIES: list[tuple[str, str, set[str]]] = [  # (vendor word in the model / arch, family, ISA flags it needs)
    ("Intel", "Sapphire Rapids", {"AMX-INT8"}),
    ("AMD", "Genoa", {"AVX-512"}),
    ("AMD", "Milan", set()),
    ("aarch64", "Neoverse V1", {"SVE"}),
    ("aarch64", "Neoverse N1", set()),
]


def cpu_family(cpu: dict[str, Any]) -> str | None:
    """This machine's CPU family from its fingerprint (vendor word in model / arch, and its ISA), or None."""
    where = f"{cpu.get('model', '')} {cpu.get('arch', '')}"
    isa = set(cpu.get("isa") or [])
    return next((f for vendor, f, need in CPU_FAMILIES if vendor in where and need <= isa), None)


def _gpu_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


class Catalog(BaseModel):
    entries: dict[str, Entry]

    def for_machine(self, cpu: dict[str, Any], gpus: list[str]) -> tuple[Entry | None, list[str]]:
        """The entry that prices this machine, from its fingerprint: with GPUs, the entries with as many
        of that GPU (its catalog name within the device name: "H100" in "NVIDIA H100 80GB HBM3"); else
        the CPU entries of its family (`cpu_family`: vendor and instruction set) with as many vCPUs as it
        has logical cores. The cheapest of several, with the others' names; (None, []) when nothing fits."""
        if gpus:
            name = _gpu_key(gpus[0])
            fits = [
                e
                for e in self.entries.values()
                if e.kind == "gpu" and e.gpu and e.gpus == len(gpus) and all(_gpu_key(p) in name for p in e.gpu.split("-"))
            ]
        else:
            family = cpu_family(cpu)
            fits = [
                e
                for e in self.entries.values()
                if family and e.kind == "cpu" and e.family == family and e.vcpus == cpu.get("logical_cores")
            ]
        if not fits:
            return None, []
        fits.sort(key=lambda e: e.hourly_usd())
        return fits[0], [e.name for e in fits[1:]]

    def nearest_cpu(self, cpu: dict[str, Any], n: int = 3) -> list[str]:
        """The CPU entries nearest this machine when none fits: same family first, then the most shared
        instruction sets, then the nearest vCPU count; as 'name (family, N vCPU)'."""
        family, isa, cores = cpu_family(cpu), set(cpu.get("isa") or []), cpu.get("logical_cores") or 0
        cpus = [e for e in self.entries.values() if e.kind == "cpu"]
        cpus.sort(key=lambda e: (e.family != family, -len(isa & set(e.isa)), abs((e.vcpus or 0) - cores), e.hourly_usd()))
        return [f"{e.name} ({e.family or 'family not declared'}, {e.vcpus} vCPU)" for e in cpus[:n]]

    def get(self, name: str) -> Entry:
        if name in self.entries:
            return self.entries[name]
        close = difflib.get_close_matches(name, list(self.entries), n=3, cutoff=0.3)
        hint = "did you mean " + " or ".join(close) + "?" if close else "run `costopt hardware list`"
        raise CostInputError(f"unknown hardware {name!r}", hint)


def _read(path: Path) -> list[dict]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise CostInputError(f"catalog file {str(path)!r} does not exist", "check the path") from None
    except yaml.YAMLError as e:
        raise CostInputError(f"catalog file {path} is not valid YAML ({str(e).splitlines()[0]})", "fix its syntax") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("entries"), list):
        raise CostInputError(f"catalog file {path} has no 'entries:' list", "write entries: [- name: ..., ...]")
    return raw["entries"]


def _validate(items: list[dict], origin: Path) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for i, item in enumerate(items):
        try:
            e = Entry.model_validate(item)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "(entry)"
            name = item.get("name", f"#{i + 1}") if isinstance(item, dict) else f"#{i + 1}"
            raise CostInputError(
                f"{origin}: entry {name}: {loc}: {first['msg'].removeprefix('Value error, ')}",
                "correct that field (see cost/hardware.yaml for examples)",
            ) from None
        if e.name in out:
            raise CostInputError(f"{origin}: entry {e.name} appears twice", "keep one")
        out[e.name] = e
    return out


def load_catalog(user_file: str | Path | None = None) -> Catalog:
    entries = _validate(_read(DEFAULT_CATALOG), DEFAULT_CATALOG)
    if user_file:
        entries.update(_validate(_read(Path(user_file)), Path(user_file)))
    return Catalog(entries=entries)
