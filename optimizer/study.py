"""`costopt search`: Optuna over the recipe's space, minimizing $ per 1M tokens under a quality constraint.

The baseline is measured once per worker process (`bench.Bench`); every trial is a pass chain
measured against it on this machine. A trial is feasible when the upper end of the confidence
interval of its drop in the constraint metric is within budget; Optuna's samplers take that through
`Trial.set_constraint`. The study lives in an Optuna storage (an SQLite file under runs/ by default; a
PostgreSQL URL lets workers on several machines share one study), so re-running resumes it.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import optuna

from optimizer.chain import priced_here, resolve_device
from optimizer.errors import UserError
from optimizer.measure.contention import alive, registered
from optimizer.measurement import WORKER, Measurement
from optimizer.objectives import OBJECTIVES
from optimizer.ranges import Choice, values
from optimizer.recipe import Recipe
from optimizer.results import ensure_writable
from optimizer.run_record import provenance
from optimizer.search_space import (
    SERVING_KNOBS,
    combined_params,
    pass_ranges,
    running_passes,
    seed_single_techniques,
    serving_ranges,
    space_size,
    stored_values,
)
from optimizer.signals import raise_if_stopped
from optimizer.storage import open_storage
from optimizer.time_budget import TimeBudget
from optimizer.trial_runner import Objective, TrialRunner, timed_busy, worker_id
from optimizer.trials import (  # noqa: F401 - also imported from here by the CLI, the confirmation and tests
    WORKER_PREFIX,
    best_feasible,
    closest,
    counted,
    default_storage,
    finished,
    machines,
    objective_sign,
    priced_on,
    search_dir,
)

log = logging.getLogger(__name__)
MAX_REPEATS_IN_A_ROW = 10  # then the sampler has nothing new to propose: stop
SENSITIVITY = "sensitivity"  # study user attribute: the block rankings keep_sensitive reads, by pass index
COMBINED = "combined"  # study user attribute: the parameters queued to combine the within-budget techniques


def _grid(recipe: Recipe) -> dict[str, list[Any]]:
    space: dict[str, list[Any]] = {}
    for i, spec in enumerate(recipe.passes):
        if isinstance(spec.enabled, Choice):
            raise UserError(
                f"sampler grid cannot search optional passes (passes[{i}] {spec.name})",
                "use sampler: tpe or random, or fix enabled: true/false",
            )
        for name, rng in pass_ranges(i, spec).items():
            listed = stored_values(rng)
            if listed is None:
                raise UserError(
                    f"sampler grid needs discrete values but passes[{i}].{name.split('.', 2)[2]} is a float range",
                    "write {choice: [...]} or {int: [lo, hi]}, or use sampler: tpe",
                )
            space[name] = listed
    return space | {knob: values(rng) for knob, rng in serving_ranges(recipe).items()}


def make_sampler(recipe: Recipe, resumed_at: int = 0) -> optuna.samplers.BaseSampler:
    """The recipe's sampler. A resumed study seeds it past its seed by the trials it already holds, so
    the random start-up draws of the first session are not proposed again."""
    s = recipe.search
    seed = s.seed + resumed_at
    # Constraints reach TPE and NSGA-II through Trial.set_constraint (Optuna 5 replaced constraints_func).
    if s.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GridSampler(_grid(recipe), seed=seed)


def open_study(recipe: Recipe, storage: str | None = None) -> optuna.Study:
    s = recipe.search
    name = s.study_name or recipe.name
    objective = Objective(s.objective)
    directions = [objective.direction, "minimize"] if s.multi_objective else [objective.direction]
    # a search writes its scratch space, cache and (by default) its study here; a report only reads
    ensure_writable(search_dir(recipe.output_dir, name))
    study = optuna.create_study(
        study_name=name,
        storage=open_storage(storage or s.storage or default_storage(recipe.output_dir, name), s.heartbeat_seconds),
        sampler=make_sampler(recipe),
        directions=directions,
        load_if_exists=True,
    )
    # named objectives: optuna-dashboard and study.trials_dataframe() show these instead of values_0 / values_1
    metric = s.constraint.metric or recipe.primary_metric
    names = [OBJECTIVES[s.objective].label] + ([f"{metric} drop"] if s.multi_objective else [])
    if study.metric_names != names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable since Optuna 3.2
            study.set_metric_names(names)
    return study


class _FailureInOneLine(logging.Filter):
    """Optuna logs a failed trial with the error in one line and then its traceback: the user reads the
    line (the trial's record keeps the reason too). `costopt -v` keeps the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not log.isEnabledFor(logging.DEBUG):
            record.exc_info = record.exc_text = None
        return True


def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _FailureInOneLine) for f in handler.filters):
            handler.addFilter(_FailureInOneLine())


