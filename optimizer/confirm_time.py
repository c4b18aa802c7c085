"""How long a search's confirmation is expected to take, from the study's own stage timings.

A time budget (`optimizer.time_budget`) stops starting trials when the next one and the confirmation
would not both fit. The confirmation re-measures the baseline and one candidate on the held-out part,
checks the candidate at every input width, and times every arm (the baseline at the recipe's batch and
at its best, the choice at each serving setting) in a warm-up and at least MIN_ROUNDS alternating rounds:
the reserve is what it needs to give its figures; more rounds run only while time is left.
Each part is predicted from what the trials measured: quality seconds scale with the examples, one arm
takes what one of a trial's speed repeats took, the baselines' arms as much longer as they are costlier.
"""

from __future__ import annotations

import statistics

import optuna

from optimizer import ranges
from optimizer.confirm import (
    IDLE_BETWEEN_ARMS_S,
    MAX_SERVING_ALTERNATIVES,
    MIN_ROUNDS,
    PROCESS_START_S,
    checked_in_trial,
    ranked_candidates,
)
from optimizer.measurement import Measurement
from optimizer.passes import batch_dependent
from optimizer.recipe import Recipe
from optimizer.search_space import serving_ranges
from optimizer.trials import baseline_best_batch, objective_sign


def expected_seconds(recipe: Recipe, study: optuna.Study) -> float:
    """The confirmation's expected wall time in seconds; 0 when nothing is within budget yet (there is
    nothing to confirm, and no trial's timings to predict from)."""
    return sum(_parts(recipe, study))


def timing_seconds(recipe: Recipe, study: optuna.Study) -> float:
    """What the confirmation needs after its held-out tests: the warm-up, MIN_ROUNDS alternating rounds and
    the two processes that measure memory served alone (a near-tie is tested only when this still fits)."""
    return _parts(recipe, study)[1]


def _parts(recipe: Recipe, study: optuna.Study) -> tuple[float, float]:
    """(the held-out tests and width check, the timing after them) in seconds."""
    share = recipe.search.confirm.share
    best = ranked_candidates(study, 1)
    if share <= 0 or not best:
        return 0.0, 0.0
    done = [
        m
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if (m := Measurement.of(t)).measured and not m.repeat and "quality" in m.timings and "speed" in m.timings
    ]
    if not done:  # trials recorded by a version without stage timings
        return 0.0, 0.0
    held_out = share / (1 - share)  # examples go to the parts by hash, in these proportions
    quality = statistics.median(m.timings["quality"] for m in done)
    baseline = study.user_attrs.get("baseline") or {}
    choice = Measurement.of(best[0])
    # A candidate compiled per shape was checked at every width in its trial; the confirmation reuses a clean
    # check (`confirm.checked_in_trial`), else repeats it. Other candidates are checked first in the confirmation,
    # taken here as long as a quality pass.
    per_shape = choice.widths is not None
    reused = checked_in_trial(choice, calibrated=recipe.data.calibration is not None)
    widths = 0.0 if reused else choice.timings.get("widths", quality)
    fixed = held_out * (baseline.get("quality_seconds", quality) + quality) + widths
    s = recipe.speed
    # a trial's speed stage: warm-up and repeats, then one pass in arrival order for the request latency
    arm = choice.timings.get("speed", statistics.median(m.timings["speed"] for m in done)) / (s.warmup + s.repeats + 1)
    baseline_arms = 1 + (baseline_best_batch(baseline) not in (None, s.batch_size))
    costlier = 1.0
    if objective_sign(study) > 0 and best[0].values and baseline.get("objective"):  # minimized cost: time follows it
        costlier = max(1.0, baseline["objective"] / best[0].values[0])
    space = {k: ranges.values(rng) or [] for k, rng in serving_ranges(recipe).items()}
    batches = 1 if batch_dependent(choice.passes) or per_shape else len(space.get("batch_size") or [1])
    settings = min(1 + MAX_SERVING_ALTERNATIVES, batches * len(space.get("streams") or [1]))
    per_round = baseline_arms * (arm * costlier + IDLE_BETWEEN_ARMS_S) + settings * (arm + IDLE_BETWEEN_ARMS_S)
    # two fresh processes, the baseline's and the choice's, each starting and serving the texts once, as
    # confirm._time_saving reserves them (two passes of its arm each)
    alone = 2 * (arm * costlier + arm) + 2 * PROCESS_START_S if s.memory_alone else 0.0
    return fixed, (2 + MIN_ROUNDS) * per_round + alone  # a warm-up of two passes, then the fewest rounds it may stop at
