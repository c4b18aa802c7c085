"""A recipe resolved for measuring, and its pass chain built: the device, the catalog entry this machine
is priced at, the passes with the search's choices filled in, the eval parts, the pass context, and the
chain applied to the baseline."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal

import torch

from optimizer.cache import ArtifactCache, chain_key
from optimizer.data import Dataset, DataSource, load_dataset
from optimizer.errors import UserError
from optimizer.measure import speed as speed_mod
from optimizer.measure.footprint import Footprint
from optimizer.measure.system import fingerprint
from optimizer.passes import PassContext, build_pass
from optimizer.ranges import parse_range
from optimizer.recipe import AUTO_CATALOG, Recipe
from optimizer.runtimes import Candidate, folder_size, load_candidate
from optimizer.runtimes.base import WEIGHT_SUFFIXES

log = logging.getLogger(__name__)


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "the recipe asks for hardware.device: cuda but no GPU is visible to torch",
            "set hardware.device: cpu (or auto), or run on a machine with a CUDA GPU",
        )
    return requested


def priced_here(recipe: Recipe) -> Recipe:
    """The recipe with `hardware.catalog: auto` made into the catalog entry of this machine (the
    cheapest entry of its CPU generation and core count, or of its GPUs); other recipes unchanged."""
    hw = recipe.hardware
    if hw.catalog != AUTO_CATALOG:
        return recipe
    import cost

    fp = fingerprint()
    gpus = [g["name"] for g in fp.get("gpus") or []] if resolve_device(hw.device) == "cuda" else []
    catalog = cost.load_catalog(hw.catalog_file)
    entry, others = catalog.for_machine(fp["cpu"], gpus)
    if entry is None:
        cpu = fp["cpu"]
        family = cost.cpu_family(cpu) or "an unknown family"
        what = ", ".join(gpus) or f"{cpu.get('model')}, {family}, {cpu.get('logical_cores')} logical cores"
        near = "" if gpus else f"; nearest: {', '.join(catalog.nearest_cpu(cpu))}"
        raise UserError(
            f"hardware.catalog: auto found no catalog entry for this machine ({what}){near}",
            "name one: --set hardware.catalog=<entry> (see `costopt hardware list`), or add this machine to a catalog "
            "file with its family: and vcpus:",
        )
    log.info("hardware.catalog auto: priced as %s%s", entry.name, f" (also fits: {', '.join(others)})" if others else "")
    return recipe.model_copy(update={"hardware": hw.model_copy(update={"catalog": entry.name})})


def resolved_passes(
    recipe: Recipe, chosen: dict[str, Any] | None = None, sensitive: dict[int, list[str]] | None = None
) -> list[dict[str, Any]]:
    """The recipe's passes with every range replaced by the value in `chosen` (keyed 'i.name.param'), and
    each pass's `keep_sensitive: k` made into the k most sensitive blocks' patterns in its `exclude`
    (`sensitive`: by pass index, the block patterns a search ranked, most sensitive first)."""
    chosen = chosen or {}
    out = []
    for i, spec in enumerate(recipe.passes):
        enabled = spec.enabled
        key = f"{i}.{spec.name}.enabled"
        if key in chosen:  # sampled, or turned off because its runtime was not chosen
            enabled = bool(chosen[key])
        elif not isinstance(enabled, bool):
            raise UserError(
                f"passes[{i}] ({spec.name}) is optional (enabled is a search choice)",
                "run `costopt search`, or set enabled: true/false for a single run",
            )
        if not enabled:
            continue
        params = {}
        for k, v in spec.params.items():
            if parse_range(v) is not None:
                key = f"{i}.{spec.name}.{k}"
                if key not in chosen:
                    raise UserError(
                        f"passes[{i}].{k} is a search range", "run `costopt search`, or give one value for a single run"
                    )
                params[k] = chosen[key]
            else:
                params[k] = v
        k = chosen.get(f"{i}.{spec.name}.keep_sensitive", spec.keep_sensitive)
        if parse_range(k) is not None:
            raise UserError(
                f"passes[{i}].keep_sensitive is a search range", "run `costopt search`, or give one value for a single run"
            )
        if k:
            if sensitive is None or i not in sensitive:
                raise UserError(
                    f"passes[{i}].keep_sensitive: the block ranking it reads is measured by `costopt search`",
                    "run `costopt search`, or list the blocks in exclude (a search's report shows each block's pattern)",
                )
            params["exclude"] = list(params.get("exclude", [])) + sensitive[i][: int(k)]
        out.append({"name": spec.name, "params": params, "save": spec.save})
    return out


def footprint(cand: Candidate, directory: Path) -> Footprint:
    """Parameters, non-zeros and the on-disk size of a saved, reloadable artifact."""
    params, nonzero = cand.parameter_counts()
    folder = cand.save(directory)
    weights = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    return Footprint(params, nonzero, folder_size(folder), weights, str(folder))


def timed_recipe(recipe: Recipe) -> Recipe:
    """The recipe whose model is timed: speed.model in place of model.source when the recipe sets one."""
    if recipe.speed.model is None:
        return recipe
    return recipe.model_copy(update={"model": recipe.speed.model})


EvalPart = Literal["all", "select", "confirm"]


def eval_part(recipe: Recipe, part: EvalPart = "all", source: DataSource | None = None) -> Dataset:
    """An eval set (data.eval unless `source` is given), or one of its two disjoint parts: a search
    selects on one and confirms on the other."""
    return eval_parts(recipe, part, source)[0]


def eval_parts(recipe: Recipe, part: EvalPart, source: DataSource | None = None) -> tuple[Dataset, int]:
    """The part asked for, and the size of the other part (0 for the whole set)."""
    data = load_dataset(source or recipe.data.eval, "eval", recipe.task, recipe.data.seed)
    share = recipe.search.confirm.share
    if part == "all" or share == 0:
        return data, 0
    select, confirm = data.split(share, recipe.data.seed)
    return (select, len(confirm)) if part == "select" else (confirm, len(select))


def pass_data(recipe: Recipe) -> tuple[Dataset | None, Dataset | None]:
    """The calibration and training data the passes read."""
    d = recipe.data
    calib = load_dataset(d.calibration, "calibration", recipe.task, d.seed) if d.calibration else None
    train = load_dataset(d.train, "train", recipe.task, d.seed) if d.train else None
    return calib, train


def pass_context(recipe: Recipe, device: str, work_dir: Path, calib: Dataset | None, train: Dataset | None) -> PassContext:
    return PassContext(
        task=recipe.task,
        device=device,
        threads=speed_mod.threads(),
        seed=recipe.data.seed,
        work_dir=work_dir,
        calibration=calib,
        train=train,
        baseline=lambda: load_candidate(recipe.model, recipe.task, device),
    )


def apply_chain(
    recipe: Recipe,
    passes: list[dict[str, Any]],
    ctx: PassContext,
    timings: dict[str, float],
    save_dir: Path | None = None,
    cache: ArtifactCache | None = None,
) -> Candidate:
    """A fresh copy of the model (the baseline stays intact) through `passes`; intermediates saved on request.

    With a cache, the longest already-built prefix of the chain is reloaded and every newly built
    prefix is kept, so trials that share passes build them once.
    """
    keys = [chain_key(recipe, ctx.device, passes[: i + 1]) for i in range(len(passes))] if cache else []
    start, cached = cache.load_longest(keys, ctx.device) if cache else (0, None)
    if cached is not None:
        cand = cached
        timings["cache hit"] = start
    else:
        cand = load_candidate(recipe.model, recipe.task, ctx.device)
    for i, p in enumerate(passes):
        if i < start:
            continue
        t0 = time.perf_counter()
        cand = build_pass(p["name"], p["params"]).apply(cand, ctx)
        cand.applied.append({"name": p["name"], "params": p["params"]})
        seconds = time.perf_counter() - t0
        timings[f"pass {p['name']}"] = round(seconds, 3)
        if cache:
            cache.put(keys[i], cand, seconds)
        if p.get("save") and save_dir is not None and i < len(passes) - 1:  # the last one is the artifact
            cand.save(save_dir / f"after-{i + 1}-{p['name']}")
    return cand
