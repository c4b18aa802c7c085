"""The bench: what every candidate of one recipe is measured against (data, evaluator, baseline), and
how one candidate is measured stage by stage into a `Measurement` (quality, speed and price, widths,
footprint)."""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

from optimizer import tasks
from optimizer.cache import ArtifactCache
from optimizer.chain import EvalPart, apply_chain, eval_part, eval_parts, footprint, pass_context, pass_data, timed_recipe
from optimizer.data import Dataset
from optimizer.measure import speed as speed_mod
from optimizer.measure.alone import serving_memory
from optimizer.measure.footprint import Footprint
from optimizer.measure.quality import QualityEvaluator
from optimizer.measure.stats import Drop, MetricValues, paired_bootstrap
from optimizer.measure.width_check import WidthCheck, padded_text
from optimizer.measure.widths import check_widths
from optimizer.measurement import Broken, Measurement, Pruned
from optimizer.metrics import broken_by
from optimizer.passes import PassContext, batch_dependent, build_pass, compute_dtype_of, runtime_of
from optimizer.recipe import MAIN_EVAL, Recipe
from optimizer.runtimes import Candidate, load_candidate
from optimizer.serving import batch_between, latency_misses, measure_requests, measure_speed, operating_point, price_speed


@contextlib.contextmanager
def _batched(evaluator: QualityEvaluator, batch_size: int | None, sort: bool = True) -> Iterator[None]:
    saved = evaluator.batch_size, evaluator.sort
    evaluator.batch_size, evaluator.sort = batch_size or saved[0], sort
    try:
        yield
    finally:
        evaluator.batch_size, evaluator.sort = saved


