"""Causal-LM operating points: the cheapest batch size that meets the latency targets is the one priced."""

from __future__ import annotations

import json

import pytest

from optimizer.cli import main
from optimizer.measure.price import Price
from optimizer.measurement import Measurement
from optimizer.recipe import Recipe
from optimizer.serving import operating_point


def _recipe(**speed) -> Recipe:
    return Recipe.model_validate(
        {"name": "op", "model": {"source": "x"}, "task": "causal-lm", "data": {"eval": {"source": "stdlib-docs"}}, "speed": speed}
    )


def _point(batch: int, ttft: float, tpot: float, usd: float) -> tuple[dict, Price]:
    speed = {
        "kind": "causal-lm",
        "batch_size": batch,
        "input_tokens_per_s": {"median": 1000.0 * batch},
        "output_tokens_per_s": {"median": 10.0 * batch},
        "time_to_first_token_p95_s": ttft,
        "token_latency_s": {"p95": tpot},
    }
    price = Price("x", 1.0, 0.5, usd / 2, usd * 2, 0.1, 0.1, 0.4, 0.5, usd)
    return speed, price


def test_the_cheapest_point_within_the_targets_is_chosen():
    points = [_point(1, 0.1, 0.010, 3.0), _point(8, 0.4, 0.020, 1.0), _point(32, 1.5, 0.060, 0.4)]
    speed, cost = operating_point(_recipe(ttft_p95_s=0.5, tpot_p95_s=0.05).speed, points)
    assert speed["batch_size"] == 8 and cost.blended_usd_per_m == 1.0 and speed["latency_misses"] == []
    assert [p["meets_targets"] for p in speed["operating_points"]] == [True, True, False]
    speed, _ = operating_point(_recipe().speed, [_point(1, 0.1, 0.010, 3.0), _point(32, 1.5, 0.060, 0.4)])
    assert speed["batch_size"] == 32  # no targets: the cheapest


def test_when_no_point_meets_the_targets_the_nearest_miss_is_reported():
    points = [_point(1, 0.1, 0.030, 3.0), _point(8, 0.4, 0.040, 1.0)]
    speed, _ = operating_point(_recipe(tpot_p95_s=0.02).speed, points)
    assert speed["batch_size"] == 1 and speed["latency_misses"] == ["time per output token p95 30.00 ms > 20 ms"]


def test_targets_are_refused_for_encoders(write_recipe, capsys):
    rec = write_recipe(
        {
            "name": "enc",
            "model": {"source": "x"},
            "task": "embedding",
            "data": {"eval": {"source": "stdlib-docs"}},
            "speed": {"batch_sizes": [1, 2]},
        }
    )
    assert main(["validate", str(rec)]) == 2
    assert "speed.batch_sizes: applies to causal LMs" in capsys.readouterr().err


def test_a_run_sweeps_batch_sizes_and_prices_the_chosen_point(write_recipe, tiny_llama_dir, tmp_path, capsys):
    rec = write_recipe(
        {
            "name": "op",
            "model": {"source": str(tiny_llama_dir)},
            "task": "causal-lm",
            "data": {"eval": {"source": "stdlib-docs", "limit": 40}},
            "speed": {
                "memory_alone": False,
                "batch_sizes": [1, 4],
                "prompt_tokens": 16,
                "new_tokens": 4,
                "warmup": 1,
                "repeats": 3,
                "tpot_p95_s": 10.0,
            },
            "hardware": {"threads": 1, "catalog": "aws-c7a.large"},
            "output_dir": str(tmp_path / "runs"),
            "passes": [{"name": "cast", "dtype": "bfloat16"}],
        }
    )
    assert main(["run", str(rec), "-q"]) == 0
    out = capsys.readouterr().out
    assert "operating points (the chosen one: batch" in out and "decode / bandwidth bound" in out
    [result] = (tmp_path / "runs").glob("op-*/result.json")
    r = json.loads(result.read_text())
    for part in ("baseline", "candidate"):
        sp, cost = r[part]["speed"], r[part]["cost"]
        points = {p["batch_size"]: p for p in sp["operating_points"]}
        assert set(points) == {1, 4} and all(p["meets_targets"] for p in points.values())
        best = min(points.values(), key=lambda p: p["blended_usd_per_m"])
        assert sp["batch_size"] == best["batch_size"] and cost["blended_usd_per_m"] == pytest.approx(best["blended_usd_per_m"])
        # each point against its own roofline (batch 1's decode share is the bandwidth check); the chosen
        # point's equals the result's roofline
        assert all(p["decode_fraction"] > 0 and p["prefill_fraction"] > 0 for p in points.values())
        chosen = points[sp["batch_size"]]
        assert chosen["decode_fraction"] == pytest.approx(sp["roofline"]["decode_fraction"])


