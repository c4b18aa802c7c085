"""`costopt search`: Optuna over the recipe's space, minimizing $ per 1M tokens under a quality constraint.

The baseline is measured once per worker process (`pipeline.Bench`); every trial is a pass chain
measured against it on this machine. A trial is feasible when the upper end of the confidence
interval of its drop in the constraint metric is within budget; Optuna's samplers take that through
`Trial.set_constraint`. The study lives in an Optuna storage (an SQLite file under runs/ by default; a
PostgreSQL URL lets workers on several machines share one study), so re-running resumes it.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from optimizer.errors import UserError
from optimizer.measure import speed as speed_mod
from optimizer.measure.system import fingerprint
from optimizer.pipeline import Bench, apply_chain, check_order, footprint, resolve_device, resolved_passes
from optimizer.recipe import Choice, FloatRange, Recipe, parse_range
from optimizer.search_space import suggest

log = logging.getLogger(__name__)
CONSTRAINT = "constraint"  # user attribute read by constraints_func: [violation]; <= 0 is feasible


@dataclass
class Objective:
    """The value a trial minimizes (or maximizes), read from its measured speed and cost."""

    kind: str  # cost | latency | throughput

    @property
    def direction(self) -> str:
        return "maximize" if self.kind == "throughput" else "minimize"

    def value(self, speed: dict[str, Any], cost: dict[str, Any] | None) -> float:
        if self.kind == "cost":
            assert cost is not None
            return float(cost["blended_usd_per_m"])
        if self.kind == "throughput":
            return float(speed["input_tokens_per_s"]["median"])
        if "token_latency_s" in speed:  # causal LM: per decoded token
            return float(speed["token_latency_s"]["p50"])
        return float(speed["batch_latency_s"]["p50"])


def constraint_violation(drop: dict[str, Any], max_drop: float, relative: bool) -> float:
    """Upper end of the drop's interval minus the budget: <= 0 means feasible."""
    high = drop["relative_high"] if relative and drop.get("relative_high") is not None else drop["high"]
    return float(high) - max_drop


def default_storage(recipe: Recipe, study_name: str) -> str:
    folder = Path(recipe.output_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / (study_name + '.db')}"


def _storage(url: str) -> optuna.storages.BaseStorage:
    """RDB storage with heartbeats: a worker that dies mid-trial has it marked failed and retried."""
    import warnings

    from optuna import storages

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return storages.RDBStorage(url, heartbeat_interval=30, grace_period=90,
                                   heartbeat_stale_trial_callback=storages.RetryHeartbeatStaleTrialCallback(max_retry=2))


def _grid(recipe: Recipe) -> dict[str, list[Any]]:
    space: dict[str, list[Any]] = {}
    for i, spec in enumerate(recipe.passes):
        if isinstance(spec.enabled, Choice):
            raise UserError(f"sampler grid cannot search optional passes (passes[{i}] {spec.name})",
                            "use sampler: tpe or random, or fix enabled: true/false")
        for k, v in spec.params.items():
            rng = parse_range(v)
            if rng is None:
                continue
            if isinstance(rng, FloatRange):
                raise UserError(f"sampler grid needs discrete values but passes[{i}].{k} is a float range",
                                "write {choice: [...]} or {int: [lo, hi]}, or use sampler: tpe")
            values = rng.choice if isinstance(rng, Choice) else list(range(rng.int[0], rng.int[1] + 1, rng.step))
            space[f"{i}.{spec.name}.{k}"] = values
    return space


def make_sampler(recipe: Recipe) -> optuna.samplers.BaseSampler:
    s = recipe.search
    # Constraints reach TPE and NSGA-II through Trial.set_constraint (Optuna 5 replaced constraints_func).
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=s.seed, multivariate=True)
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    return optuna.samplers.GridSampler(_grid(recipe), seed=s.seed)


def open_study(recipe: Recipe, storage: str | None = None) -> optuna.Study:
    s = recipe.search
    name = s.study_name or recipe.name
    objective = Objective(s.objective)
    directions = [objective.direction, "minimize"] if s.multi_objective else [objective.direction]
    return optuna.create_study(study_name=name, storage=_storage(storage or s.storage or default_storage(recipe, name)),
                               sampler=make_sampler(recipe), directions=directions, load_if_exists=True)


def check_searchable(recipe: Recipe) -> str:
    """The constraint metric; refuses recipes a search cannot price or judge."""
    s = recipe.search
    if s.objective == "cost" and not recipe.hardware.catalog:
        raise UserError("search objective 'cost' needs a price: hardware.catalog is not set",
                        "set hardware.catalog to an entry of `costopt hardware list`, or search.objective: throughput")
    metric = s.constraint.metric or recipe.primary_metric
    if metric not in recipe.metrics:
        raise UserError(f"search.constraint.metric {metric!r} is not among quality.metrics {recipe.metrics}",
                        f"add it to quality.metrics or use one of {recipe.metrics}")
    return metric


