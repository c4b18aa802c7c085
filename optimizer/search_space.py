"""A recipe's search space as Optuna suggestions.

Keys are the ones `chain.resolved_passes` reads: '<i>.<pass>.enabled' and '<i>.<pass>.<param>'.
A pass's parameters are sampled only in trials where the pass is on, so TPE learns each pass's
parameters from the trials that used them (Optuna's conditional search spaces).
"""

from __future__ import annotations

import json
from typing import Any

import optuna

from optimizer import ranges
from optimizer.ranges import Choice, FloatRange, IntRange, Range, parse_range
from optimizer.recipe import Recipe

_PRIMITIVE = (type(None), bool, int, float, str)
# How the model is served, searched alongside the passes: `search.<knob>` in a recipe, a trial parameter
# and a deployment field under the same name.
SERVING_KNOBS = ("batch_size", "threads", "streams")


def stored_values(rng: Range) -> list[Any] | None:
    """A discrete range's values as Optuna stores them (lists and dicts as JSON text), None when continuous;
    what a grid enumerates."""
    listed = ranges.values(rng)
    if listed is None or all(isinstance(v, _PRIMITIVE) for v in listed):
        return listed
    return [json.dumps(v, sort_keys=True) for v in listed]


def _suggest(trial: optuna.Trial, name: str, rng: Range) -> Any:
    if isinstance(rng, Choice):
        if all(isinstance(v, _PRIMITIVE) for v in rng.choice):
            return trial.suggest_categorical(name, rng.choice)
        # Optuna stores categorical values as primitives: lists and dicts travel as JSON text.
        picked = trial.suggest_categorical(name, [json.dumps(v, sort_keys=True) for v in rng.choice])
        return json.loads(picked)
    if isinstance(rng, IntRange):
        lo, hi = rng.int
        return trial.suggest_int(name, lo, hi, step=rng.step, log=rng.log)
    assert isinstance(rng, FloatRange)
    lo, hi = rng.float
    return trial.suggest_float(name, lo, hi, log=rng.log)


def pass_ranges(i: int, spec: Any) -> dict[str, Range]:
    """The searched knobs of recipe pass i, by trial parameter name: its parameters given as ranges, and
    `keep_sensitive` when it is one. Suggestions, the space's size and the grid all read them from here."""
    out = {f"{i}.{spec.name}.{k}": rng for k, v in spec.params.items() if (rng := parse_range(v)) is not None}
    if (rng := parse_range(spec.keep_sensitive)) is not None:
        out[f"{i}.{spec.name}.keep_sensitive"] = rng
    return out


def serving_ranges(recipe: Recipe) -> dict[str, Range]:
    """The serving knobs the search varies (batch size, threads, streams), by name."""
    return {k: rng for k in SERVING_KNOBS if (rng := parse_range(getattr(recipe.search, k))) is not None}


def suggest(trial: optuna.Trial, recipe: Recipe) -> dict[str, Any]:
    """Sample one configuration; returns the `chosen` mapping `chain.resolved_passes` reads.

    An optional export pass is the runtime choice: when it is off, the passes after it that need
    its runtime are off too (recorded in `chosen`, not sampled), so no trial is a broken chain.
    """
    from optimizer.passes import REGISTRY

    chosen: dict[str, Any] = {}
    runtime = "torch"
    for i, spec in enumerate(recipe.passes):
        key = f"{i}.{spec.name}"
        cls = REGISTRY.get(spec.name)
        if cls is not None and runtime not in cls.runtimes_in:
            chosen[f"{key}.enabled"] = False
            continue
        enabled: Any = spec.enabled
        if isinstance(enabled, Choice):
            enabled = _suggest(trial, f"{key}.enabled", enabled)
            chosen[f"{key}.enabled"] = enabled
        if not enabled:
            continue  # conditional: a disabled pass's parameters are not sampled
        runtime = cls.runtime_out or runtime
        for name, rng in pass_ranges(i, spec).items():
            chosen[name] = _suggest(trial, name, rng)
    searched = serving_ranges(recipe)
    for knob in SERVING_KNOBS:
        value = getattr(recipe.search, knob)
        if knob in searched:
            chosen[knob] = _suggest(trial, knob, searched[knob])
        elif value is not None:
            chosen[knob] = value
    return chosen


def space_size(recipe: Recipe) -> int | None:
    """Number of distinct configurations, or None when a float range makes it continuous."""
    total = 1
    for i, spec in enumerate(recipe.passes):
        within = 1
        for rng in pass_ranges(i, spec).values():
            n = ranges.size(rng)
            if n is None:
                return None
            within *= n
        if isinstance(spec.enabled, Choice):
            total *= sum(within if on else 1 for on in spec.enabled.choice)
        else:
            total *= within if spec.enabled else 1
    for rng in serving_ranges(recipe).values():
        total *= ranges.size(rng) or 1
    return total


