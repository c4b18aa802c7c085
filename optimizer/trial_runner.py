"""One search worker: its bench (the baseline measured once, or reused by a restarted worker on the same
machine), artifact cache and the objective Optuna calls for each trial, with the trial's time limit and
the one-line reason a trial failed."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from optimizer.bench import Bench
from optimizer.cache import ArtifactCache
from optimizer.chain import apply_chain, resolve_device, resolved_passes
from optimizer.errors import UserError
from optimizer.measure import speed as speed_mod
from optimizer.measure.contention import Watch
from optimizer.measure.price import Price
from optimizer.measure.system import fingerprint
from optimizer.measurement import WORKER, Measurement, Pruned
from optimizer.objectives import OBJECTIVES
from optimizer.passes import check_chain, runtime_of
from optimizer.ranges import parse_range, values
from optimizer.recipe import Recipe
from optimizer.search_space import suggest
from optimizer.sensitivity import Sensitivity, patterns, rank_all
from optimizer.signals import on_thread_stack

log = logging.getLogger(__name__)


@dataclass
class Objective:
    """The value a trial minimizes (or maximizes), read from its measured speed and cost."""

    kind: str  # a key of objectives.OBJECTIVES

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.kind].direction

    def value(self, speed: dict[str, Any], cost: Price | None) -> float:
        return OBJECTIVES[self.kind].read(speed, cost)


def check_searchable(recipe: Recipe) -> str:
    """The constraint metric; refuses recipes a search cannot price or judge."""
    s = recipe.search
    if OBJECTIVES[s.objective].needs_price and not recipe.hardware.catalog:
        raise UserError(
            f"search objective {s.objective!r} needs a price: hardware.catalog is not set",
            "set hardware.catalog to an entry of `costopt hardware list`, or search.objective: throughput",
        )
    metric = s.constraint.metric or recipe.primary_metric
    if metric not in recipe.metrics:
        raise UserError(
            f"search.constraint.metric {metric!r} is not among quality.metrics {recipe.metrics}",
            f"add it to quality.metrics or use one of {recipe.metrics}",
        )
    return metric


class TrialTimeout(Exception):
    """A trial ran past search.trial_timeout_minutes."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise TrialTimeout in the main thread after `seconds` (no limit where signals are unavailable)."""
    usable = seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise TrialTimeout(f"passed its time limit of {seconds / 60:.3g} min")

    previous = signal.signal(signal.SIGALRM, expired)
    on_thread_stack(signal.SIGALRM)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def failure_reason(e: BaseException) -> str:
    if isinstance(e, UserError):
        return e.one_line()
    if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
        return f"ran out of memory ({type(e).__name__}: {str(e)[:200]})"
    if isinstance(e, TrialTimeout):
        return str(e)
    if isinstance(e, FloatingPointError):
        return f"produced NaN or infinite values: {e}"
    return f"{type(e).__name__}: {e}"