def _sweep(tiny_llama_dir, **speed) -> dict:
    """The baseline's speed on the tiny Llama, measured as `costopt run` measures it."""
    from optimizer.bench import Bench

    recipe = Recipe.model_validate(
        {
            "name": "sweep",
            "model": {"source": str(tiny_llama_dir)},
            "task": "causal-lm",
            "data": {"eval": {"source": "stdlib-docs", "limit": 20}},
            "speed": {"memory_alone": False, "prompt_tokens": 8, "new_tokens": 2, "warmup": 0, "repeats": 1, **speed},
            "hardware": {"threads": 1},
        }
    )
    bench = Bench.load_data(recipe, "cpu")
    return bench.speed_and_cost(bench.load_baseline())[0]


def test_the_batch_sweep_doubles_up_to_max_batch_size(tiny_llama_dir):
    speed = _sweep(tiny_llama_dir, batch_sizes=[1], max_batch_size=5, tpot_p95_s=10.0)
    assert [p["batch_size"] for p in speed["operating_points"]] == [1, 2, 4]
    assert speed["sweep_stopped"] == "batch 4 is the last under speed.max_batch_size (5)"


def test_the_batch_sweep_stops_at_the_first_point_that_misses_a_target(tiny_llama_dir):
    speed = _sweep(tiny_llama_dir, batch_sizes=[1], max_batch_size=64, tpot_p95_s=1e-9)
    assert speed["batch_size"] == 1 and "operating_points" not in speed  # batch 2 was never measured
    assert speed["sweep_stopped"].startswith("batch 1 misses the latency targets (time per output token p95")


def test_the_batch_sweep_stops_before_a_batch_that_would_not_fit_in_free_memory(tiny_llama_dir, monkeypatch):
    import types

    import optimizer.bench

    monkeypatch.setattr(optimizer.bench.psutil, "virtual_memory", lambda: types.SimpleNamespace(available=4096))
    speed = _sweep(tiny_llama_dir, batch_size=2, max_batch_size=64)
    assert speed["batch_size"] == 2
    assert speed["sweep_stopped"].startswith("batch 4 would need") and speed["sweep_stopped"].endswith("GiB free")


def test_batch_between_halves_the_powers_of_two_between_the_last_meet_and_the_first_miss():
    from optimizer.serving import batch_between

    recipe = _recipe(tpot_p95_s=0.05)

    def points(**tpot_by_batch: float) -> list[dict]:
        return [_point(int(b[1:]), 0.1, t, 1.0)[0] for b, t in tpot_by_batch.items()]

    assert batch_between(recipe.speed, points(b1=0.01, b8=0.08)) == 4
    assert batch_between(recipe.speed, points(b1=0.01, b8=0.08, b4=0.06)) == 2
    assert batch_between(recipe.speed, points(b1=0.01, b8=0.08, b4=0.04)) is None  # nothing left between 4 and 8
    assert batch_between(recipe.speed, points(b1=0.01, b32=0.5)) == 8  # 2, 4, 8, 16: the middle
    assert batch_between(recipe.speed, points(b1=0.09, b8=0.2)) is None  # no point meets the targets
    assert batch_between(recipe.speed, points(b1=0.01, b8=0.02)) is None  # no point misses them


