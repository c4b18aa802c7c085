"""Baseline + passes + measurement -> TrialResult (plain JSON).

The baseline and the compressed candidate are measured in the same process, on the same texts,
with the same thread count, so their figures compare.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psutil
import torch

from optimizer import gguf_file, tasks
from optimizer.cache import ArtifactCache, chain_key
from optimizer.data import Dataset, DataSource, load_dataset
from optimizer.errors import UserError
from optimizer.measure import speed as speed_mod
from optimizer.measure.alone import serving_memory
from optimizer.measure.contention import Watch
from optimizer.measure.quality import QualityEvaluator
from optimizer.measure.stats import MetricValues, paired_bootstrap
from optimizer.measure.system import fingerprint
from optimizer.measure.widths import WidthCheck, check_widths, padded_text
from optimizer.measurement import RUN_SCHEMAS, Broken, Measurement, Pruned
from optimizer.metrics import broken_by
from optimizer.passes import PassContext, batch_dependent, build_pass, check_chain, compute_dtype_of, runtime_of
from optimizer.ranges import parse_range
from optimizer.recipe import AUTO_CATALOG, MAIN_EVAL, Recipe, speed_model_note
from optimizer.results import ensure_writable, write_json_atomic
from optimizer.runtimes import Candidate, folder_size, load_candidate
from optimizer.runtimes.base import WEIGHT_SUFFIXES

log = logging.getLogger(__name__)
SCHEMA = RUN_SCHEMAS[-1]  # 2: the candidate is a measurement.Measurement, its drops inside it


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


def footprint(cand: Candidate, directory: Path) -> dict[str, Any]:
    """Parameters, non-zeros and the on-disk size of a saved, reloadable artifact."""
    params, nonzero = cand.parameter_counts()
    folder = cand.save(directory)
    weights = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    return {
        "parameters": params,
        "nonzero_parameters": nonzero,
        "disk_bytes": folder_size(folder),
        "weight_bytes": weights,
        "artifact": str(folder),
    }


def provenance(recipe: Recipe, data: Dataset) -> dict[str, Any]:
    """What a result came from: the command, costopt's version, and hashes of the recipe and of the eval data."""
    import hashlib
    import json
    import sys

    from optimizer.measure.system import source_version

    def sha(obj: Any) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]

    gguf = gguf_file.find_gguf(recipe.model.source)  # the baseline's file and quant type, when it came from one
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "costopt": source_version(),
        "recipe_sha256": sha(recipe.model_dump(mode="json")),
        "eval_sha256": sha([data.kind, data.all_texts(), getattr(data, "labels", None)]),
        "eval_examples": len(data),
        "model_file": gguf_file.describe(gguf) if gguf else None,
        "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def measure_speed(
    cand: Candidate,
    recipe: Recipe,
    data: Dataset,
    batch_size: int | None = None,
    warmup: int | None = None,
    repeats: int | None = None,
    streams: int | None = None,
    request_latency: bool = False,
) -> dict[str, Any]:
    """The recipe's speed benchmark, with what else used the CPU meanwhile (`contention`);
    `request_latency`: encoders' latency of requests as served too (one more pass)."""
    s = recipe.speed
    batch = batch_size or s.batch_size
    streams = streams or s.streams
    if streams > 1 and recipe.task == "causal-lm":
        raise UserError("speed.streams applies to encoders and classifiers, not to causal LMs", "set streams: 1")
    if streams > speed_mod.threads():
        raise UserError(
            f"{streams} serving streams on {speed_mod.threads()} threads: each stream needs a thread of its own",
            "give at most as many streams as threads",
        )
    warmup = s.warmup if warmup is None else warmup
    repeats = repeats or s.repeats
    texts = tasks.prompted(cand, data).interleaved()  # requests as served carry the model's prompts
    with Watch() as watch:
        if recipe.task == "causal-lm":
            out = speed_mod.bench_causal_lm(cand, texts, batch, s.prompt_tokens, s.new_tokens, warmup, repeats)
        else:
            out = speed_mod.bench_encoder(cand, texts[: s.texts], batch, warmup, repeats, streams, request_latency)
    out["contention"] = watch.result.as_dict()
    return out


