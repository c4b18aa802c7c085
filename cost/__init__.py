"""Money and capacity: a hardware catalog and plain arithmetic. Imports nothing from optimizer/."""

from cost.catalog import Catalog, Entry, cpu_family, load_catalog
from cost.errors import CostInputError
from cost.planning import (
    accelerators_to_serve,
    accelerators_to_train,
    kv_cache_bytes,
    memory_fit,
    roofline,
    serve_flops_per_token,
    train_flops_per_token,
    training_compute,
)
from cost.pricing import TokenPrice, kwh_per_million, token_price, usd_per_million
from cost.workload import Saving, Workload, monthly_cost, monthly_energy_kwh, saving, whole_instances

__all__ = [
    "Catalog",
    "Entry",
    "cpu_family",
    "load_catalog",
    "CostInputError",
    "accelerators_to_serve",
    "accelerators_to_train",
    "kv_cache_bytes",
    "memory_fit",
    "roofline",
    "serve_flops_per_token",
    "train_flops_per_token",
    "training_compute",
    "TokenPrice",
    "kwh_per_million",
    "token_price",
    "usd_per_million",
    "Saving",
    "Workload",
    "monthly_cost",
    "monthly_energy_kwh",
    "saving",
    "whole_instances",
]
