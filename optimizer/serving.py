"""How a candidate serves, and what that costs: speed at a batch size (and a burst of requests), its price
on the recipe's catalog entry, the latency targets, and the operating point among the batch sizes measured."""

from __future__ import annotations

from typing import Any

from optimizer import tasks
from optimizer.data import Dataset
from optimizer.errors import UserError
from optimizer.measure import speed as speed_mod
from optimizer.measure.contention import Watch
from optimizer.measure.price import Price
from optimizer.recipe import Recipe, SpeedSpec
from optimizer.runtimes import Candidate


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
        entry = hw.entry()
        tps = out["tokens_per_s"]["median"] * replicas_on(entry, out["threads"])
        out["usd_per_m_tokens"] = cost.usd_per_million(tps, entry.hourly_usd(hw.pricing), hw.utilization)
    return out


def price_speed(recipe: Recipe, speed: dict[str, Any]) -> Price | None:
    """$ per 1M tokens on the recipe's catalog entry from measured tokens/s (None without an entry)."""
    if not recipe.hardware.catalog:
        return None
    import cost

    hw = recipe.hardware
    entry = hw.entry()
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
    monthly = cost.monthly_cost(p, recipe.workload) if recipe.workload else None
    return Price.of(p, share, replicas, note, monthly)


def _latency_ratios(s: SpeedSpec, speed: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """(measured, target) of each causal-LM latency target the recipe's speed section states."""
    if speed.get("kind") != "causal-lm":
        return {}
    out = {}
    if s.ttft_p95_s is not None:
        out["ttft"] = (speed["time_to_first_token_p95_s"], s.ttft_p95_s)
    if s.tpot_p95_s is not None:
        out["tpot"] = (speed["token_latency_s"]["p95"], s.tpot_p95_s)
    return out


def latency_misses(targets: SpeedSpec, speed: dict[str, Any]) -> list[str]:
    """The recipe's causal-LM latency targets this measurement misses, in words (empty: all met)."""
    text = {
        "ttft": lambda got, want: f"time to first token p95 {got:.3f} s > {want:g} s",
        "tpot": lambda got, want: f"time per output token p95 {1e3 * got:.2f} ms > {1e3 * want:g} ms",
    }
    return [text[k](got, want) for k, (got, want) in _latency_ratios(targets, speed).items() if got > want]


def operating_point(targets: SpeedSpec, points: list[tuple[dict[str, Any], Price | None]]) -> tuple[dict[str, Any], Price | None]:
    """Of the measured batch sizes, the one to serve at: the cheapest (blended $ per 1M tokens, else the
    fastest decode) that meets the latency targets; when none does, the one that misses them least.
    The returned speed lists every point (`operating_points`) and what the chosen one misses."""

    def price(p: tuple[dict[str, Any], Price | None]) -> float:
        speed, cost = p
        if cost is not None:
            return cost.blended_usd_per_m
        key = "output_tokens_per_s" if "output_tokens_per_s" in speed else "input_tokens_per_s"
        return 1.0 / speed[key]["median"]

    def overshoot(p: tuple[dict[str, Any], Price | None]) -> float:
        return max((got / want for got, want in _latency_ratios(targets, p[0]).values()), default=1.0)

    met = [p for p in points if not latency_misses(targets, p[0])]
    speed, cost = min(met, key=price) if met else min(points, key=overshoot)
    speed["latency_misses"] = latency_misses(targets, speed)
    if len(points) > 1:
        speed["operating_points"] = [
            {
                "batch_size": sp["batch_size"],
                "input_tokens_per_s": sp["input_tokens_per_s"]["median"],
                "output_tokens_per_s": sp["output_tokens_per_s"]["median"],
                "time_to_first_token_p95_s": sp["time_to_first_token_p95_s"],
                "time_per_output_token_p95_s": sp["token_latency_s"]["p95"],
                "meets_targets": not latency_misses(targets, sp),
                "input_usd_per_m": c.input_usd_per_m if c else None,
                "output_usd_per_m": c.output_usd_per_m if c else None,
                "blended_usd_per_m": c.blended_usd_per_m if c else None,
            }
            for sp, c in points
        ]
    return speed, cost


def batch_between(targets: SpeedSpec, speeds: list[dict[str, Any]]) -> int | None:
    """The middle power of two between the largest measured batch that meets the latency targets and the
    smallest larger one measured (which misses them); None when no point meets them or none is left between."""
    met = [sp["batch_size"] for sp in speeds if not latency_misses(targets, sp)]
    if not met:
        return None
    lo = max(met)
    hi = min((sp["batch_size"] for sp in speeds if sp["batch_size"] > lo), default=None)
    if hi is None:
        return None
    between = [2**k for k in range(hi.bit_length()) if lo < 2**k < hi]
    return between[len(between) // 2] if between else None
