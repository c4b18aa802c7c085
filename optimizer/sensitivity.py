"""Per-part sensitivity of a quantization pass: how much the outputs change when only one part of one
block (its attention inputs, attention output projection, FFN input or FFN output) is quantized.

A pass with `keep_sensitive` in the recipe is measured once per part (plus everything outside the
blocks: heads, poolers) before the search, on the screening subset of the search's own eval part; the
parts are ranked by a continuous signal (`ranking_signal`: embedding fidelity or causal-LM KL when the
recipe measures it), and a trial's `keep_sensitive: k` keeps the k most sensitive out of the pass (added
to its `exclude`). Rankings are cached per model, chain and data, so a second search or worker on the
same machine does not measure them again.

Blocks are matched by index in every runtime's naming: torch modules (model.layers.3.mlp),
ONNX nodes (/encoder/layer.3/attention/...) and OpenVINO nodes (__module.model.layers.3.self_attn...).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optimizer.cache import chain_key
from optimizer.chain import apply_chain, resolved_passes
from optimizer.errors import UserError
from optimizer.measure.stats import Drop
from optimizer.metrics import METRICS
from optimizer.ranges import Choice, FloatRange, IntRange, parse_range
from optimizer.search_space import running_passes, single_technique

if TYPE_CHECKING:
    from optimizer.bench import Bench
    from optimizer.budget import Budget
    from optimizer.cache import ArtifactCache
    from optimizer.recipe import Recipe

REST = "outside the blocks"
UNMOVED = 1e-12  # a signal drop within this of zero is floating-point rounding (a part the pass leaves as it was)


def block_pattern(i: str | int) -> str:
    """A regex (for re.search and NNCF's re.match alike) matching the names inside block i; ONNX Runtime's
    fused attention nodes carry no module path, only their order (Attention_3 is block 3's)."""
    return rf"((^|.*[./])layers?\.{i}[./]|Attention_{i}$)"


_ATTENTION = r"(.*[./])?(self_attn|attention)[./]"  # Llama's self_attn.*, BERT's attention.self.* and attention.output.*
_ATTENTION_OUT = r"(.*[./])?(attention[./]output|self_attn[./]o_proj)"  # the attention's output projection
_FFN_IN = r"(intermediate|mlp[./](gate|up)_proj)"  # BERT's up projection; Llama's gate and up projections


def _in_block(i: int) -> str:
    return rf"(^|.*[./])layers?\.{i}[./]"


# A block's four parts; together they are the whole block (a name of no known part falls in "FFN output"):
# one part of a block is often what hurts (measured on MiniLM: keeping block 0's FFN and attention output
# projection in float is enough, while its attention inputs can be int8).
PARTS: dict[str, Callable[[int], str]] = {
    # q/k/v and the score matmuls, or ONNX Runtime's fused Attention_i (which carries no module path)
    "attention inputs": lambda i: rf"({_in_block(i)}(?!{_ATTENTION_OUT}){_ATTENTION}|Attention_{i}$)",
    "attention output": lambda i: rf"{_in_block(i)}{_ATTENTION_OUT}",
    "FFN input": lambda i: rf"{_in_block(i)}(?!{_ATTENTION}){_FFN_IN}",
    "FFN output": lambda i: rf"{_in_block(i)}(?!{_ATTENTION})(?!{_FFN_IN})",
}


ANY_BLOCK = block_pattern(r"\d+")


def only(pattern: str) -> str:
    """An `exclude` regex that keeps every name out of the pass except those `pattern` matches."""
    return f"^(?!{pattern})"


@dataclass
class UnitDrop:
    """One block's sensitivity: the drop (with interval) of the budget's metric when only it is quantized."""

    unit: str
    pattern: str  # added to `exclude` to keep the unit out of the pass
    alone: str  # the `exclude` regex under which only this unit is quantized (how it was measured)
    drop: Drop  # the budget metric's drop
    score: float  # the ranking signal's drop (Sensitivity.ranked_by), what the parts are ordered by


@dataclass
class Sensitivity:
    """The ranking for one pass of the recipe, most sensitive first."""

    index: int
    name: str
    passes: list[dict[str, Any]]  # the chain each unit was measured with (before the unit's exclude)
    units: list[UnitDrop]
    examples: int
    seconds: float
    # units under which no example scored differently (nothing of the pass in them, or too little to show)
    unchanged: list[str] = field(default_factory=list)
    ranked_by: str = ""  # the metric whose drop orders the units (ranking_signal); "" in older rankings: the budget's

    @property
    def patterns(self) -> list[str]:
        """The units' keep-out patterns, most sensitive first (what `resolved_passes` reads)."""
        return [u.pattern for u in self.units]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Sensitivity:
        return cls(**(d | {"units": [UnitDrop(**(u | {"drop": Drop.from_json(u["drop"])})) for u in d["units"]]}))


def ranking_signal(metrics: list[str], budget_metric: str) -> str:
    """What parts are ranked by: a continuous score against the baseline's outputs among the recipe's
    metrics (embedding fidelity, causal-LM KL), else the budget's metric. On a few hundred screening
    examples a rank metric moves only where an example's rank flips, so parts whose MRR drop intervals
    all overlap zero rank by noise; how far each part moves the outputs is measured much more finely."""
    return next((m for m in metrics if METRICS[m].signal), budget_metric)


def wanted(recipe: Recipe) -> list[int]:
    """Indices of the passes whose search keeps sensitive blocks out."""
    return [i for i, spec in enumerate(recipe.passes) if spec.keep_sensitive is not None]


def _low(value: Any) -> Any:
    """The first value of a range: a Choice's first entry, an interval's low end."""
    rng = parse_range(value)
    if isinstance(rng, Choice):
        return rng.choice[0]
    if isinstance(rng, (IntRange, FloatRange)):
        return (rng.int if isinstance(rng, IntRange) else rng.float)[0]
    return value


def measured_chain(recipe: Recipe, index: int) -> list[dict[str, Any]]:
    """The chain a pass's units are measured with: the pass on its own (with the export it needs, as the
    search's first trials run it), every range at its first value, the recipe's own exclude list dropped."""
    chosen = single_technique(recipe, index) if isinstance(recipe.passes[index].enabled, Choice) else {}
    chosen = {k: v for k, v in (chosen or {}).items() if k.endswith(".enabled")}
    on = running_passes(recipe, chosen)
    if index not in on:
        raise UserError(
            f"passes[{index}].keep_sensitive: {recipe.passes[index].name} cannot run on its own in this recipe",
            "switch on the export it needs, or remove keep_sensitive",
        )
    for i, spec in enumerate(recipe.passes):
        chosen[f"{i}.{spec.name}.enabled"] = i in on
        for k, v in spec.params.items():
            chosen[f"{i}.{spec.name}.{k}"] = [] if (i == index and k == "exclude") else _low(v)
        if spec.keep_sensitive is not None:
            chosen[f"{i}.{spec.name}.keep_sensitive"] = 0  # measured whole; the ranking is what k reads
    return resolved_passes(recipe, chosen)


def _key(recipe: Recipe, device: str, passes: list[dict[str, Any]], bench: Bench, examples: int, signal: str) -> str:
    data = bench.eval_data
    what = {"chain": chain_key(recipe, device, passes), "eval": [data.kind, data.all_texts()], "examples": examples}
    what |= {"parts": list(PARTS), "signal": signal}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:20]


def rank(
    bench: Bench,
    budget: Budget,
    index: int,
    work_dir: Path,
    cache: ArtifactCache | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Sensitivity:
    """Measure (or read from the cache) the sensitivity of recipe pass `index`, block by block."""
    import time

    recipe = bench.recipe
    passes = measured_chain(recipe, index)
    at = next(j for j, p in enumerate(passes) if p["name"] == recipe.passes[index].name)
    examples = recipe.search.screen_examples or 0
    signal = ranking_signal(recipe.metrics, budget.metric)
    key = _key(recipe, bench.device, passes, bench, examples, signal)
    stored = work_dir / "sensitivity" / f"{key}.json"
    if stored.is_file():
        return Sensitivity.from_json(json.loads(stored.read_text()))
    t0 = time.perf_counter()
    n = getattr(getattr(bench.baseline.module, "config", None), "num_hidden_layers", None)
    if not n:
        raise UserError(
            "keep_sensitive: the model's config has no num_hidden_layers to rank blocks by", "list exclude patterns by hand"
        )
    # (unit, its keep-out pattern, the exclude under which it alone is quantized)
    units = [(f"block {i} {part}", pat(i), only(pat(i))) for i in range(n) for part, pat in PARTS.items()]
    units.append((REST, only(ANY_BLOCK), ANY_BLOCK))
    rows: list[UnitDrop] = []
    unchanged: list[str] = []
    for unit, pattern, alone in units:
        chain = [dict(p) for p in passes]
        chain[at] = chain[at] | {"params": chain[at]["params"] | {"exclude": [alone]}}
        cand = apply_chain(recipe, chain, bench.context(work_dir / "sensitivity" / "work"), {}, cache=cache)
        drops = (bench.screen(cand, examples) if examples else None) or bench.judge(cand)[1]
        drop, moved = drops[budget.metric], drops[signal]
        del cand
        if abs(moved.low) < UNMOVED and abs(moved.high) < UNMOVED:  # outputs as before, to rounding: nothing to keep out
            unchanged.append(unit)
            log(f"sensitivity of {recipe.passes[index].name}: {unit} alone changes no example's {signal}")
            continue
        rows.append(UnitDrop(unit, pattern, alone, drop, float(moved.drop)))
        log(f"sensitivity of {recipe.passes[index].name}, {unit} alone: {signal} drop {moved.drop:.3g}")
    rows.sort(key=lambda u: u.score, reverse=True)
    used = min(examples, len(bench.eval_data)) if examples and len(bench.eval_data) >= 2 * examples else len(bench.eval_data)
    result = Sensitivity(
        index, recipe.passes[index].name, passes, rows, used, round(time.perf_counter() - t0, 1), unchanged, signal
    )
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_text(json.dumps(result.to_json(), indent=1, default=str))
    return result


def rank_all(
    bench: Bench, budget: Budget, work_dir: Path, cache: ArtifactCache | None = None, log: Callable[[str], None] = lambda _: None
) -> dict[int, Sensitivity]:
    return {i: rank(bench, budget, i, work_dir, cache, log) for i in wanted(bench.recipe)}


def patterns(ranked: dict[int, Sensitivity]) -> dict[int, list[str]]:
    return {i: r.patterns for i, r in ranked.items()}