class TrialRunner:
    """One worker: its Bench (baseline measured once) and the objective Optuna calls per trial."""

    def __init__(self, recipe: Recipe, trials_dir: Path) -> None:
        self.recipe = recipe
        self.metric = check_searchable(recipe)
        self.objective = Objective(recipe.search.objective)
        speed_mod.set_threads(recipe.hardware.threads)
        self.bench = Bench.load_data(recipe, resolve_device(recipe.hardware.device))
        baseline = self.bench.load_baseline()
        quality = self.bench.baseline_quality()
        speed, cost = self.bench.speed_and_cost(baseline)
        self.baseline = {"quality": quality, "speed": speed, "cost": cost,
                         "objective": self.objective.value(speed, cost)}
        self.system = fingerprint()
        self.trials_dir = trials_dir

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        c = self.recipe.search.constraint
        trial.set_user_attr("hardware", {"cpu": self.system["cpu"].get("model"), "gpus": self.system.get("gpus"),
                                         "threads": speed_mod.threads()})
        trial.set_user_attr("baseline_objective", self.baseline["objective"])
        chosen = suggest(trial, self.recipe)
        passes = resolved_passes(self.recipe, chosen)
        trial.set_user_attr("passes", passes)
        work = self.trials_dir / f"trial-{trial.number}"
        t0 = time.perf_counter()
        try:
            check_order(passes)
            timings: dict[str, float] = {}
            cand = apply_chain(self.recipe, passes, self.bench.context(work / "work"), timings)
            values, drops = self.bench.judge(cand)
            if any(not math.isfinite(v) for v in values.values()):
                raise UserError(f"the candidate's quality is not a number ({values})", "this configuration is broken")
            violation = constraint_violation(drops[self.metric], c.max_drop, c.relative)
            trial.set_user_attr("quality", values)
            trial.set_user_attr("drop", drops[self.metric])
            trial.set_user_attr(CONSTRAINT, [violation])
            trial.set_constraint(f"{self.metric} drop over budget", violation)
            speed, cost = self.bench.speed_and_cost(cand)
            value = self.objective.value(speed, cost)
            fp = footprint(cand, work / "artifact")
            trial.set_user_attr("speed", {k: speed[k]["median"] for k in ("input_tokens_per_s", "output_tokens_per_s") if k in speed})
            trial.set_user_attr("cost", cost)
            trial.set_user_attr("footprint", {k: fp[k] for k in ("parameters", "nonzero_parameters", "weight_bytes")})
            trial.set_user_attr("notes", cand.notes)
        except Exception as e:
            reason = e.one_line() if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            trial.set_user_attr("error", reason[:500])
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
            shutil.rmtree(work, ignore_errors=True)
        if self.recipe.search.multi_objective:
            return value, float(drops[self.metric]["relative"] if c.relative else drops[self.metric]["drop"])
        return value


def finished(study: optuna.Study) -> int:
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)
    return sum(t.state in done for t in study.get_trials(deepcopy=False))


def best_feasible(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    feasible = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.user_attrs.get(CONSTRAINT, [math.inf])[0] <= 0]
    if not feasible:
        return None
    sign = -1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1
    return min(feasible, key=lambda t: sign * t.values[0])


def run_search(recipe: Recipe, storage: str | None = None, trials: int | None = None) -> optuna.Study:
    """Run trials until the study holds `trials` finished ones (re-running resumes) or the time budget ends."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(recipe, storage)
    target = trials or recipe.search.trials
    todo = target - finished(study)
    if todo <= 0:
        return study
    runner = TrialRunner(recipe, Path(recipe.output_dir) / f"{study.study_name}-trials")
    study.set_user_attr("baseline", runner.baseline)
    timeout = recipe.search.timeout_minutes * 60 if recipe.search.timeout_minutes else None
    study.optimize(runner, n_trials=todo, timeout=timeout, catch=(Exception,))
    return study


def leaderboard(study: optuna.Study, top: int = 10) -> list[dict[str, Any]]:
    """Finished trials, feasible first, best objective first; failed ones last with their reason."""
    sign = -1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL):
            continue
        ok = t.state == optuna.trial.TrialState.COMPLETE
        violation = t.user_attrs.get(CONSTRAINT, [math.inf])[0]
        rows.append({"trial": t.number, "state": "ok" if ok else "failed", "feasible": ok and violation <= 0,
                     "objective": t.values[0] if ok else None, "violation": violation if ok else None,
                     "drop": t.user_attrs.get("drop"), "passes": t.user_attrs.get("passes", []),
                     "error": t.user_attrs.get("error")})
    rows.sort(key=lambda r: (r["state"] != "ok", not r["feasible"],
                             sign * r["objective"] if r["objective"] is not None else math.inf))
    return rows[:top]
