"""Queries over a study's recorded trials: which count, which is the cheapest within budget, which machine
each was priced on, where a study lives. The reading side (reports, the confirmation's choice) asks
these without loading the measuring side (torch, the runtimes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from optimizer.measurement import Measurement

WORKER_PREFIX = "worker/"  # study user attribute per worker: its machine and baseline time


def default_storage(output_dir: str | Path, study_name: str) -> str:
    return f"sqlite:///{search_dir(output_dir, study_name).resolve() / 'study.db'}"


def search_dir(output_dir: str | Path, study_name: str) -> Path:
    """Where a study keeps its trials' scratch space and its artifact cache (under the recipe's output_dir)."""
    return Path(output_dir) / study_name


def counted(t: optuna.trial.FrozenTrial) -> bool:
    """Finished trials that count toward the target. A trial failed by the heartbeat check (its worker
    died) has no error of ours and is re-run by the retry callback, so it does not count."""
    m = Measurement.of(t)
    if m.repeat:  # a configuration measured before: costs nothing, so it does not use up the target
        return False
    if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
        return True
    return t.state == optuna.trial.TrialState.FAIL and m.error is not None


def finished(study: optuna.Study) -> int:
    return sum(counted(t) for t in study.get_trials(deepcopy=False))


def objective_sign(study: optuna.Study) -> int:
    """1 when the study minimizes, -1 when it maximizes: sign * value is smaller-is-better."""
    return -1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1


def priced_on(t: optuna.trial.FrozenTrial) -> str | None:
    """The catalog entry a trial was priced on: its worker's."""
    return Measurement.of(t).hardware.get("catalog")


def machines(study: optuna.Study) -> list[str]:
    """The catalog entries the study's measured trials were priced on (several when workers on different
    machines shared it)."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return sorted({c for t in done if (c := priced_on(t))})


def best_feasible(study: optuna.Study, catalog: str | None = None) -> optuna.trial.FrozenTrial | None:
    """The cheapest within-budget trial; with `catalog`, among those priced on that entry."""
    feasible = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if Measurement.of(t).feasible and (catalog is None or priced_on(t) == catalog)
    ]
    if not feasible:
        return None
    return min(feasible, key=lambda t: objective_sign(study) * t.values[0])


def baseline_best_batch(baseline: dict[str, Any], direction: str = "minimize") -> int | None:
    """The batch size the baseline served best at among those meeting the recipe's latency targets
    (`by_batch` holds its objective at each searched size, `late_batches` those that missed a target);
    None when it was measured at one size only."""
    by_batch = {b: v for b, v in (baseline.get("by_batch") or {}).items() if b not in (baseline.get("late_batches") or {})}
    if len(baseline.get("by_batch") or {}) < 2 or not by_batch:
        return None
    pick = min if direction == "minimize" else max
    return int(pick(by_batch, key=by_batch.get))


def closest(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The fully measured trial whose drop interval came nearest the budget."""
    done = [
        (m.violation, t)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if (m := Measurement.of(t)).measured
    ]
    return min(done, key=lambda vt: vt[0])[1] if done else None
