"""costopt: measure quality and speed of compressed open models, and what they cost to serve.

The public names, importable from `optimizer` itself, are listed in `PUBLIC` (and `__all__`):

- entry points: `run`, `search` (as the CLI's commands; see optimizer.api), `load_deployment`;
- building blocks for measurement scripts (the experiments use only these): recipes, data, the `Bench`
  a recipe's candidates are measured against, pass chains, the speed benchmarks and the statistics
  behind every interval, and how figures are written.

Each name is imported from its module on first use, so `import optimizer` loads no framework.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute in it)
PUBLIC: dict[str, tuple[str, str]] = {
    # entry points
    "run": ("optimizer.api", "run"),
    "search": ("optimizer.api", "search"),
    "load_deployment": ("optimizer.deploy", "load_deployment"),
    "read_deployment": ("optimizer.deploy", "read_deployment"),
    "build_deployment": ("optimizer.deploy", "build"),
    # recipes, data, models
    "Recipe": ("optimizer.recipe", "Recipe"),
    "load_recipe": ("optimizer.recipe", "load_recipe"),
    "load_dataset": ("optimizer.data", "load_dataset"),
    "stdlib_split": ("optimizer.data", "stdlib_split"),
    "name_words": ("optimizer.data", "name_words"),
    "reload_saved": ("optimizer.runtimes", "reload_saved"),
    "UserError": ("optimizer.errors", "UserError"),
    # measuring candidates against a baseline
    "Bench": ("optimizer.bench", "Bench"),
    "Measurement": ("optimizer.measurement", "Measurement"),
    "apply_chain": ("optimizer.chain", "apply_chain"),
    "footprint": ("optimizer.chain", "footprint"),
    "resolve_device": ("optimizer.chain", "resolve_device"),
    "timed_recipe": ("optimizer.chain", "timed_recipe"),
    "replicas_on": ("optimizer.serving", "replicas_on"),
    "PassContext": ("optimizer.passes", "PassContext"),
    "build_pass": ("optimizer.passes", "build_pass"),
    "chain_of": ("optimizer.passes", "chain_of"),
    "make_batches": ("optimizer.tasks", "make_batches"),
    "request_tokens": ("optimizer.tasks", "request_tokens"),
    "prompted": ("optimizer.tasks", "prompted"),
    # speed, statistics, the machine
    "set_threads": ("optimizer.measure.speed", "set_threads"),
    "bench_encoder": ("optimizer.measure.speed", "bench_encoder"),
    "bench_causal_lm": ("optimizer.measure.speed", "bench_causal_lm"),
    "Stat": ("optimizer.measure.speed", "Stat"),
    # causal LMs serving a burst of requests (static batches or continuous batching)
    "request_mix": ("optimizer.measure.requests", "request_mix"),
    "request_server": ("optimizer.measure.requests", "server"),
    "request_engine": ("optimizer.measure.requests", "engine_of"),
    "summarize_requests": ("optimizer.measure.requests", "summarize"),
    "MetricValues": ("optimizer.measure.stats", "MetricValues"),
    "paired_bootstrap": ("optimizer.measure.stats", "paired_bootstrap"),
    "ratio_interval": ("optimizer.measure.stats", "ratio_interval"),
    "retrieval_values": ("optimizer.measure.quality", "retrieval_values"),
    "pairs_retrieval": ("optimizer.measure.quality", "pairs_retrieval"),
    "fingerprint": ("optimizer.measure.system", "fingerprint"),
    "native_bf16": ("optimizer.measure.system", "native_bf16"),
    "broken_by": ("optimizer.metrics", "broken_by"),
    # how figures are written
    "drop_text": ("optimizer.formatting", "drop_text"),
    "ratio_text": ("optimizer.formatting", "ratio_text"),
    "chain_text": ("optimizer.cli_format", "chain_text"),
    "write_section": ("optimizer.results", "write_section"),
}
__all__ = sorted(PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in PUBLIC:
        raise AttributeError(f"module 'optimizer' has no attribute {name!r}")
    module, attr = PUBLIC[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(PUBLIC))