def _first_choices(i: int, spec: Any) -> dict[str, Any]:
    out = {}
    for k, v in spec.params.items():
        rng = parse_range(v)
        if isinstance(rng, Choice):
            first = rng.choice[0]
            primitive = all(isinstance(x, _PRIMITIVE) for x in rng.choice)  # as _suggest stores it
            out[f"{i}.{spec.name}.{k}"] = first if primitive else json.dumps(first, sort_keys=True)
    if isinstance(spec.keep_sensitive, Choice):
        out[f"{i}.{spec.name}.keep_sensitive"] = spec.keep_sensitive.choice[0]
    return out


def single_technique(recipe: Recipe, i: int) -> dict[str, Any] | None:
    """Trial parameters that switch optional pass i on alone (with the nearest optional export before it
    that produces its runtime), every other optional pass off; the passes switched on, and the searched
    serving knobs, take the first value of each of their `choice` lists. None when no export before it
    produces its runtime."""
    from optimizer.passes import REGISTRY

    optional = [j for j, spec in enumerate(recipe.passes) if isinstance(spec.enabled, Choice)]
    cls = REGISTRY.get(recipe.passes[i].name)
    params = {f"{j}.{recipe.passes[j].name}.enabled": False for j in optional} | {f"{i}.{recipe.passes[i].name}.enabled": True}
    needs = set(cls.runtimes_in) if cls else {"torch"}
    if "torch" not in needs:  # switch on the nearest optional export before it that produces its runtime
        providers = [j for j in optional if j < i and REGISTRY[recipe.passes[j].name].runtime_out in needs]
        if not providers:
            return None
        params[f"{providers[-1]}.{recipe.passes[providers[-1]].name}.enabled"] = True
    for key, on in list(params.items()):
        j = int(key.split(".")[0])
        if on and (j == i or j in optional):
            params |= _first_choices(j, recipe.passes[j])
    # served at the first value of each searched serving knob too: a sampled batch size that misses the latency
    # targets prunes the trial, and SmolLM2's single techniques, sampled at batch 8, were never timed at 4
    for knob, rng in serving_ranges(recipe).items():
        if isinstance(rng, Choice) and all(isinstance(v, _PRIMITIVE) for v in rng.choice):
            params[knob] = rng.choice[0]
    return params


def seed_single_techniques(study: optuna.Study, recipe: Recipe, device: str = "cpu") -> tuple[int, list[str]]:
    """Queue each optional pass on its own (with the export it needs) as a new study's first trials.

    Every technique in the space is then measured alone before the sampler combines them, so a search
    never ends without having tried the single techniques a user would try first. The passes switched
    on take the first value of each of their `choice` lists (a recipe lists its preferred setting
    first); other parameters are left to the sampler. The recipe states the levers, the machine orders
    them: on a CPU without what a pass's speed-up needs (`Pass.pays_on`) it is not queued, and is left to
    the sampler. Returns how many trials were queued, and each pass left out, with why.
    """
    from optimizer.measure.system import cpu_capabilities
    from optimizer.passes import REGISTRY

    has = cpu_capabilities() if device == "cpu" else None
    queued, left = 0, []
    for i, spec in enumerate(recipe.passes):
        params = single_technique(recipe, i) if isinstance(spec.enabled, Choice) else None
        if params is None:
            continue
        lacks = REGISTRY[spec.name].pays_on - has if has is not None and spec.name in REGISTRY else set()
        if lacks:
            left.append(f"{spec.name} (its speed-up needs {', '.join(sorted(lacks))} kernels, which this CPU lacks)")
            continue
        study.enqueue_trial(params, skip_if_exists=True)
        queued += 1
    return queued, left


def running_passes(recipe: Recipe, params: dict[str, Any]) -> list[int]:
    """Indices of the passes a trial with these parameters runs: the enabled ones whose input runtime
    the passes before them produce (as `suggest` decides)."""
    from optimizer.passes import REGISTRY

    runtime, out = "torch", []
    for i, spec in enumerate(recipe.passes):
        cls = REGISTRY.get(spec.name)
        if cls is not None and runtime not in cls.runtimes_in:
            continue
        on = params.get(f"{i}.{spec.name}.enabled", spec.enabled if isinstance(spec.enabled, bool) else False)
        if on:
            out.append(i)
            runtime = (cls.runtime_out if cls else None) or runtime
    return out


def combined_params(recipe: Recipe, ranked: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The techniques of several within-budget trials together, or None when they do not combine.

    `ranked` holds the trials' parameters, cheapest first. The cheapest is the start (its serving knobs
    and its runtime path included); each other trial adds the optional passes it ran that are off so
    far, with their parameters, where they still run in the chain (a pass of another runtime's path
    does not) and switch none of the passes already on off."""
    if len(ranked) < 2:
        return None
    optional = {i for i, spec in enumerate(recipe.passes) if isinstance(spec.enabled, Choice)}
    merged = dict(ranked[0])
    for params in ranked[1:]:
        on = running_passes(recipe, merged)
        for i in running_passes(recipe, params):
            if i in on or i not in optional:
                continue
            prefix = f"{i}.{recipe.passes[i].name}."
            trial = merged | {k: v for k, v in params.items() if k.startswith(prefix)}
            now = running_passes(recipe, trial)
            if i in now and set(on) <= set(now):
                merged, on = trial, now
    return merged if merged != ranked[0] else None
