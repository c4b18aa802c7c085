"""Select, then confirm: the search's choice re-measured on data and runs it was not chosen on.

A search judges its trials on one part of the eval set (the selection part). Among many noisy
configurations it picks the cheapest whose interval happened to fit the budget, so its drop on that
part is the luckiest draw, not an estimate (the winner's curse). Here the cheapest within-budget
trials, in cost order, are rebuilt and measured on the held-out part (`search.confirm.share` of
data.eval, disjoint by hash), in the batches serving forms when their outputs depend on the batch.
The first that fits the budget is the answer. Each is tested at confidence 1-(1-c)/k for k
candidates (Bonferroni), so the chance that an accepted configuration is over budget stays within
1-c however many were tried.

The saving is then timed in alternating rounds of baseline and choice in this process (same
threads, warm), rounds in which something else used the cores are set aside, and the cost ratio
gets a bootstrap interval over rounds. The same rounds time the choice at the other serving settings
the search could pick (streams, and batch sizes when its outputs do not depend on the batch): a
search times each trial once, so between two settings a few percent apart its pick is a coin toss.
The choice is served at the setting these paired rounds show better, when the interval says so and
its outputs are right at every width there.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import optuna

from optimizer import ranges
from optimizer.bench import Bench, batches_text
from optimizer.budget import Budget, power_text
from optimizer.cache import ArtifactCache
from optimizer.chain import apply_chain, resolve_device
from optimizer.formatting import drop_text, ratio_text
from optimizer.measure import speed as speed_mod
from optimizer.measure.stats import Drop, ratio_interval
from optimizer.measure.width_check import WidthCheck, padded_text
from optimizer.measurement import Measurement
from optimizer.objectives import OBJECTIVES
from optimizer.passes import batch_dependent
from optimizer.recipe import MAIN_EVAL, Recipe
from optimizer.search_space import serving_ranges
from optimizer.time_budget import TimeBudget
from optimizer.trials import baseline_best_batch, machines, objective_sign, priced_on, search_dir

log = logging.getLogger(__name__)
SCHEMA = "costopt.confirmation/1"
STUDY_ATTR = "confirmation"
MAX_SPREAD = 0.25  # an interval wider than this share of its median: the saving is not established
SET_ASIDE_FACTOR = 3  # confirmation rebuilds at most this many times search.confirm.candidates
IDLE_BETWEEN_ARMS_S = 0.5  # runtime worker threads spin for a while after their last task
T = TypeVar("T")


@dataclass
class Attempt:
    """One candidate re-measured on the confirmation part."""

    trial: int
    passes: list[dict[str, Any]]
    deployment: dict[str, Any]
    selection_drop: Drop | None
    drop: Drop | None = None
    drops: dict[str, Drop] = field(default_factory=dict)
    drops_by_set: dict[str, Drop] = field(default_factory=dict)  # with data.extra_eval: the budget metric's drop per set
    quality: dict[str, float] = field(default_factory=dict)
    quality_batches: str = ""
    widths: WidthCheck | None = None  # checked before its quality
    padded_from: WidthCheck | None = None  # the first check, when its defects were served around (pad-widths)
    power: dict[str, Any] | None = None  # Budget.power: what this held-out set can certify, at this spread
    seconds: dict[str, float] = field(default_factory=dict)  # the width check's and the held-out quality's
    confirmed: bool = False
    error: str | None = None

    @property
    def status(self) -> str:
        if self.confirmed:
            return "confirmed"
        if self.error:
            return f"could not be rebuilt: {self.error}"
        if self.widths and self.widths.defects:
            return f"rejected: {self.widths.text()}"
        return "over budget here"


@dataclass
class Saving:
    """How many times better than one baseline arm the choice is, over alternating rounds."""

    against: str
    ratio: dict[str, float]
    baseline_value: float
    choice_value: float
    established: bool
    why: str


@dataclass
class Confirmation:
    budget: dict[str, Any]
    objective: str
    selection_examples: int
    confirmation_examples: int
    confidence_each: float
    attempts: list[Attempt] = field(default_factory=list)
    chosen: int | None = None  # the confirmed trial's number
    savings: list[Saving] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)  # per timed round: each arm's value and contention
    rounds_set_aside: int = 0
    rounds_stopped: str | None = None  # why the timing stopped before search.confirm.rounds (`_settled`)
    serving: dict[str, Any] = field(default_factory=dict)  # the serving decision (`_decide_serving`)
    # peak RSS of a process serving each alone (baseline, choice), as the choice is deployed
    memory_alone: dict[str, Any] = field(default_factory=dict)
    machine: str | None = None  # with workers on several machines: the entry whose candidates were confirmed
    seconds: dict[str, float] = field(default_factory=dict)  # the timing's and the memory-alone runs' wall time
    schema: str = SCHEMA

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def attempt(self) -> Attempt | None:
        return next((a for a in self.attempts if a.trial == self.chosen), None)

    @property
    def headline(self) -> Saving | None:
        """The one saving to lead with: against the baseline at its own best operating point, which
        `_time_saving` times last (the baseline at the recipe's batch first, when that is another batch)."""
        return self.savings[-1] if self.savings else None


def first_confirmed(candidates: Sequence[T], test: Callable[[T], bool | None], tests: int | None = None) -> tuple[T | None, int]:
    """The first candidate (in the order given: cheapest first) that passes `test`, and how many were tested.

    `test` returns None for a candidate set aside before any statistical test (it could not be rebuilt, or
    it is wrong at some input width): that does not count toward `tests`, the most quality tests to make
    (the number the confidence of each was corrected for)."""
    tested = 0
    for c in candidates:
        passed = test(c)
        if passed:
            return c, tested + 1
        if passed is not None:
            tested += 1
            if tests is not None and tested >= tests:
                break
    return None, tested


def ranked_candidates(study: optuna.Study, k: int | None = None, catalog: str | None = None) -> list[optuna.trial.FrozenTrial]:
    """The k best (default: all) within-budget trials on the selection part, one per distinct configuration;
    with `catalog`, among those priced on that entry."""
    sign = objective_sign(study)
    done = [
        (t, m)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if (m := Measurement.of(t)).feasible and m.same_as is None and (catalog is None or priced_on(t) == catalog)
    ]
    out, seen = [], set()
    for t, m in sorted(done, key=lambda tm: sign * tm[0].values[0]):
        key = json.dumps([m.passes, m.deployment], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out if k is None else out[:k]


def confirmation_confidence(budget: Budget, candidates: int) -> float:
    return 1 - (1 - budget.confidence) / max(1, candidates)


@dataclass
class _Arm:
    name: str
    cand: Any
    batch: int
    threads: int
    streams: int = 1
    values: list[float] = field(default_factory=list)
    misses: list[list[str]] = field(default_factory=list)  # per counted round: the latency targets it missed
    trial: int | None = None  # the trial whose chain it serves; None: the baseline
    rival: bool = False  # a near-tie's chain (`NEAR_TIE`), not the search's choice

    @property
    def label(self) -> str:
        setting = f"batch {self.batch} on {self.streams} stream(s)"
        return f"trial {self.trial} at {setting}" if self.rival else setting

    @property
    def late(self) -> bool:
        """Missed a latency target in most of its counted rounds (one round's p95 is noisy)."""
        return 2 * sum(bool(m) for m in self.misses) > len(self.misses)


def confirm_search(recipe: Recipe, study: optuna.Study, limit: TimeBudget | None = None) -> Confirmation:
    """Re-measure the search's best candidates on the held-out part; time the confirmed one against the baseline
    (within `limit`, the whole search's time budget, when given: see `_time_saving`)."""
    spec = recipe.search.confirm
    budget = recipe.budget
    objective = OBJECTIVES[recipe.search.objective]
    conf_each = confirmation_confidence(budget, spec.candidates)
    device = resolve_device(recipe.hardware.device)
    base_threads = speed_mod.set_threads(recipe.hardware.threads)
    bench = Bench.load_data(recipe, device, "confirm")
    result = Confirmation(budget.as_dict(), recipe.search.objective, bench.other_part, len(bench.eval_data), conf_each)
    # With workers on several machines, this one confirms (and times the saving of) its own machine's
    # candidates: re-timing another machine's choice here would price this machine's speed as that one's.
    here = recipe.hardware.catalog if len(machines(study)) > 1 else None
    # k of them get a quality test; set-aside ones do not count, but at most 3k are rebuilt (a rebuild failing for
    # every candidate, a missing extra say, would otherwise walk the whole study)
    candidates = ranked_candidates(study, SET_ASIDE_FACTOR * spec.candidates, here)
    result.machine = here
    if not candidates:
        return result
    bench.load_baseline()
    bench.baseline_quality()
    folder = search_dir(recipe.output_dir, study.study_name)
    cache = ArtifactCache(folder / "cache") if recipe.search.cache else None
    work = folder / "confirm"
    built: dict[int, Any] = {}

    def test(t: optuna.trial.FrozenTrial) -> bool | None:
        m = Measurement.of(t)
        dep = m.deployment
        attempt = Attempt(t.number, m.passes, dep, m.drop)
        result.attempts.append(attempt)
        speed_mod.set_threads(int(dep.get("threads") or base_threads))
        try:
            ctx = bench.context(work / f"trial-{t.number}")
            cand = apply_chain(recipe, attempt.passes, ctx, {}, cache=cache)
            t0 = time.perf_counter()
            if checked_in_trial(m, calibrated=bench.calibration is not None):
                attempt.widths = m.widths
            else:
                cand = _right_at_every_width(bench, cand, attempt, ctx)
                attempt.seconds["widths"] = round(time.perf_counter() - t0, 1)
                if cand is None:
                    return None
            t0 = time.perf_counter()
            serving = batch_dependent(attempt.passes)
            batch = int(dep.get("batch_size") or recipe.speed.batch_size) if serving else recipe.quality.batch_size
            attempt.quality_batches = batches_text(batch, sort=not serving)
            attempt.quality, attempt.drops = bench.judge(cand, conf_each, batch, sort=not serving)
            by_set = {MAIN_EVAL: attempt.drops} | bench.judge_extra(cand, conf_each, batch, sort=not serving)
            attempt.seconds["quality"] = round(time.perf_counter() - t0, 1)
        except Exception as e:  # a candidate that cannot be rebuilt here is not confirmed; the next one is tried
            attempt.error = f"{type(e).__name__}: {e}"[:300]
            log.warning("trial %d could not be re-measured: %s", t.number, attempt.error)
            return None
        finally:
            speed_mod.set_threads(base_threads)
        attempt.drop = attempt.drops[budget.metric]
        attempt.power = budget.power(attempt.drop)
        if len(by_set) > 1:
            attempt.drops_by_set = {n: ds[budget.metric] for n, ds in by_set.items()}
        attempt.confirmed = budget.worst(by_set)[1] <= 0  # within budget on every eval set
        if attempt.confirmed:
            built[t.number] = cand
        else:
            del cand
            gc.collect()
        return attempt.confirmed

    try:
        chosen, tested = first_confirmed(candidates, test, spec.candidates)
        if chosen is not None:
            result.chosen = chosen.number
            rivals = []
            for t in _near_ties(candidates, chosen, objective_sign(study))[: max(0, spec.candidates - tested)]:
                spent = sum(result.attempt.seconds.values()) if result.attempt else 0.0
                if not _room_for_near_tie(limit, spent, study):
                    limit.cut(f"trial {t.number}, within {NEAR_TIE:.0%} of the choice in the search, was not compared")
                    break
                if test(t):
                    rivals.append((t, built[t.number]))
            _time_saving(
                recipe, bench, chosen, built[chosen.number], study, result, base_threads, objective.direction, limit, rivals
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


NEAR_TIE = 0.10  # the search's single timing of one chain varied by 10.5% between runs (MiniLM, AVX2 EPYC)


def _room_for_near_tie(limit: TimeBudget | None, spent: float, study: optuna.Study) -> bool:
    """Whether a near-tie's held-out test fits the time budget: it takes about what the choice's took (`spent`;
    twice that, to be safe), and the timing after it cannot be cut below MIN_ROUNDS rounds, so both must fit."""
    return limit is None or limit.left() >= 2 * spent + limit.timing(study)


def _near_ties(
    candidates: list[optuna.trial.FrozenTrial], chosen: optuna.trial.FrozenTrial, sign: int
) -> list[optuna.trial.FrozenTrial]:
    """The candidates ranked after the choice whose search objective is within NEAR_TIE of its, with another
    chain: the search timed each once, so which of them is cheaper is for the paired rounds to say."""
    chain = Measurement.of(chosen).passes
    after = candidates[candidates.index(chosen) + 1 :]
    return [
        t
        for t in after
        if sign * t.values[0] <= sign * chosen.values[0] + NEAR_TIE * abs(chosen.values[0]) and Measurement.of(t).passes != chain
    ]


def _fitting(others: list[_Arm], warm: dict[str, float], fixed: list[_Arm], seconds: float) -> list[_Arm]:
    """The alternative arms whose MIN_ROUNDS rounds fit in `seconds` beside the `fixed` ones (baselines and the
    choice), by `warm` (one round's seconds per arm): a near-tie's chain first, as searched, then the choice's
    other settings, then the near-tie's."""
    order = sorted(others, key=lambda a: (not (a.rival and a.name == f"trial {a.trial}"), a.rival))
    used, kept = sum(warm[a.name] for a in fixed), []
    for a in order:
        if MIN_ROUNDS * (used + warm[a.name]) <= seconds:
            kept.append(a)
            used += warm[a.name]
    return [a for a in others if any(a is k for k in kept)]


def checked_in_trial(m: Measurement, calibrated: bool) -> bool:
    """Its trial checked this chain at every width, served as it is deployed, found no defect and served around
    none (a candidate compiled per shape: `Bench.measure`), on the same texts against the same baseline (the
    calibration set, which the search's and the confirmation's benches share when `calibrated`): the check would
    be repeated on the same artifact, rebuilt from the cache. It took 65 s of a 3-minute confirmation on MiniLM."""
    return m.widths is not None and m.widths.ok and m.padded is None and calibrated


def _right_at_every_width(bench: Bench, cand: Any, attempt: Attempt, ctx: Any) -> Any:
    """`cand` checked at every width it can be served at (shapes its trial was not judged at). Defective widths
    that have a clean wider neighbour are served at it (pad-widths, added to the attempt's chain) and every
    width is checked again; None when a defect remains."""
    batch, streams = attempt.deployment.get("batch_size"), attempt.deployment.get("streams")
    fixed, first, again, pad = bench.serve_around_defects(cand, ctx, batch, streams)
    attempt.widths = first
    if not first.ok:
        log.warning("trial %d: %s", attempt.trial, first.text())
    if again is not None:
        attempt.padded_from, attempt.widths = first, again
    if fixed is not None and pad is not None:
        attempt.passes = [*attempt.passes, pad]
    return fixed


def _time_saving(
    recipe: Recipe,
    bench: Bench,
    chosen: optuna.trial.FrozenTrial,
    cand: Any,
    study: optuna.Study,
    result: Confirmation,
    base_threads: int,
    direction: str,
    limit: TimeBudget | None = None,
    rivals: Sequence[tuple[optuna.trial.FrozenTrial, Any]] = (),
) -> None:
    """Time the baseline and the choice in alternating rounds, and the choice at its other serving settings,
    and each confirmed near-tie (`rivals`: trial and built candidate) at its serving settings too.
    Within `limit`: when MIN_ROUNDS rounds of every arm (timed by the warm-up) would not fit the time left,
    the other serving settings are not timed; the rounds stop when the next would not fit (after MIN_ROUNDS)."""
    spec = recipe.search.confirm
    m = Measurement.of(chosen)
    dep = m.deployment
    base_batch = recipe.speed.batch_size
    arms = [_Arm(f"baseline at batch {base_batch}", bench.timed_baseline, base_batch, base_threads, recipe.speed.streams)]
    best = baseline_best_batch(study.user_attrs.get("baseline") or {}, direction)
    if best is not None and best != base_batch:
        arms.append(_Arm(f"baseline at its best batch ({best})", bench.timed_baseline, best, base_threads, recipe.speed.streams))
    passes = result.attempt.passes if result.attempt else m.passes  # with the confirmation's pad-widths, if added
    timed = bench.timed(cand, passes, search_dir(recipe.output_dir, study.study_name) / "confirm-speed", {})
    searched = _Arm(
        "choice",
        timed,
        int(dep.get("batch_size") or base_batch),
        int(dep.get("threads") or base_threads),
        int(dep.get("streams") or recipe.speed.streams),
    )
    searched.trial = chosen.number
    others = _serving_alternatives(recipe, passes, searched)
    for t, rival_cand in rivals:  # another chain the search could not tell apart: timed alike, served if better
        rm = Measurement.of(t)
        attempt = next(a for a in result.attempts if a.trial == t.number)
        r_timed = bench.timed(rival_cand, attempt.passes, search_dir(recipe.output_dir, study.study_name) / "confirm-speed", {})
        r_dep = rm.deployment
        rival = _Arm(
            f"trial {t.number}",
            r_timed,
            int(r_dep.get("batch_size") or base_batch),
            int(r_dep.get("threads") or base_threads),
            int(r_dep.get("streams") or recipe.speed.streams),
            trial=t.number,
            rival=True,
        )
        others += [rival, *_serving_alternatives(recipe, attempt.passes, rival)]
    arms += [*others, searched]
    objective = OBJECTIVES[recipe.search.objective]

    def run(arm: _Arm, warmup: int) -> tuple[float, dict[str, Any], list[str]]:
        speed_mod.set_threads(arm.threads)
        try:
            time.sleep(IDLE_BETWEEN_ARMS_S)
            speed, cost = bench.speed_and_cost(arm.cand, arm.batch, warmup=warmup, repeats=1, streams=arm.streams)
        finally:
            speed_mod.set_threads(base_threads)
        return objective.read(speed, cost), speed["contention"], list(speed.get("latency_misses") or [])

    warm: dict[str, float] = {}
    not_compared = None
    for arm in arms:  # warm-up: first calls compile kernels and fill caches (and say how long an arm takes)
        t0 = time.perf_counter()
        run(arm, warmup=1)
        warm[arm.name] = (time.perf_counter() - t0) / 2  # a warm-up pass and a timed one: at most one round's arm
    # after the rounds: a width check when another serving setting wins, and two fresh processes serving the
    # baseline and the choice alone, each starting, loading its model and serving the texts once (9.5 s and
    # 6.2 s for MiniLM's on the AVX2 EPYC; taken here as a warm-up, which holds two passes, plus the start)
    check_s = (result.attempt.seconds.get("widths", 0.0) if result.attempt else 0.0) if others else 0.0
    alone = recipe.speed.memory_alone
    tail = check_s + (sum(2 * warm[a.name] + PROCESS_START_S for a in (arms[0], searched)) if alone else 0.0)
    if limit is not None and others:
        kept = _fitting(others, warm, [a for a in arms if a not in others], limit.left() - tail)
        dropped = [a for a in others if not any(a is k for k in kept)]
        if dropped:
            limit.cut(
                f"{len(dropped)} of {len(others)} other serving arms not timed ({', '.join(a.name for a in dropped)}): "
                f"{MIN_ROUNDS} rounds of every arm would not fit the {max(0.0, limit.left()):.0f} s left"
            )
            arms, others = [a for a in arms if not any(a is d for d in dropped)], kept
            not_compared = limit.cuts[-1] if not kept else None
    attempts, round_s, t_rounds = 0, sum(warm[a.name] for a in arms), time.perf_counter()
    while min(len(a.values) for a in arms) < spec.rounds and attempts < 2 * spec.rounds:
        if (settled := _settled(arms, searched, recipe.search.constraint.confidence, direction)) is not None:
            result.rounds_stopped = settled  # every interval already narrow: more rounds would not change a decision
            break
        counted = min(len(a.values) for a in arms)
        if limit is not None and counted >= MIN_ROUNDS and limit.left() < round_s + tail:
            result.rounds_stopped = f"stopped after {counted} rounds: the next would not fit the time budget"
            limit.cut(f"the saving's timing: {counted} rounds of at most {spec.rounds}")
            break
        order = arms[attempts % len(arms) :] + arms[: attempts % len(arms)]  # none always goes first
        attempts += 1
        t0 = time.perf_counter()
        measured = {a.name: run(a, warmup=0) for a in order}
        round_s = time.perf_counter() - t0
        busy = [n for n, (_, c, _) in measured.items() if c["busy"]]
        result.rounds.append(
            {n: {"value": v, "contention": c, "latency_misses": m} for n, (v, c, m) in measured.items()}
            | {"set_aside": bool(busy)}
        )
        if busy:  # timings under different contention do not compare: this round does not count
            result.rounds_set_aside += 1
            continue
        for a in arms:
            a.values.append(measured[a.name][0])
            a.misses.append(measured[a.name][2])
    choice = _decide_serving(bench, searched, others, result, recipe.search.constraint.confidence, direction)
    if choice.rival:  # a near-tie's chain was faster in the paired rounds: it is the confirmed choice
        result.chosen = choice.trial
    if not_compared is not None:
        result.serving["why"] = f"the searched setting, not compared with others: {not_compared}"
    result.seconds["timing"] = round(time.perf_counter() - t_rounds, 1)
    t0 = time.perf_counter()
    _memory_alone(
        bench, arms[0], choice, search_dir(recipe.output_dir, study.study_name) / "confirm-memory", result, base_threads
    )
    result.seconds["memory_alone"] = round(time.perf_counter() - t0, 1)
    for arm in arms[: len(arms) - len(others) - 1]:  # the baselines
        n = min(len(arm.values), len(choice.values))
        if n < MIN_ROUNDS:
            result.savings.append(
                Saving(arm.name, {}, float("nan"), float("nan"), False, f"only {n} rounds without contention: no figure")
            )
            continue
        # times better: baseline/choice for what is minimized (cost, latency), choice/baseline for throughput
        num, den = (arm.values[:n], choice.values[:n]) if direction == "minimize" else (choice.values[:n], arm.values[:n])
        r = ratio_interval(num, den, recipe.search.constraint.confidence)
        spread = (r["high"] - r["low"]) / r["median"]
        if r["low"] <= 1.0:
            why = f"not established: the interval {ratio_text(r)} includes 1.0x"
        elif spread > MAX_SPREAD:
            why = f"not established: the interval {ratio_text(r)} is wide (spread {spread:.0%} of the median)"
        else:
            why = f"established over {n} alternating rounds"
        if result.rounds_set_aside:
            why += f"; {result.rounds_set_aside} round(s) set aside because other processes used the cores"
        established = why.startswith("established")
        result.savings.append(
            Saving(arm.name, r, statistics.median(arm.values), statistics.median(choice.values), established, why)
        )


PROCESS_START_S = 3.0  # a fresh Python importing torch, OpenVINO and transformers: 2.7 s on the AVX2 EPYC
MIN_ROUNDS = 3  # a ratio's interval needs at least this many counted rounds (a time budget never stops sooner)
SETTLED_AFTER = 5  # rounds before the timing may stop early (search.confirm.rounds is the most)
SETTLED_SPREAD = 0.10  # ... when every arm's ratio to the choice is known within this share of its median (±5%)


def _settled(arms: list[_Arm], searched: _Arm, confidence: float, direction: str) -> str | None:
    """Why the alternating rounds may stop now, or None: after SETTLED_AFTER counted rounds, every arm's ratio
    interval to the searched setting is narrower than SETTLED_SPREAD of its median. The rule reads the
    intervals' widths, never where they lie, so stopping on it does not favour any arm."""
    n = min(len(a.values) for a in arms)
    if n < SETTLED_AFTER:
        return None
    for a in arms:
        if a is not searched:
            r = _better_than(a, searched, confidence, direction)
            if (r["high"] - r["low"]) / r["median"] > SETTLED_SPREAD:
                return None
    return f"stopped after {n} rounds: every arm's ratio to the choice was known within {SETTLED_SPREAD:.0%} of its median"


MAX_SERVING_ALTERNATIVES = 5  # each is one more timing per round


def _serving_alternatives(recipe: Recipe, passes: list[dict[str, Any]], searched: _Arm) -> list[_Arm]:
    """The choice at the other serving settings the search space holds, on the same threads: other stream
    counts, and other batch sizes unless its outputs depend on the batch (its quality was judged in the
    batches it was chosen with) or it is compiled per shape."""
    space = {k: ranges.values(rng) or [] for k, rng in serving_ranges(recipe).items()}
    # A candidate compiled per shape gets a copy per setting (Candidate.serving_copy), each with its own compiled
    # shapes (~16 per setting on MiniLM, each holding its repacked weights): other batch sizes only where that
    # memory is not multiplied.
    fixed_batch = batch_dependent(passes) or searched.cand.compiled_per_shape
    batches = [searched.batch] if fixed_batch else sorted(set(space.get("batch_size") or [searched.batch]))
    streams = sorted({s for s in space.get("streams") or [searched.streams] if 1 <= s <= searched.threads})
    out = [
        _Arm(
            f"{searched.name} at batch {b} on {s} stream(s)",
            searched.cand.serving_copy(),
            b,
            searched.threads,
            s,
            trial=searched.trial,
            rival=searched.rival,
        )
        for b in batches
        for s in streams
        if (b, s) != (searched.batch, searched.streams)
    ]
    return out[:MAX_SERVING_ALTERNATIVES]


def _serving(arm: _Arm) -> dict[str, int]:
    """A serving setting as deploy.yaml keeps it, with the trial whose chain it serves."""
    return {"batch_size": arm.batch, "streams": arm.streams, "threads": arm.threads} | (
        {"trial": arm.trial} if arm.trial is not None else {}
    )


def _better_than(arm: _Arm, searched: _Arm, confidence: float, direction: str) -> dict[str, float]:
    """How many times better `arm` served than `searched` over their paired rounds (over 1.0x: better)."""
    n = min(len(arm.values), len(searched.values))
    num, den = (searched.values[:n], arm.values[:n]) if direction == "minimize" else (arm.values[:n], searched.values[:n])
    return ratio_interval(num, den, confidence)


def _decide_serving(
    bench: Bench, searched: _Arm, others: list[_Arm], result: Confirmation, confidence: float, direction: str
) -> _Arm:
    """The arm to serve and quote: another serving setting when the paired rounds show it better (the
    interval of its ratio to the searched one excludes 1.0x) and its outputs are right at every width
    served that way; else the searched one. Recorded in result.serving, with every timed alternative's
    ratio to the searched setting and its interval (`better_x`)."""
    pick = min if direction == "minimize" else max
    timed = [a for a in (searched, *others) if len(a.values) >= MIN_ROUNDS]
    compared = searched in timed
    result.serving = {
        "searched": _serving(searched),
        "served": _serving(searched),
        "options": [
            _serving(a)
            | {"median": statistics.median(a.values), "meets_targets": not a.late}
            | ({"better_x": _better_than(a, searched, confidence, direction)} if compared and a is not searched else {})
            for a in timed
        ],
    }
    if not others or not compared:
        result.serving["why"] = "no other serving setting to compare" if not others else "too few rounds to compare"
        return searched
    # a setting that misses the recipe's latency targets is not served, however cheap (the searched one met them)
    timed = [a for a in timed if a is searched or not a.late]
    best = pick(timed, key=lambda a: statistics.median(a.values))
    if best is searched:
        runner_up = pick([a for a in timed if a is not searched], key=lambda a: statistics.median(a.values), default=None)
        result.serving["why"] = "the searched setting was the best of the paired rounds" + (
            ""
            if runner_up is None
            else f" (the next, {runner_up.label}: {ratio_text(_better_than(runner_up, searched, confidence, direction))})"
        )
        return searched
    r = _better_than(best, searched, confidence, direction)
    n = min(len(best.values), len(searched.values))
    result.serving["better_x"] = r
    label = best.label
    if r["low"] <= 1.0:
        result.serving["why"] = f"{label} was {ratio_text(r)} better, not established: kept the searched setting"
        return searched
    check = bench.check_widths(best.cand, best.batch, best.streams)
    result.serving["widths"] = check.to_json()
    if not check.ok:
        result.serving["why"] = f"{label} was {ratio_text(r)} better but {check.text()}: kept the searched setting"
        return searched
    result.serving["served"] = _serving(best)
    result.serving["why"] = f"{label} is {ratio_text(r)} better than the searched setting over {n} paired rounds"
    return best


def _memory_alone(bench: Bench, baseline: _Arm, choice: _Arm, folder: Path, result: Confirmation, base_threads: int) -> None:
    """What a replica of the baseline and of the choice needs, each served alone in a fresh process."""
    if not bench.recipe.speed.memory_alone:
        return
    try:
        for key, arm in (("baseline", baseline), ("choice", choice)):
            speed_mod.set_threads(arm.threads)
            artifact = None if arm is baseline else arm.cand.save(folder)
            result.memory_alone[key] = bench.memory_alone(arm.batch, arm.streams, artifact)
    except Exception as e:  # a figure the report can do without: the confirmation stands
        log.warning("memory served alone was not measured: %s", str(e)[:200])
    finally:
        speed_mod.set_threads(base_threads)
        shutil.rmtree(folder, ignore_errors=True)


def summary_lines(c: Confirmation, label: str = "saving") -> list[str]:
    """The confirmation in a few lines, for the command line and reports."""
    b = c.budget
    rel = b["relative"]
    lines = [
        f"confirmation on {c.confirmation_examples} held-out examples (the search selected on {c.selection_examples}); "
        f"each candidate tested at {c.confidence_each:.1%} confidence ({len(c.attempts)} tried)"
    ]
    for a in c.attempts:
        lines.append(
            f"  trial {a.trial}: {b['metric']} drop on selection {drop_text(a.selection_drop, rel)}, "
            f"on held-out {drop_text(a.drop, rel) if a.drop else '–'} ({a.quality_batches or 'not measured'}): {a.status}"
            + ("; chosen" if a.trial == c.chosen and sum(x.confirmed for x in c.attempts) > 1 else "")
        )
        if a.padded_from:
            lines.append(f"    {padded_text(a.passes[-1]['params']['widths'], a.padded_from)}")
        if a.power:
            lines.append(f"    {power_text(a.power, rel)}")
        if a.confirmed and a.widths:
            lines.append(f"    outputs at every input width: {a.widths.text()}")
        for name, d in a.drops_by_set.items():
            if name != MAIN_EVAL:
                lines.append(f"    eval set {name}: held-out drop {drop_text(d, rel)}")
    if c.serving.get("why"):
        lines.append(f"  serving: {c.serving['why']}")
    if c.rounds_stopped:
        lines.append(f"  timing: {c.rounds_stopped}")
    for s in c.savings:
        fig = ratio_text(s.ratio) if s.ratio else "–"
        lines.append(f"  {label} vs {s.against}: {fig}; {s.why}")
    return lines