def test_the_sweep_refines_below_the_first_batch_that_misses(tiny_llama_dir, monkeypatch):
    import optimizer.bench

    real = optimizer.bench.measure_speed

    def measure(cand, recipe, data, batch, *args):  # a time per output token that grows with the batch
        speed = real(cand, recipe, data, batch, *args)
        speed["token_latency_s"]["p95"] = 0.01 * batch
        return speed

    monkeypatch.setattr(optimizer.bench, "measure_speed", measure)
    speed = _sweep(tiny_llama_dir, batch_sizes=[1, 8], max_batch_size=64, tpot_p95_s=0.05)
    assert [p["batch_size"] for p in speed["operating_points"]] == [1, 8, 4]
    assert speed["sweep_stopped"].startswith("batch 8 misses the latency targets")
    assert speed["sweep_stopped"].endswith("then refined by powers of two below the first batch that misses them")
    assert speed["batch_size"] in (1, 4) and not speed["latency_misses"]


def test_an_out_of_memory_error_ends_the_sweep_and_keeps_the_points_measured(tiny_llama_dir, monkeypatch):
    import torch

    import optimizer.bench

    real = optimizer.bench.measure_speed

    def measure(cand, recipe, data, batch, *args):
        if batch >= 4:  # what a GPU says when the batch's KV cache does not fit
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(cand, recipe, data, batch, *args)

    monkeypatch.setattr(optimizer.bench, "measure_speed", measure)
    speed = _sweep(tiny_llama_dir, batch_sizes=[1], max_batch_size=64, tpot_p95_s=10.0)
    assert [p["batch_size"] for p in speed["operating_points"]] == [1, 2]
    assert speed["sweep_stopped"] == "batch 4 ran out of device memory"


def test_a_max_batch_size_below_the_sweeps_start_is_refused(write_recipe, capsys):
    base = {"name": "op", "model": {"source": "x"}, "task": "causal-lm", "data": {"eval": {"source": "stdlib-docs"}}}
    rec = write_recipe(base | {"speed": {"batch_sizes": [1, 8], "max_batch_size": 4}})
    assert main(["validate", str(rec)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "speed.max_batch_size" in err and "at least 8" in err
    rec = write_recipe(base | {"task": "embedding", "speed": {"max_batch_size": 64}})
    assert main(["validate", str(rec)]) == 2


def test_a_search_prunes_trials_that_miss_the_latency_targets(write_recipe, tiny_llama_dir, tmp_path):
    import optuna

    from optimizer.recipe import load_recipe
    from optimizer.study import run_search

    rec = write_recipe(
        {
            "name": "op-search",
            "model": {"source": str(tiny_llama_dir)},
            "task": "causal-lm",
            "data": {"eval": {"source": "stdlib-docs", "limit": 40}},
            "speed": {
                "memory_alone": False,
                "batch_size": 2,
                "prompt_tokens": 16,
                "new_tokens": 4,
                "warmup": 0,
                "repeats": 2,
                "tpot_p95_s": 1e-9,
            },
            "hardware": {"threads": 1, "catalog": "aws-c7a.large"},
            "output_dir": str(tmp_path / "runs"),
            "search": {
                "trials": 1,
                "sampler": "grid",
                "screen_examples": None,
                "constraint": {"metric": "perplexity", "max_drop": 0.5},
            },
            "passes": [{"name": "prune-magnitude", "sparsity": {"choice": [0.1]}}],
        }
    )
    study = run_search(load_recipe(rec))
    [t] = [t for t in study.trials if not Measurement.of(t).repeat]
    assert t.state == optuna.trial.TrialState.PRUNED
    assert Measurement.of(t).pruned.startswith("misses the latency targets at batch 2: time per output token p95")