def worker_id() -> str:
    """This process as a worker of a study: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def machine_key(system: dict[str, Any], threads: int) -> str:
    """What a speed measurement depends on besides the recipe: the CPU, GPUs, libraries and threads."""
    what = {k: system.get(k) for k in ("cpu", "gpus", "libraries", "memory_bytes")} | {"threads": threads}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def measured_key(recipe: Recipe) -> str:
    """The recipe sections a baseline's speed depends on."""
    r = recipe.model_dump(mode="json")
    what = {k: r[k] for k in ("model", "task", "speed", "hardware")} | {
        "eval": r["data"]["eval"],
        "seed": r["data"]["seed"],
        "share": r["search"]["confirm"]["share"],
        "batch_size": r["search"]["batch_size"],
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reusable_baseline(previous: dict[str, Any] | None, recipe: Recipe, machine: str) -> tuple[dict[str, Any] | None, str]:
    """The study's baseline speed figures when a restarted worker may reuse them, and why (or why not)."""
    limit = recipe.search.baseline_reuse_minutes
    if not previous or not limit:
        return None, "measured (no earlier baseline to reuse)" if limit else "measured (baseline_reuse_minutes is 0)"
    if previous.get("machine") != machine or previous.get("measured_key") != measured_key(recipe):
        return None, "measured (the study's baseline is from another machine, library set or recipe)"
    age = (time.time() - previous.get("measured_at", 0)) / 60
    if age > limit:
        return None, f"measured (the study's baseline is {age:.0f} min old, over baseline_reuse_minutes {limit:g})"
    if timed_busy(previous):
        return None, "measured (the study's baseline was timed under contention)"
    with Watch() as watch:
        time.sleep(1.0)
    if watch.result.busy:
        return None, f"measured (the CPU is not quiet now: {watch.result.text})"
    return previous, f"reused the speed measured {age:.1f} min ago on this machine (quality re-measured)"


class TrialRunner:
    """One worker: its Bench (baseline measured once), artifact cache and the objective Optuna calls."""

    def __init__(
        self,
        recipe: Recipe,
        work_dir: Path,
        previous: dict[str, Any] | None = None,
        ranked: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.recipe = recipe
        self.metric = check_searchable(recipe)
        self.budget = recipe.budget
        self.objective = Objective(recipe.search.objective)
        self.threads = speed_mod.set_threads(recipe.hardware.threads)
        self.system = fingerprint()
        machine = machine_key(self.system, self.threads)
        t0 = time.perf_counter()
        # trials are judged on the selection part; the held-out part is kept for confirming the choice
        self.bench = Bench.load_data(recipe, resolve_device(recipe.hardware.device), "select")
        self.bench.load_baseline()
        quality = self.bench.baseline_quality()  # always: trials are paired with its per-example values
        quality_seconds = round(time.perf_counter() - t0, 1)  # with loading: a time budget predicts the confirmation's
        reuse, self.baseline_origin = reusable_baseline(previous, recipe, machine)
        if reuse is not None:  # a restarted worker: the timings are the expensive part, and still hold
            keep = ("speed", "cost", "objective", "by_batch", "late_batches", "footprint", "measured_at")
            self.baseline = {k: reuse[k] for k in keep if k in reuse}
            self.baseline |= {"quality": quality, "passes": [], "worker": worker_id()}
        else:
            speed, cost, fp = self.bench.baseline_figures()
            self.baseline = {
                "quality": quality,
                "speed": speed,
                "cost": cost.to_json() if cost else None,
                "footprint": fp.to_json(),
                "passes": [],
                "objective": self.objective.value(speed, cost),
                "worker": worker_id(),
                "measured_at": time.time(),
            }
            self.baseline["by_batch"], self.baseline["late_batches"] = self._baseline_per_batch(
                self.bench.timed_baseline, speed, cost
            )
        self.baseline |= {"machine": machine, "measured_key": measured_key(recipe), "quality_seconds": quality_seconds}
        self.baseline["seconds"] = round(time.perf_counter() - t0, 1)  # part of the job's cost (break-even)
        self.trials_dir = work_dir / "trials"
        self.cache = ArtifactCache(work_dir / "cache") if recipe.search.cache else None
        self.last_trial: int | None = None
        # the study's block rankings when another worker measured them (every worker must expand
        # keep_sensitive alike), else measured here
        if ranked:
            self.sensitive = {int(i): Sensitivity.from_json(r) for i, r in ranked.items()}
        else:
            self.sensitive = rank_all(self.bench, self.budget, work_dir, self.cache, log=log.info)

    def _baseline_per_batch(
        self, baseline: Any, speed: dict[str, Any], cost: dict[str, Any] | None
    ) -> tuple[dict[str, float], dict[str, list[str]]]:
        """When the search picks the batch size, the baseline is measured at every candidate size too,
        so a saving is never just the baseline's badly chosen batch: its objective per size, and the sizes
        that miss the recipe's latency targets (never its best batch: a trial there is pruned)."""
        rng = parse_range(self.recipe.search.batch_size)
        sizes = values(rng) if rng is not None else []
        out = {str(self.recipe.speed.batch_size): self.objective.value(speed, cost)}
        late = {str(self.recipe.speed.batch_size): speed["latency_misses"]} if speed.get("latency_misses") else {}
        for b in sizes:
            if str(b) not in out:
                sp, co = self.bench.speed_and_cost(baseline, int(b))
                out[str(b)] = self.objective.value(sp, co)
                if sp.get("latency_misses"):
                    late[str(b)] = sp["latency_misses"]
        return out, late

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        try:
            return self._run(trial)
        except KeyboardInterrupt as e:  # SIGTERM / Ctrl-C (signals.Stopped): Optuna fails the trial; say why
            # wherever it landed: sampling, building, measuring or cleaning up
            m = Measurement.of(trial)
            m.error = f"interrupted ({e or 'KeyboardInterrupt'}) before the trial finished"
            m.save(trial)
            raise

    def _run(self, trial: optuna.Trial) -> float | tuple[float, float]:
        s = self.recipe.search
        self.last_trial = trial.number
        trial.set_user_attr(WORKER, worker_id())  # first: a trial this worker leaves behind can be traced to it
        try:
            chosen = suggest(trial, self.recipe)
        except Exception as e:  # recorded, so the trial counts as finished and a broken space cannot loop forever
            Measurement(metric=self.metric, error=failure_reason(e)[:500]).save(trial)
            raise
        twin = _measured_twin(trial)
        if twin is not None:  # the sampler proposed a configuration already measured: reuse, do not rebuild
            m = Measurement.of(twin)
            m.same_as, m.repeat, m.seconds, m.timings = twin.number, True, 0.0, {}
            m.save(trial)
            trial.set_constraint(f"{self.metric} drop over budget", m.violation)
            return tuple(twin.values) if s.multi_objective else twin.values[0]
        threads = int(chosen.get("threads") or self.threads)
        batch = int(chosen.get("batch_size") or self.recipe.speed.batch_size)
        streams = int(chosen.get("streams") or self.recipe.speed.streams)
        passes = resolved_passes(self.recipe, chosen, patterns(self.sensitive))
        m = Measurement(
            passes=passes,
            deployment={"runtime": runtime_of(passes), "batch_size": batch, "threads": threads, "streams": streams},
            metric=self.metric,
            hardware={
                "cpu": self.system["cpu"].get("model"),
                "gpus": self.system.get("gpus"),
                "device": self.bench.device,
                "catalog": self.recipe.hardware.catalog,
            },
            baseline_objective=self.baseline["objective"],
        )

        def save(m: Measurement) -> None:
            m.save(trial)
            if m.violation is not None and not trial.constraints:  # Optuna keeps the first value it is given
                trial.set_constraint(f"{self.metric} drop over budget", m.violation)

        timed = {str(self.recipe.speed.batch_size), *(self.baseline.get("by_batch") or {})}  # batch sizes it was timed at
        if not passes and (threads, streams) == (self.threads, self.recipe.speed.streams) and str(batch) in timed:
            # every optional pass off, served as the baseline was timed: the baseline, measured already (a
            # budgeted search on the AVX-512 EPYC spent 37 s of its 9.5 minutes re-measuring it at batch 8)
            at = "" if batch == self.recipe.speed.batch_size else f" at batch {batch}"
            m.pruned, m.seconds, m.repeat = f"no passes: this is the baseline itself{at}, measured before the trials", 0.0, True
            m.save(trial)
            raise optuna.TrialPruned(m.pruned)
        work = self.trials_dir / f"trial-{trial.number}"
        t0 = time.perf_counter()
        try:
            speed_mod.set_threads(threads)
            with time_limit(s.trial_timeout_minutes * 60 if s.trial_timeout_minutes else None):
                check_chain(passes, self.bench.device)
                cand = apply_chain(self.recipe, passes, self.bench.context(work / "work"), m.timings, cache=self.cache)
                save(m)
                self.bench.measure(
                    cand,
                    m,
                    work,
                    confidence=s.constraint.confidence,
                    screen_examples=s.screen_examples,
                    stop_early=True,
                    cache=self.cache,
                    save=save,
                )
                value = self.objective.value(m.speed, m.cost)
                if not math.isfinite(value) or value <= 0:
                    raise FloatingPointError(f"the measured {self.objective.kind} is {value}")
        except Pruned as e:
            m.pruned = e.reason
            if e.constraint is not None:
                trial.set_constraint(f"{self.metric} drop over budget", e.constraint)
            raise optuna.TrialPruned(e.reason) from None
        except Exception as e:
            m.error = failure_reason(e)[:500]
            raise
        finally:
            speed_mod.set_threads(self.threads)
            m.seconds = round(time.perf_counter() - t0, 1)
            m.save(trial)
            shutil.rmtree(work, ignore_errors=True)
            gc.collect()
        if s.multi_objective:
            assert m.drop is not None
            return value, float(m.drop.end("point", s.constraint.relative))
        return value


def _measured_twin(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """An earlier complete trial with exactly these parameters, if any."""
    params = trial.params
    for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.params == params and t.number != trial.number:
            m = Measurement.of(t)
            if m.measured and m.same_as is None:
                return t
    return None


def timed_busy(baseline: dict[str, Any]) -> bool:
    return bool(baseline.get("speed", {}).get("contention", {}).get("busy"))