class Progress:
    """One live line: trial n of N, best feasible objective so far, time left."""

    def __init__(self, study: optuna.Study, target: int, timeout: float | None, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.target, self.timeout, self.t0 = target, timeout, time.monotonic()
        self.initial = min(finished(study), target)
        self.bar = tqdm(
            total=target,
            initial=self.initial,
            unit="trial",
            disable=not enabled,
            desc="search",
            bar_format="{desc}: trial {n_fmt}/{total_fmt} |{bar:20}| {elapsed}{postfix}",
        )
        self.update(study)

    def update(self, study: optuna.Study, *_: Any) -> None:
        done = finished(study)
        self.bar.n = min(done, self.target)
        best = best_feasible(study)
        best_text = f"best feasible {best.values[0]:.5g} (trial {best.number})" if best else "no feasible trial yet"
        elapsed = time.monotonic() - self.t0
        run_here = max(1, done - self.initial)
        left = (self.target - done) * elapsed / run_here if done > self.initial else None
        if self.timeout is not None:
            left = min(left if left is not None else math.inf, max(0.0, self.timeout - elapsed))
        left_text = f"~{left / 60:.1f} min left" if left is not None and math.isfinite(left) else "time left: measuring"
        self.bar.set_postfix_str(f"{best_text} · {left_text}", refresh=True)
        if done >= self.target:
            study.stop()  # other workers may have finished the target for us

    def close(self) -> None:
        self.bar.close()


def run_search(
    recipe: Recipe,
    storage: str | None = None,
    trials: int | None = None,
    progress: bool = False,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
    budget: TimeBudget | None = None,
) -> optuna.Study:
    """Run trials until the study holds `trials` finished ones (re-running resumes), search.timeout_minutes
    ends, or `budget` (the whole search's time, confirmation included) would not fit the next trial.

    Several processes (or machines, through a shared storage URL) can run this at once on one study.
    `callbacks` are Optuna trial callbacks (experiment tracking: optimizer.tracking.MlflowTracker).
    """
    _quiet_optuna()
    recipe = priced_here(recipe)  # each worker prices its own machine when hardware.catalog is auto
    study = open_study(recipe, storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a dead worker's trials: failed now, queued again by the retry callback
    target = trials or recipe.search.trials
    todo = target - finished(study)
    if todo <= 0:
        return study
    with registered():  # other workers on this host see this one and mark timings it may disturb
        _run_trials(recipe, study, target, progress, callbacks, budget)
    fail_orphans(study, unclaimed_after_s=3 * recipe.search.heartbeat_seconds)
    return study


def fail_orphans(study: optuna.Study, unclaimed_after_s: float | None = None) -> list[int]:
    """Fail the trials left RUNNING by workers of this host that are no longer alive, so a finished
    search holds no RUNNING trial; the reason goes to the study's `orphans` attribute. (Workers on
    other hosts are found by the heartbeat check when the next worker starts.)

    A trial no worker ever claimed (its worker died between creating it and its first step, which
    writes `worker`, so it has neither a worker nor a heartbeat) is failed once it is older than
    `unclaimed_after_s`: a live worker claims its trial within milliseconds."""
    host, failed = socket.gethostname(), []
    reasons = dict(study.user_attrs.get("orphans", {}))
    now = datetime.now()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        h, _, pid = str(t.user_attrs.get(WORKER, "")).rpartition(":")
        unclaimed = (
            WORKER not in t.user_attrs
            and unclaimed_after_s is not None
            and t.datetime_start is not None
            and (now - t.datetime_start).total_seconds() > unclaimed_after_s
        )
        if unclaimed:
            reasons[str(t.number)] = "created but never claimed: its worker died before starting it; failed when a search ended"
        elif h != host or not pid.isdigit() or int(pid) == os.getpid() or alive(int(pid)):
            continue
        else:
            reasons[str(t.number)] = f"its worker {h}:{pid} died while running it; failed when a search on this host ended"
        # told outside optimize(): the recipe's sampler must not react (the grid sampler would call stop())
        sampler, study.sampler = study.sampler, optuna.samplers.RandomSampler()
        try:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        finally:
            study.sampler = sampler
        failed.append(t.number)
    if failed:
        study.set_user_attr("orphans", reasons)
    return failed


def _run_trials(
    recipe: Recipe,
    study: optuna.Study,
    target: int,
    progress: bool,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
    budget: TimeBudget | None = None,
) -> None:
    attrs = study.user_attrs
    runner = TrialRunner(recipe, search_dir(recipe.output_dir, study.study_name), attrs.get("baseline"), attrs.get(SENSITIVITY))
    _record_study_context(study, recipe, runner)
    timeout = recipe.search.timeout_minutes * 60 if recipe.search.timeout_minutes else None
    deadline = time.monotonic() + timeout if timeout else None
    if not study.trials and recipe.search.sampler != "grid":
        _, left = seed_single_techniques(study, recipe, resolve_device(recipe.hardware.device))
        for why in left:
            log.warning("not tried alone first on this CPU: %s; the sampler may still draw it", why)
    elif recipe.search.sampler != "grid":
        study.sampler = make_sampler(recipe, resumed_at=len(study.trials))
    sampler, repeats = study.sampler, 0
    # Repeats cost nothing; in a small discrete space a few random draws in a row can miss the last
    # unmeasured configurations, so patience grows with the space.
    size = space_size(recipe)
    patience = max(MAX_REPEATS_IN_A_ROW, 4 * size) if size else MAX_REPEATS_IN_A_ROW
    if budget is not None:
        timeout = min(timeout or math.inf, budget.left())
    bar = Progress(study, target, timeout, progress)
    ran_here = 0
    try:
        # One trial at a time: a proposal measured before (or the baseline itself) is answered from its
        # figures and does not count; after one, the next trial is drawn at random, since TPE that keeps
        # proposing a configuration it already has (as it does when few trials are feasible) learns nothing.
        while finished(study) < target and repeats < patience:
            left = deadline - time.monotonic() if deadline else None
            if left is not None and left <= 0:
                break
            if budget is not None and ran_here and (why := _over_budget(study, runner, budget, target)):
                budget.cut(why)
                break
            random_next = repeats > 0 and recipe.search.sampler in ("tpe", "nsga2")
            study.sampler = optuna.samplers.RandomSampler(seed=recipe.search.seed + len(study.trials)) if random_next else sampler
            study.optimize(
                runner, n_trials=1, timeout=left, catch=(Exception,), callbacks=[bar.update, *callbacks], gc_after_trial=True
            )
            raise_if_stopped()  # a stop signal that landed in a finalizer was swallowed there
            if recipe.search.sampler != "grid":
                queue_combination(study, recipe)
            last = study.get_trials(deepcopy=False)[runner.last_trial] if runner.last_trial is not None else None
            repeats = repeats + 1 if last is not None and Measurement.of(last).repeat else 0
            ran_here += 1
    finally:
        study.sampler = sampler
        bar.close()
    if repeats >= patience:
        log.warning(
            "stopped after %d proposals in a row that were measured before: every configuration of the space "
            "the sampler reaches has been tried (%d measured)",
            repeats,
            finished(study),
        )


def _over_budget(study: optuna.Study, runner: TrialRunner, budget: TimeBudget, target: int) -> str | None:
    """Why the next trial is not started, or None: it (as long as this worker's median trial so far) and the
    confirmation after it (`budget.reserve`) would not both fit in the time left."""
    mine = [
        m.seconds
        for t in study.get_trials(deepcopy=False)
        if str(t.user_attrs.get(WORKER, "")) == worker_id() and (m := Measurement.of(t)).seconds and not m.repeat
    ]
    trial = statistics.median(mine) if mine else runner.baseline["seconds"]
    reserve, left = budget.reserve(study), budget.left()
    if trial + reserve <= left:
        return None
    return (
        f"trials: {finished(study)} of {target} run; the next (~{trial:.0f} s) and the confirmation "
        f"(~{reserve:.0f} s) would not fit the {max(0.0, left):.0f} s left"
    )


def queue_combination(study: optuna.Study, recipe: Recipe) -> dict[str, Any] | None:
    """Once the queued single-technique trials are measured, queue the within-budget techniques together
    (once per study): the combination a user would try next by hand, measured rather than assumed to add up."""
    if COMBINED in study.user_attrs or study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        return None
    sign = objective_sign(study)
    within = sorted(
        (
            t
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if (m := Measurement.of(t)).feasible and not m.repeat
        ),
        key=lambda t: sign * t.values[0],
    )
    merged = combined_params(recipe, [t.params for t in within])
    study.set_user_attr(COMBINED, merged or "nothing to combine: fewer than two within-budget techniques fit one chain")
    if merged is None:
        return None
    # Served as the cheapest was, and as the next cheapest trial whose techniques it holds was, when that
    # differs: how a chain is best served (batch, streams) depends on the chain (per-shape models ran best on
    # one stream alone, int8 on two), so the combination's serving is measured, not inherited from one trial.
    variants = [merged]
    for t in within:
        ran = set(running_passes(recipe, t.params))
        if ran and ran <= set(running_passes(recipe, merged)):
            served = merged | {k: t.params[k] for k in SERVING_KNOBS if k in t.params}
            if served not in variants:
                variants.append(served)
                break
    done = [t.params for t in study.get_trials(deepcopy=False)]
    for v in variants:
        if v not in done:
            study.enqueue_trial(v, skip_if_exists=True)
            log.info("queued the within-budget techniques together: %s", v)
    return merged if merged not in done else None


def _record_study_context(study: optuna.Study, recipe: Recipe, runner: TrialRunner) -> None:
    """What a report needs beyond the trials: the recipe, the baseline, each worker's machine.

    Measured values already stored are kept (the first worker's baseline is the study's), except a
    baseline timed under contention, which a quiet one replaces so that later restarts can reuse it;
    keys an older version did not record are filled in."""
    attrs = study.user_attrs
    if "recipe" not in attrs:
        study.set_user_attr("recipe", recipe.model_dump(mode="json"))
    if "provenance" not in attrs:  # the first worker's: the eval data hashed is the selection part
        study.set_user_attr("provenance", provenance(recipe, runner.bench.eval_data))
    stored = attrs.get("baseline", {})
    if timed_busy(stored) and not timed_busy(runner.baseline):
        stored = {}
    merged = runner.baseline | stored
    if merged != attrs.get("baseline"):
        study.set_user_attr("baseline", merged)
    if runner.sensitive and SENSITIVITY not in attrs:
        study.set_user_attr(SENSITIVITY, {str(i): r.to_json() for i, r in runner.sensitive.items()})
    study.set_user_attr(
        WORKER_PREFIX + worker_id(),
        {
            "baseline_seconds": runner.baseline["seconds"],
            "baseline": runner.baseline_origin,
            "system": runner.system,
            "catalog": recipe.hardware.catalog,  # this worker's trials are priced on it, against this baseline:
            "baseline_objective": runner.baseline["objective"],
            "baseline_by_batch": runner.baseline.get("by_batch"),
        },
    )


STATE_NAMES = {
    optuna.trial.TrialState.COMPLETE: "ok",
    optuna.trial.TrialState.FAIL: "failed",
    optuna.trial.TrialState.PRUNED: "pruned",
}


def leaderboard(study: optuna.Study, top: int | None = 10) -> list[dict[str, Any]]:
    """Finished trials: feasible first, best objective first; then infeasible, pruned and failed ones with their reason."""
    sign = objective_sign(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        if not counted(t):
            continue
        ok = t.state == optuna.trial.TrialState.COMPLETE
        m = Measurement.of(t)
        rows.append(
            {
                "trial": t.number,
                "state": STATE_NAMES[t.state],
                "feasible": bool(ok and m.feasible),
                "objective": t.values[0] if ok else None,
                "violation": m.violation if ok else None,
                "drop": m.drop,
                "passes": m.passes,
                "deployment": m.deployment,
                "reason": m.reason,
            }
        )
    order = {"ok": 0, "pruned": 1, "failed": 2}
    rows.sort(
        key=lambda r: (order[r["state"]], not r["feasible"], sign * r["objective"] if r["objective"] is not None else math.inf)
    )
    return rows if top is None else rows[:top]