def replicas_on(entry: Any, threads: int | None) -> int:
    """Replicas of a `threads`-thread process the catalog entry holds: a run on fewer threads than the
    instance has vCPUs leaves room for more replicas on it (assumed to scale linearly; said where priced)."""
    return max(1, entry.vcpus // threads) if entry.vcpus and threads else 1


def measure_requests(
    cand: Candidate, recipe: Recipe, data: Dataset, batch_size: int, warmup: int | None, repeats: int | None
) -> dict[str, Any]:
    """speed.requests served at once by the candidate's engine (measure/requests.py), priced per 1M
    tokens of that mix (input and output together) on the recipe's catalog entry."""
    from optimizer.measure.requests import bench_requests

    s = recipe.speed
    texts = tasks.prompted(cand, data).interleaved()
    with Watch() as watch:
        out = bench_requests(
            cand,
            texts,
            s.requests,
            batch_size,
            s.prompt_tokens,
            s.new_tokens,
            s.warmup if warmup is None else warmup,
            repeats or s.repeats,
            recipe.data.seed,
            s.arrival_rate,
        )
    out["contention"] = watch.result.as_dict()
    out["input_share"] = out["prompt_tokens"]["total"] / (out["prompt_tokens"]["total"] + out["new_tokens"]["total"])
    if recipe.hardware.catalog:
        import cost

        hw = recipe.hardware
        entry = cost.load_catalog(hw.catalog_file).get(hw.catalog)
        tps = out["tokens_per_s"]["median"] * replicas_on(entry, out["threads"])
        out["usd_per_m_tokens"] = cost.usd_per_million(tps, entry.hourly_usd(hw.pricing), hw.utilization)
    return out


def price_speed(recipe: Recipe, speed: dict[str, Any]) -> dict[str, Any] | None:
    """$ per 1M tokens on the recipe's catalog entry from measured tokens/s (None without an entry)."""
    if not recipe.hardware.catalog:
        return None
    import cost

    hw = recipe.hardware
    entry = cost.load_catalog(hw.catalog_file).get(hw.catalog)
    replicas = replicas_on(entry, speed.get("threads"))
    out_tps = speed["output_tokens_per_s"]["median"] * replicas if "output_tokens_per_s" in speed else None
    p = cost.token_price(entry, speed["input_tokens_per_s"]["median"] * replicas, out_tps, hw.utilization, hw.pricing)
    share = recipe.workload.input_share if recipe.workload else (1.0 if out_tps is None else 0.5)
    note = f"this machine's measured tokens/s priced at {entry.name}'s rate"
    if replicas > 1:
        note += (
            f"; estimate: {replicas} replicas of {speed['threads']} threads fill its {entry.vcpus} vCPUs, "
            "assumed to scale linearly"
        )
    res = asdict(p) | {"input_share": share, "blended_usd_per_m": p.blended_usd_per_m(share), "replicas": replicas, "note": note}
    if recipe.workload:
        res["monthly_usd"] = cost.monthly_cost(p, recipe.workload)
    return res


def _latency_ratios(recipe: Recipe, speed: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """(measured, target) of each causal-LM latency target the recipe states."""
    s = recipe.speed
    if speed.get("kind") != "causal-lm":
        return {}
    out = {}
    if s.ttft_p95_s is not None:
        out["ttft"] = (speed["time_to_first_token_p95_s"], s.ttft_p95_s)
    if s.tpot_p95_s is not None:
        out["tpot"] = (speed["token_latency_s"]["p95"], s.tpot_p95_s)
    return out


def latency_misses(recipe: Recipe, speed: dict[str, Any]) -> list[str]:
    """The recipe's causal-LM latency targets this measurement misses, in words (empty: all met)."""
    text = {
        "ttft": lambda got, want: f"time to first token p95 {got:.3f} s > {want:g} s",
        "tpot": lambda got, want: f"time per output token p95 {1e3 * got:.2f} ms > {1e3 * want:g} ms",
    }
    return [text[k](got, want) for k, (got, want) in _latency_ratios(recipe, speed).items() if got > want]


def operating_point(
    recipe: Recipe, points: list[tuple[dict[str, Any], dict[str, Any] | None]]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Of the measured batch sizes, the one to serve at: the cheapest (blended $ per 1M tokens, else the
    fastest decode) that meets the latency targets; when none does, the one that misses them least.
    The returned speed lists every point (`operating_points`) and what the chosen one misses."""

    def price(p: tuple[dict[str, Any], dict[str, Any] | None]) -> float:
        speed, cost = p
        if cost is not None:
            return cost["blended_usd_per_m"]
        key = "output_tokens_per_s" if "output_tokens_per_s" in speed else "input_tokens_per_s"
        return 1.0 / speed[key]["median"]

    def overshoot(p: tuple[dict[str, Any], dict[str, Any] | None]) -> float:
        return max((got / want for got, want in _latency_ratios(recipe, p[0]).values()), default=1.0)

    met = [p for p in points if not latency_misses(recipe, p[0])]
    speed, cost = min(met, key=price) if met else min(points, key=overshoot)
    speed["latency_misses"] = latency_misses(recipe, speed)
    if len(points) > 1:
        speed["operating_points"] = [
            {
                "batch_size": sp["batch_size"],
                "input_tokens_per_s": sp["input_tokens_per_s"]["median"],
                "output_tokens_per_s": sp["output_tokens_per_s"]["median"],
                "time_to_first_token_p95_s": sp["time_to_first_token_p95_s"],
                "time_per_output_token_p95_s": sp["token_latency_s"]["p95"],
                "meets_targets": not latency_misses(recipe, sp),
                "input_usd_per_m": (c or {}).get("input_usd_per_m"),
                "output_usd_per_m": (c or {}).get("output_usd_per_m"),
                "blended_usd_per_m": (c or {}).get("blended_usd_per_m"),
            }
            for sp, c in points
        ]
    return speed, cost


def batch_between(recipe: Recipe, speeds: list[dict[str, Any]]) -> int | None:
    """The middle power of two between the largest measured batch that meets the latency targets and the
    smallest larger one measured (which misses them); None when no point meets them or none is left between."""
    met = [sp["batch_size"] for sp in speeds if not latency_misses(recipe, sp)]
    if not met:
        return None
    lo = max(met)
    hi = min((sp["batch_size"] for sp in speeds if sp["batch_size"] > lo), default=None)
    if hi is None:
        return None
    between = [2**k for k in range(hi.bit_length()) if lo < 2**k < hi]
    return between[len(between) // 2] if between else None


def timed_recipe(recipe: Recipe) -> Recipe:
    """The recipe whose model is timed: speed.model in place of model.source when the recipe sets one."""
    if recipe.speed.model is None:
        return recipe
    return recipe.model_copy(update={"model": recipe.speed.model})


EvalPart = Literal["all", "select", "confirm"]


def eval_part(recipe: Recipe, part: EvalPart = "all", source: DataSource | None = None) -> Dataset:
    """An eval set (data.eval unless `source` is given), or one of its two disjoint parts: a search
    selects on one and confirms on the other."""
    return _eval_parts(recipe, part, source)[0]


def _eval_parts(recipe: Recipe, part: EvalPart, source: DataSource | None = None) -> tuple[Dataset, int]:
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


@contextlib.contextmanager
def _batched(evaluator: QualityEvaluator, batch_size: int | None, sort: bool = True) -> Iterator[None]:
    saved = evaluator.batch_size, evaluator.sort
    evaluator.batch_size, evaluator.sort = batch_size or saved[0], sort
    try:
        yield
    finally:
        evaluator.batch_size, evaluator.sort = saved


def batches_text(batch_size: int, sort: bool) -> str:
    """How quality was measured, for results: the batches matter to batch-dependent outputs."""
    if sort:
        return f"length-sorted batches of {batch_size}"
    return f"serving batches: {batch_size} at a time in arrival order (the outputs depend on the batch)"


def _values(metrics: dict[str, MetricValues]) -> dict[str, float]:
    return {k: v.value for k, v in metrics.items()}


@dataclass
class Trial:
    """Everything one pipeline run produced; `to_json` is the TrialResult."""

    recipe: Recipe
    passes: list[dict[str, Any]]
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    status: str = "running"
    error: str | None = None
    baseline: dict[str, Any] = field(default_factory=dict)
    candidate: dict[str, Any] | None = None  # Measurement.to_json()
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=fingerprint)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "recipe": self.recipe.name,
            "task": self.recipe.task,
            "model": self.recipe.model.source,
            "status": self.status,
            "error": self.error,
            "passes": self.passes,
            "primary_metric": self.recipe.primary_metric,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "notes": self.notes,
            "timings": self.timings,
            "started": self.started,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "system": self.system,
            "config": self.recipe.model_dump(mode="json"),
            **self.extra,
        }


class _Stage:
    def __init__(self, trial: Trial, name: str, bar: Any) -> None:
        self.trial, self.name, self.bar = trial, name, bar

    def __enter__(self) -> None:
        self.bar.set_description(self.name)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.trial.timings[self.name] = round(time.perf_counter() - self.t0, 3)
        self.bar.update(1)


@dataclass
class Bench:
    """What every candidate of one recipe is measured against, loaded and measured once per process:
    the data, the evaluator (which caches the baseline's outputs), the baseline and its figures."""

    recipe: Recipe
    device: str
    eval_data: Dataset
    calibration: Dataset | None
    train: Dataset | None
    evaluator: QualityEvaluator
    baseline: Candidate | None = None
    timed_baseline: Candidate | None = None  # the baseline whose speed is measured: speed.model's, else `baseline`
    quality: dict[str, MetricValues] = field(default_factory=dict)  # per example, for paired bootstraps
    other_part: int = 0  # examples in the eval set's other part (selection <-> confirmation)
    # data.extra_eval's sets: evaluator and the baseline's per-example values, by name
    extra: dict[str, tuple[QualityEvaluator, dict[str, MetricValues]]] = field(default_factory=dict)
    screen_evaluator: QualityEvaluator | None = None
    screen_quality: dict[str, MetricValues] = field(default_factory=dict)

    @functools.cached_property
    def timed_config(self) -> Any:
        """The timed model's transformers config (its shape: layers, KV heads, vocabulary), read once."""
        from transformers import AutoConfig

        assert self.timed_baseline is not None
        return AutoConfig.from_pretrained(self.timed_baseline.info.source)

    @classmethod
    def load_data(cls, recipe: Recipe, device: str, part: EvalPart = "all") -> Bench:
        """`part`: the whole eval set, or the search's share of it ("select") or the held-out rest ("confirm")."""
        eval_data, other = _eval_parts(recipe, part)
        calib, train = pass_data(recipe)
        q = recipe.quality
        evaluator = QualityEvaluator(recipe.task, eval_data, recipe.metrics, q.batch_size)
        bench = cls(recipe, device, eval_data, calib, train, evaluator, other_part=other)
        for name, src in recipe.data.extra_eval.items():
            data = eval_part(recipe, part, src)
            bench.extra[name] = (QualityEvaluator(recipe.task, data, recipe.metrics, q.batch_size), {})
        return bench

    def load_baseline(self) -> Candidate:
        self.baseline = load_candidate(self.recipe.model, self.recipe.task, self.device)
        speed_model = self.recipe.speed.model
        self.timed_baseline = self.baseline if speed_model is None else load_candidate(speed_model, self.recipe.task, self.device)
        return self.baseline

    def timed(
        self,
        cand: Candidate,
        passes: list[dict[str, Any]],
        work_dir: Path,
        timings: dict[str, float],
        cache: ArtifactCache | None = None,
    ) -> Candidate:
        """The candidate whose speed is measured: `cand` itself, or the same passes applied to speed.model."""
        if self.recipe.speed.model is None:
            return cand
        recipe = timed_recipe(self.recipe)
        built: dict[str, float] = {}
        ctx = pass_context(recipe, self.device, work_dir, self.calibration, self.train)
        timed = apply_chain(recipe, passes, ctx, built, cache=cache)
        timings.update({f"speed.model {k}": v for k, v in built.items()})
        cand.notes.extend(f"speed.model: {n}" for n in timed.notes)
        return timed

    def baseline_quality(self) -> dict[str, float]:
        assert self.baseline is not None
        self.quality = self.evaluator.evaluate(self.baseline)
        for name, (ev, _) in self.extra.items():
            self.extra[name] = (ev, ev.evaluate(self.baseline))
        return _values(self.quality)

    def judge_extra(
        self, cand: Candidate, confidence: float | None = None, batch_size: int | None = None, sort: bool = True
    ) -> dict[str, dict[str, Any]]:
        """Each of data.extra_eval's sets: the candidate's drops there, by metric (as `judge` gives them)."""
        out = {}
        for name, (ev, base) in self.extra.items():
            with _batched(ev, batch_size, sort):
                values = ev.evaluate(cand, reference=self.baseline)
            out[name] = self._drops(base, values, confidence)
        return out

    def check_widths(self, cand: Candidate, batch: int | None = None, streams: int | None = None) -> WidthCheck:
        """`cand` against the baseline at every input width it can be served at (measure.widths), served
        as deployed: `batch` rows (default: the recipe's speed batch) on `streams` streams."""
        assert self.baseline is not None
        texts = (self.calibration or self.eval_data).all_texts()
        return check_widths(
            cand, self.baseline, texts, batch or self.recipe.speed.batch_size, streams or self.recipe.speed.streams
        )

    def serve_around_defects(
        self, cand: Candidate, ctx: PassContext, batch: int | None = None, streams: int | None = None
    ) -> tuple[Candidate | None, WidthCheck, WidthCheck | None, dict[str, Any] | None]:
        """`cand` checked at every width it is served at; defective widths that have a clean wider neighbour
        are served at it (pad-widths, on encoders of the graph runtimes) and every width is checked again.
        Returns (the candidate to serve, None when a defect remains; the first check; the check after the
        repair, None when none was tried; the pad-widths pass added, None when none was)."""
        from optimizer.passes.widths import PadWidths, around

        first = self.check_widths(cand, batch, streams)
        if first.ok:
            return cand, first, None, None
        fix = around([int(d["width"]) for d in first.defects], first.widths)
        if fix is None or cand.runtime not in PadWidths.runtimes_in or cand.task not in PadWidths.tasks:
            return None, first, None, None
        pad = {"name": PadWidths.name, "params": {"widths": fix}}
        cand = build_pass(pad["name"], pad["params"]).apply(cand, ctx)
        again = self.check_widths(cand, batch, streams)
        return (cand if again.ok else None), first, again, pad

    def context(self, work_dir: Path) -> PassContext:
        return pass_context(self.recipe, self.device, work_dir, self.calibration, self.train)

    def judge(
        self, cand: Candidate, confidence: float | None = None, batch_size: int | None = None, sort: bool = True
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """A candidate's metric values and each metric's drop from the baseline, with its interval.

        `batch_size` and `sort=False` evaluate the candidate in the batches it will serve in: dynamic
        quantization scales activations per batch, so its outputs depend on the batch."""
        with _batched(self.evaluator, batch_size, sort):
            values = self.evaluator.evaluate(cand, reference=self.baseline)
        return _values(values), self._drops(self.quality, values, confidence)

    def screen(
        self, cand: Candidate, examples: int, confidence: float | None = None, batch_size: int | None = None, sort: bool = True
    ) -> dict[str, Any] | None:
        """Drops on a seeded subset of the eval set, a cheap first look before the full evaluation.

        None when the eval set is under twice that size (the screen would not save time)."""
        if len(self.eval_data) < 2 * examples:
            return None
        if self.screen_evaluator is None:
            sub = self.eval_data.subset(examples, self.recipe.data.seed)
            self.screen_evaluator = QualityEvaluator(self.recipe.task, sub, self.recipe.metrics, self.recipe.quality.batch_size)
            self.screen_quality = self.screen_evaluator.evaluate(self.baseline)
        with _batched(self.screen_evaluator, batch_size, sort):
            values = self.screen_evaluator.evaluate(cand, reference=self.baseline)
        return self._drops(self.screen_quality, values, confidence)

    def _drops(self, base: dict[str, MetricValues], values: dict[str, MetricValues], confidence: float | None) -> dict[str, Any]:
        q = self.recipe.quality
        return {
            m: asdict(paired_bootstrap(base[m], values[m], q.bootstrap, confidence or q.confidence, self.recipe.data.seed))
            for m in values
        }

    def speed_and_cost(
        self,
        cand: Candidate,
        batch_size: int | None = None,
        warmup: int | None = None,
        repeats: int | None = None,
        streams: int | None = None,
        request_latency: bool = False,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Speed and its price; a causal LM with speed.batch_sizes or speed.max_batch_size and no batch given
        is measured at each size and served at its operating point (`operating_point`). With max_batch_size the
        sweep goes on doubling (`next_batch` says when it stops), then measures the powers of two between the
        largest batch that meets the targets and the first that misses them (`batch_between`)."""
        s = self.recipe.speed
        sweep = self.recipe.task == "causal-lm" and batch_size is None and (s.batch_sizes or s.max_batch_size)
        sizes = list(s.batch_sizes or [s.batch_size]) if sweep else [batch_size]
        # which model these figures belong to (counted once: a graph's count reads the whole file)
        timed = {"source": s.model.source, "parameters": cand.parameter_counts()[0]} if s.model is not None else None
        points, stopped, refined = [], None, False
        while sizes:
            b = sizes.pop(0)
            try:
                speed = measure_speed(cand, self.recipe, self.eval_data, b, warmup, repeats, streams, request_latency)
            except torch.OutOfMemoryError:  # the sweep's memory limit on a GPU (a CPU is checked before: next_batch)
                if not points:
                    raise
                torch.cuda.empty_cache()
                stopped = f"batch {b} ran out of device memory"
                break
            if timed is not None:
                speed["model"] = dict(timed)
            points.append((speed, price_speed(self.recipe, speed)))
            if sweep and s.max_batch_size and not sizes:
                nxt = None
                if stopped is None:  # still doubling
                    nxt, stopped = self.next_batch(cand, speed)
                if nxt is None:
                    nxt = batch_between(self.recipe, [sp for sp, _ in points])
                    refined = refined or nxt is not None
                sizes += [nxt] if nxt else []
        if refined:
            stopped = f"{stopped}; then refined by powers of two below the first batch that misses them"
        speed, cost = operating_point(self.recipe, points)
        if sweep and s.max_batch_size:
            speed["sweep_stopped"] = stopped
        if s.requests and self.recipe.task == "causal-lm":
            speed["served"] = measure_requests(cand, self.recipe, self.eval_data, speed["batch_size"], warmup, repeats)
        return speed, cost

    def next_batch(self, cand: Candidate, speed: dict[str, Any]) -> tuple[int | None, str | None]:
        """The sweep's next batch after the point `speed` (twice its batch), or None and why it stops: the point
        misses a latency target (a larger batch only waits longer), or the next would pass speed.max_batch_size,
        or, off the GPU, its KV cache and prompt logits would not fit in 80% of the free memory (a CPU process
        over it is killed, not told; a GPU's out-of-memory error is caught where it is measured)."""
        from optimizer.measure.roofline import kv_bytes_per_token

        s, b = self.recipe.speed, speed["batch_size"]
        misses = latency_misses(self.recipe, speed)
        if misses:
            return None, f"batch {b} misses the latency targets ({'; '.join(misses)})"
        if 2 * b > (s.max_batch_size or 0):
            return None, f"batch {b} is the last under speed.max_batch_size ({s.max_batch_size})"
        if cand.device.startswith("cuda") and cand.runtime == "torch":
            return 2 * b, None
        config = self.timed_config
        per_sequence = (s.prompt_tokens + s.new_tokens) * kv_bytes_per_token(config, 4) + s.prompt_tokens * config.vocab_size * 4
        need, free = 2 * b * per_sequence, psutil.virtual_memory().available  # the cache at fp32: an upper bound
        if need > 0.8 * free:
            return (
                None,
                f"batch {2 * b} would need {need / 2**30:.1f} GiB for its KV cache and logits, {free / 2**30:.1f} GiB free",
            )
        return 2 * b, None

    def roofline(
        self, speed: dict[str, Any], fp: dict[str, Any], passes: list[dict[str, Any]], timed_weight_bytes: int | None = None
    ) -> dict[str, Any] | None:
        """A causal LM's measured speed against its roofline on the recipe's catalog entry and on this
        machine's measured bounds (None for encoders or without an entry). With speed.model, the timed
        model's weight bytes are `timed_weight_bytes` (`Candidate.weight_bytes`) where it could tell, else its
        parameters at the bytes per parameter the chain gave the quality model (a small model's chain may
        leave more of it unquantized than the timed shape's)."""
        if self.recipe.task != "causal-lm" or not self.recipe.hardware.catalog:
            return None
        import cost
        from optimizer.measure.machine_bounds import machine_bounds
        from optimizer.measure.roofline import kv_bytes_per_token, llm_roofline

        entry = cost.load_catalog(self.recipe.hardware.catalog_file).get(self.recipe.hardware.catalog)
        dtype = compute_dtype_of(passes)
        # ONNX Runtime and OpenVINO chains run on the CPU whatever the recipe's device
        machine = machine_bounds(self.device if runtime_of(passes) == "torch" else "cpu", dtype)
        params = (speed.get("model") or {}).get("parameters") or fp["parameters"]
        weight_bytes = timed_weight_bytes or fp["weight_bytes"] * params / fp["parameters"]
        config = self.timed_config
        kv = kv_bytes_per_token(config, 2 if dtype in ("bf16", "fp16") else 4)
        for p in speed.get("operating_points", []):  # each batch size's shares too (batch 1: the bandwidth check)
            at = {k: speed[k] for k in ("prompt_tokens", "new_tokens")} | {
                "batch_size": p["batch_size"],
                "input_tokens_per_s": {"median": p["input_tokens_per_s"]},
                "output_tokens_per_s": {"median": p["output_tokens_per_s"]},
            }
            r = llm_roofline(at, entry, params, int(weight_bytes), kv, dtype, machine)
            p["decode_fraction"], p["prefill_fraction"] = r["decode_fraction"], r["prefill_fraction"]
            p["machine_decode_fraction"] = r["machine"]["decode_fraction"]
            p["machine_prefill_fraction"] = r["machine"]["prefill_fraction"]
        return llm_roofline(speed, entry, params, int(weight_bytes), kv, dtype, machine)

    def measure(
        self,
        cand: Candidate,
        m: Measurement,
        work: Path,
        *,
        artifact: Path | None = None,
        confidence: float | None = None,
        screen_examples: int = 0,
        stop_early: bool = False,
        widths: bool = False,
        cache: ArtifactCache | None = None,
        save: Callable[[Measurement], None] = lambda m: None,
    ) -> Measurement:
        """Fill `m` for `cand`, built from m.passes and served as m.deployment says: quality against the
        baseline on every eval set, then speed and price, then the saved artifact's footprint (kept at
        `artifact`, else only measured). `save` runs after each stage, so a failure keeps what was measured.

        Outputs that depend on the batch are judged in the batches serving forms. With `stop_early`
        (a search) it raises Pruned when the screen on `screen_examples` shows the drop is surely over
        budget, or when serving this way misses the recipe's latency targets.
        With `widths`, its outputs are first checked at every input width it can be served at."""
        budget = self.recipe.budget
        batch, streams = m.deployment.get("batch_size"), m.deployment.get("streams")
        serving = batch_dependent(m.passes)
        judged_in = batch or (self.recipe.speed.batch_size if serving else None)
        m.quality_batches = batches_text(judged_in or self.recipe.quality.batch_size, sort=not serving)
        if stop_early and cand.compiled_per_shape:
            # A search trial of a candidate compiled per shape is judged as it would be deployed: a runtime
            # defect there spans a whole width bucket (8 widths of OpenVINO's bf16 int8 MiniLM), which the
            # confirmation serves around, so judging the trial with it would reject what would be served.
            # (Other candidates are checked in the confirmation only: a defect there is one width.)
            fixed, first, again, pad = self.serve_around_defects(cand, self.context(work / "widths"), batch, streams)
            check = again or first
            if pad is not None:
                cand.notes.append(f"judged as {padded_text(pad['params']['widths'], first.as_dict())}")
            cand = fixed or cand
            m.widths = check.as_dict()
            save(m)
        elif widths:
            check = self.check_widths(cand, batch, streams)
            m.widths = check.as_dict()
            cand.notes.append(f"width check: {check.text()}")
            save(m)
        if stop_early and screen_examples:
            screen = self.screen(cand, screen_examples, confidence, judged_in, sort=not serving)
            if screen is not None:
                m.screen = screen[m.metric]
                save(m)
                if budget.surely_over(m.screen):
                    low = budget.low(m.screen)
                    raise Pruned(
                        f"screened on {screen_examples} examples: the {m.metric} drop is at least "
                        f"{budget.amount(low)} at {budget.confidence:.0%}, over the {budget.amount(budget.max_drop)} budget",
                        constraint=low - budget.max_drop,
                    )
        m.quality, m.drops = self.judge(cand, confidence, judged_in, sort=not serving)
        if self.extra:  # data.extra_eval: each set's drops; the budget must hold on each
            m.drops_by_set = {MAIN_EVAL: m.drops} | self.judge_extra(cand, confidence, judged_in, sort=not serving)
        m.violation = budget.worst(m.drops_by_set or {MAIN_EVAL: m.drops})[1]
        broken = [
            f"{name}: {why}" if self.extra else why
            for name, ds in (m.drops_by_set or {MAIN_EVAL: m.drops}).items()
            for why in broken_by(ds)
        ]
        if broken:
            m.broken = m.pruned = f"broken chain: {'; '.join(broken)}"
            save(m)
            raise Broken(m.broken, constraint=m.violation)
        save(m)
        timed = self.timed(cand, m.passes, work / "speed-model", m.timings, cache)
        m.speed, m.cost = self.speed_and_cost(timed, batch, streams=streams, request_latency=True)
        timed_bytes = timed.weight_bytes() if timed is not cand else None
        del timed
        if stop_early and m.speed.get("latency_misses"):
            save(m)
            raise Pruned(f"misses the latency targets at batch {batch}: {'; '.join(m.speed['latency_misses'])}")
        with tempfile.TemporaryDirectory() as tmp:
            m.footprint = footprint(cand, artifact or Path(tmp) / "artifact")
        if artifact is None:
            m.footprint["artifact"] = None
        m.speed["roofline"] = self.roofline(m.speed, m.footprint, m.passes, timed_bytes)
        m.notes = list(cand.notes)
        save(m)
        return m

    def memory_alone(self, batch_size: int, streams: int = 1, artifact: Path | None = None) -> dict[str, Any] | None:
        """Peak RSS of a fresh process serving one model alone (the saved `artifact`, else the baseline)
        over the speed benchmark's requests, in its batches, on this process's thread count; None when
        speed.model times another model than the one saved."""
        if self.recipe.speed.model is not None:
            return None
        s, ref = self.recipe.speed, self.baseline
        texts = tasks.prompted(ref, self.eval_data).interleaved()
        shape = {"batch_size": batch_size, "streams": streams}
        if self.recipe.task == "causal-lm":
            shape |= {"prompt_tokens": s.prompt_tokens, "new_tokens": s.new_tokens}
        else:
            texts = texts[: s.texts]
        return serving_memory(
            self.recipe.task,
            texts,
            shape,
            speed_mod.threads(),
            self.device,
            artifact=artifact,
            model=None if artifact else self.recipe.model.model_dump(mode="json"),
        )


def run_recipe(
    recipe: Recipe, out_dir: Path | None = None, chosen: dict[str, Any] | None = None, progress: bool = True
) -> tuple[dict[str, Any], Path]:
    """Measure the baseline and, when the recipe has passes, the compressed candidate against it.

    The result JSON is written after each finished stage, so a crash or a failing pass keeps the
    baseline's figures; the error is recorded and re-raised.
    """
    from tqdm.auto import tqdm

    recipe = priced_here(recipe)
    passes = resolved_passes(recipe, chosen)
    device = resolve_device(recipe.hardware.device)
    check_chain(passes, device)
    speed_mod.set_threads(recipe.hardware.threads)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = ensure_writable(Path(out_dir or recipe.output_dir)) / f"{recipe.name}-{stamp}"
    result_path = run_dir / "result.json"
    trial = Trial(recipe, passes)
    if speed_model_note(recipe):
        trial.notes.append(speed_model_note(recipe))
    n_stages = 4 + (3 if passes else 0)
    bar = tqdm(total=n_stages, disable=not progress, unit="stage", leave=False)

    try:
        with _Stage(trial, "load data", bar):
            bench = Bench.load_data(recipe, device)
            data = bench.eval_data
            trial.extra["data"] = {"eval": {"origin": data.origin, "kind": data.kind, "examples": len(data)}}
            trial.extra["provenance"] = provenance(recipe, data)
        with _Stage(trial, "load baseline", bar):
            baseline = bench.load_baseline()
        with _Stage(trial, "baseline quality", bar):
            trial.baseline["quality"] = bench.baseline_quality()
        with _Stage(trial, "baseline speed", bar):
            trial.baseline["speed"], trial.baseline["cost"] = bench.speed_and_cost(bench.timed_baseline, request_latency=True)
            with tempfile.TemporaryDirectory() as tmp:
                trial.baseline["footprint"] = footprint(baseline, Path(tmp) / "baseline")
                trial.baseline["footprint"]["artifact"] = None
            trial.baseline["speed"]["roofline"] = bench.roofline(
                trial.baseline["speed"], trial.baseline["footprint"], [], bench.timed_baseline.weight_bytes()
            )
        write_json_atomic(result_path, trial.to_json())

        if passes:
            m = Measurement(passes=passes, metric=recipe.budget.metric)

            def save(m: Measurement) -> None:  # each finished stage is on disk before the next starts
                trial.candidate = m.to_json()
                write_json_atomic(result_path, trial.to_json())

            with _Stage(trial, "apply passes", bar):
                cand = apply_chain(recipe, passes, bench.context(run_dir / "work"), m.timings, run_dir)
                saved = sorted(run_dir.glob("after-*"), key=lambda f: int(f.name.split("-")[1]))
                trial.extra["intermediate"] = [str(f) for f in saved]
                trial.notes.extend(cand.notes)
                m.deployment["runtime"] = cand.runtime
            try:
                with _Stage(trial, "measure candidate", bar):
                    bench.measure(cand, m, run_dir / "work", artifact=run_dir / "artifact", widths=True, save=save)
            except Broken as e:  # measured, and what was measured says the model no longer serves
                trial.status, trial.error = "broken", e.reason
            else:
                with _Stage(trial, "memory served alone", bar):
                    b = trial.baseline
                    for fp, sp, artifact in ((b["footprint"], b["speed"], None), (m.footprint, m.speed, run_dir / "artifact")):
                        fp["memory_alone"] = bench.memory_alone(sp["batch_size"], sp.get("streams", 1), artifact)
                    trial.candidate = m.to_json()
        if trial.status == "running":
            trial.status = "ok"
    except BaseException as e:
        trial.status = "failed"
        trial.error = e.one_line() if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        if not isinstance(e, (UserError, OSError)):
            trial.extra["traceback"] = traceback.format_exc()
        shutil.rmtree(run_dir / "artifact", ignore_errors=True)  # saving it is the last stage: a partial artifact
        raise
    finally:
        bar.close()
        shutil.rmtree(run_dir / "work", ignore_errors=True)  # first: on a full disk this frees room for the result
        write_json_atomic(result_path, trial.to_json())
    return trial.to_json(), result_path