@contextlib.contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    """Seconds spent in one measuring stage, kept with the record (a time budget predicts from them)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - t0, 3)


def batches_text(batch_size: int, sort: bool) -> str:
    """How quality was measured, for results: the batches matter to batch-dependent outputs."""
    if sort:
        return f"length-sorted batches of {batch_size}"
    return f"serving batches: {batch_size} at a time in arrival order (the outputs depend on the batch)"


def _values(metrics: dict[str, MetricValues]) -> dict[str, float]:
    return {k: v.value for k, v in metrics.items()}


def _evaluator(recipe: Recipe, data: Dataset) -> QualityEvaluator:
    """The recipe's quality evaluator on one eval set (the main one, an extra one, or the screening subset)."""
    q = recipe.quality
    return QualityEvaluator(recipe.task, data, recipe.metrics, q.batch_size, both_directions=q.retrieval == "both")


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
        eval_data, other = eval_parts(recipe, part)
        calib, train = pass_data(recipe)
        bench = cls(recipe, device, eval_data, calib, train, _evaluator(recipe, eval_data), other_part=other)
        for name, src in recipe.data.extra_eval.items():
            bench.extra[name] = (_evaluator(recipe, eval_part(recipe, part, src)), {})
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
    ) -> dict[str, dict[str, Drop]]:
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
    ) -> tuple[dict[str, float], dict[str, Drop]]:
        """A candidate's metric values and each metric's drop from the baseline, with its interval.

        `batch_size` and `sort=False` evaluate the candidate in the batches it will serve in: dynamic
        quantization scales activations per batch, so its outputs depend on the batch."""
        with _batched(self.evaluator, batch_size, sort):
            values = self.evaluator.evaluate(cand, reference=self.baseline)
        return _values(values), self._drops(self.quality, values, confidence)

    def screen(
        self, cand: Candidate, examples: int, confidence: float | None = None, batch_size: int | None = None, sort: bool = True
    ) -> dict[str, Drop] | None:
        """Drops on a seeded subset of the eval set, a cheap first look before the full evaluation.

        None when the eval set is under twice that size (the screen would not save time)."""
        if len(self.eval_data) < 2 * examples:
            return None
        if self.screen_evaluator is None:
            self.screen_evaluator = _evaluator(self.recipe, self.eval_data.subset(examples, self.recipe.data.seed))
            self.screen_quality = self.screen_evaluator.evaluate(self.baseline)
        with _batched(self.screen_evaluator, batch_size, sort):
            values = self.screen_evaluator.evaluate(cand, reference=self.baseline)
        return self._drops(self.screen_quality, values, confidence)

    def _drops(self, base: dict[str, MetricValues], values: dict[str, MetricValues], confidence: float | None) -> dict[str, Drop]:
        q = self.recipe.quality
        return {
            m: paired_bootstrap(base[m], values[m], q.bootstrap, confidence or q.confidence, self.recipe.data.seed)
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
                    nxt = batch_between(s, [sp for sp, _ in points])
                    refined = refined or nxt is not None
                sizes += [nxt] if nxt else []
        if refined:
            stopped = f"{stopped}; then refined by powers of two below the first batch that misses them"
        speed, cost = operating_point(s, points)
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
        misses = latency_misses(s, speed)
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

    def baseline_figures(self) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
        """The baseline's speed and price at the recipe's serving shape (with per-request latency, its roofline
        inside) and its footprint (no artifact kept): measured alike by `costopt run` and by a search."""
        assert self.baseline is not None
        speed, cost = self.speed_and_cost(self.timed_baseline, request_latency=True)
        with tempfile.TemporaryDirectory() as tmp:
            fp = footprint(self.baseline, Path(tmp) / "baseline")
        fp.artifact = None
        speed["roofline"] = self.roofline(speed, fp, [], self.timed_baseline.weight_bytes())
        return speed, cost, fp

    def roofline(
        self, speed: dict[str, Any], fp: Footprint, passes: list[dict[str, Any]], timed_weight_bytes: int | None = None
    ) -> dict[str, Any] | None:
        """A causal LM's measured speed against its roofline on the recipe's catalog entry and on this
        machine's measured bounds (None for encoders or without an entry). With speed.model, the timed
        model's weight bytes are `timed_weight_bytes` (`Candidate.weight_bytes`) where it could tell, else its
        parameters at the bytes per parameter the chain gave the quality model (a small model's chain may
        leave more of it unquantized than the timed shape's)."""
        if self.recipe.task != "causal-lm" or not self.recipe.hardware.catalog:
            return None
        from optimizer.measure.machine_bounds import machine_bounds
        from optimizer.measure.roofline import kv_bytes_per_token, llm_roofline

        entry = self.recipe.hardware.entry()
        dtype = compute_dtype_of(passes)
        # ONNX Runtime and OpenVINO chains run on the CPU whatever the recipe's device
        machine = machine_bounds(self.device if runtime_of(passes) == "torch" else "cpu", dtype)
        params = (speed.get("model") or {}).get("parameters") or fp.parameters
        weight_bytes = timed_weight_bytes or fp.weight_bytes * params / fp.parameters
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
            with _stage(m.timings, "widths"):
                fixed, first, again, pad = self.serve_around_defects(cand, self.context(work / "widths"), batch, streams)
            check = again or first
            if pad is not None:
                cand.notes.append(f"judged as {padded_text(pad['params']['widths'], first)}")
                m.padded = pad["params"]["widths"]
            cand = fixed or cand
            m.widths = check
            save(m)
        elif widths:
            with _stage(m.timings, "widths"):
                check = self.check_widths(cand, batch, streams)
            m.widths = check
            cand.notes.append(f"width check: {check.text()}")
            save(m)
        if stop_early and screen_examples:
            with _stage(m.timings, "screen"):
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
        with _stage(m.timings, "quality"):
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
        with _stage(m.timings, "speed"):
            m.speed, m.cost = self.speed_and_cost(timed, batch, streams=streams, request_latency=True)
        timed_bytes = timed.weight_bytes() if timed is not cand else None
        del timed
        if stop_early and m.speed.get("latency_misses"):
            save(m)
            raise Pruned(f"misses the latency targets at batch {batch}: {'; '.join(m.speed['latency_misses'])}")
        with tempfile.TemporaryDirectory() as tmp:
            m.footprint = footprint(cand, artifact or Path(tmp) / "artifact")
        if artifact is None:
            m.footprint.artifact = None
        m.speed["roofline"] = self.roofline(m.speed, m.footprint, m.passes, timed_bytes)
        m.notes = list(cand.notes)
        save(m)
        return m

    def memory_alone(self, batch_size: int, streams: int = 1, artifact: Path | None = None) -> dict[str, Any] | None:
        """Peak RSS of a fresh process serving one model alone (the saved `artifact`, else the baseline)
        over the speed benchmark's requests, in its batches, on this process's thread count; None when
        speed.model times another model than the one saved, or with speed.memory_alone off."""
        if self.recipe.speed.model is not None or not self.recipe.speed.memory_alone:
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
