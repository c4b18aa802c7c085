"""Search behaviour beyond the core loop: screening, the artifact cache, runtime/batch/thread choices,
time limits and NaNs, the deployment file and its rebuild, and the 'nothing feasible' answer."""

from __future__ import annotations

import json
import time

import numpy as np
import optuna
import pytest
import torch
import yaml

from optimizer.chain import eval_part
from optimizer.measurement import Measurement
from optimizer.recipe import load_recipe
from optimizer.study import MAX_REPEATS_IN_A_ROW, closest, finished, leaderboard, run_search

States = optuna.trial.TrialState


def _recipe(write_recipe, model_dir, tmp_path, passes, search=None, **extra):
    content = {
        "name": "features",
        "model": {"source": str(model_dir)},
        "task": "embedding",
        "data": {"eval": {"source": "stdlib-docs", "limit": 120}, "calibration": {"source": "stdlib-docs", "limit": 16}},
        "quality": {"metrics": ["mrr", "fidelity"], "bootstrap": 200},
        "speed": {"memory_alone": False, "batch_size": 8, "texts": 16, "warmup": 0, "repeats": 1},
        "hardware": {"threads": 1, "catalog": "aws-c7a.large"},
        "output_dir": str(tmp_path / "runs"),
        "search": {"trials": 3, "constraint": {"metric": "mrr", "max_drop": 0.05}, "seed": 0, "screen_examples": None}
        | (search or {}),
        "passes": passes,
    } | extra
    return load_recipe(write_recipe(content))


def test_screening_prunes_a_clearly_broken_trial_before_the_full_evaluation(write_recipe, tiny_bert_dir, tmp_path, monkeypatch):
    from optimizer.bench import Bench

    full_evals = []
    original = Bench.judge
    monkeypatch.setattr(Bench, "judge", lambda self, *a, **k: full_evals.append(1) or original(self, *a, **k))
    recipe = _recipe(
        write_recipe,
        tiny_bert_dir,
        tmp_path,
        [{"name": "prune-magnitude", "sparsity": {"choice": [0.97]}}],
        {"trials": 1, "screen_examples": 24, "constraint": {"metric": "fidelity", "max_drop": 0.0001}},
    )
    study = run_search(recipe)
    t = study.trials[0]
    assert t.state == States.PRUNED
    assert "screened on 24 examples" in Measurement.of(t).pruned and "over the" in Measurement.of(t).pruned
    assert Measurement.of(t).screen.relative_low > 0.0001
    assert full_evals == []  # neither the full evaluation nor the speed benchmark ran
    assert finished(study) == 1 and leaderboard(study)[0]["state"] == "pruned"


def test_screening_lets_a_good_trial_through(write_recipe, tiny_bert_dir, tmp_path):
    recipe = _recipe(
        write_recipe,
        tiny_bert_dir,
        tmp_path,
        [{"name": "cast", "dtype": {"choice": ["bfloat16"]}}],
        {"trials": 1, "screen_examples": 24, "constraint": {"metric": "fidelity", "max_drop": 0.05}},
    )
    t = run_search(recipe).trials[0]
    selection = len(eval_part(recipe, "select"))  # trials are judged on the search's part of the eval set
    assert 40 < selection < 80
    assert (
        t.state == States.COMPLETE and Measurement.of(t).screen.n == 2 * 24 and Measurement.of(t).drop.n == 2 * selection
    )  # queries and documents


def test_a_configuration_is_built_once_then_reloaded_from_the_cache(write_recipe, tiny_bert_dir, tmp_path):
    passes = [{"name": "onnx-export"}, {"name": "ort-int8-dynamic", "per_channel": {"choice": [True]}}]
    recipe = _recipe(write_recipe, tiny_bert_dir, tmp_path, passes, {"trials": 2, "sampler": "random"})
    study = run_search(recipe)
    first, second = study.trials[:2]
    # one configuration in the space: measured once, then every proposal is a repeat, which does not count;
    # the search stops after MAX_REPEATS_IN_A_ROW of them
    assert finished(study) == 1 and len(study.trials) == 1 + MAX_REPEATS_IN_A_ROW
    assert "pass onnx-export" in Measurement.of(first).timings and "cache hit" not in Measurement.of(first).timings
    assert Measurement.of(second).same_as == 0 and second.values == first.values  # measured once, not redone
    # a new process (say, a resumed search) reloads the chain from the cache instead of rebuilding it
    from optimizer.bench import Bench
    from optimizer.cache import ArtifactCache
    from optimizer.chain import apply_chain, resolved_passes

    bench = Bench.load_data(recipe, "cpu")
    timings: dict[str, float] = {}
    cand = apply_chain(
        recipe,
        resolved_passes(recipe, {"1.ort-int8-dynamic.per_channel": True}),
        bench.context(tmp_path / "w"),
        timings,
        cache=ArtifactCache(tmp_path / "runs" / "features" / "cache"),
    )
    assert timings == {"cache hit": 2} and [a["name"] for a in cand.applied] == ["onnx-export", "ort-int8-dynamic"]
    cache_dir = tmp_path / "runs" / "features" / "cache"
    entries = [p for p in cache_dir.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 2  # the export prefix and the full chain

    # a damaged entry (one byte of the quantized graph flipped) is not trusted: it is removed and rebuilt
    # from the last sound prefix, and the rebuilt chain gives the same outputs
    keys = sorted(entries, key=lambda p: len(json.loads((p / "cache.json").read_text())["applied"]))
    graph = next((keys[1] / "artifact").rglob("*.onnx"))
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    timings = {}
    again = apply_chain(
        recipe,
        resolved_passes(recipe, {"1.ort-int8-dynamic.per_channel": True}),
        bench.context(tmp_path / "w2"),
        timings,
        cache=ArtifactCache(cache_dir),
    )
    assert timings["cache hit"] == 1 and "pass ort-int8-dynamic" in timings
    enc = cand.tokenizer(["a damaged cache entry is rebuilt", "not trusted"], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert torch.equal(again.forward(ids, mask), cand.forward(ids, mask))
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".")]  # no trash or temporary folder left
    (keys[0] / "cache.json").write_text("{not json")  # an unreadable record is as damaged as a changed file
    timings = {}
    chosen = resolved_passes(recipe, {"1.ort-int8-dynamic.per_channel": True})
    apply_chain(recipe, chosen, bench.context(tmp_path / "w3"), timings, cache=ArtifactCache(cache_dir))
    assert timings["cache hit"] == 2  # the full chain, rebuilt above, is sound again


def test_runtime_batch_and_threads_are_part_of_the_space(write_recipe, tiny_bert_dir, tmp_path):
    passes = [
        {"name": "onnx-export", "enabled": {"choice": [True, False]}},
        {"name": "ort-int8-dynamic", "per_channel": {"choice": [True, False]}},
    ]
    recipe = _recipe(
        write_recipe,
        tiny_bert_dir,
        tmp_path,
        passes,
        {"trials": 6, "sampler": "random", "seed": 3, "batch_size": {"choice": [4, 16]}, "threads": {"choice": [1, 2]}},
    )
    study = run_search(recipe)
    runtimes = set()
    for t in study.trials:
        m = Measurement.of(t)
        if t.state == States.PRUNED:  # every pass off at the threads the baseline was timed with (each batch size)
            assert m.repeat and m.passes == [] and t.params["threads"] == recipe.hardware.threads
            continue
        assert t.state == States.COMPLETE, m.error
        dep, names = m.deployment, [p["name"] for p in m.passes]
        runtimes.add(dep["runtime"])
        if dep["runtime"] == "torch":  # export off: the ONNX Runtime pass after it is off too, never a broken chain
            assert names == [] and "1.ort-int8-dynamic.per_channel" not in t.params
        else:
            assert names == ["onnx-export", "ort-int8-dynamic"]
        assert dep["batch_size"] == t.params["batch_size"] and dep["threads"] == t.params["threads"]
        assert m.speed["batch_size"] == dep["batch_size"]
        assert m.speed["threads"] == dep["threads"]
        assert m.cost.replicas == 2 // dep["threads"]  # aws-c7a.large has 2 vCPUs
    assert runtimes == {"torch", "onnxruntime"}
    assert set(study.user_attrs["baseline"]["by_batch"]) == {"8", "4", "16"}  # the recipe's size and each choice


def test_a_trial_past_its_time_limit_fails_with_that_reason(write_recipe, tiny_bert_dir, tmp_path, monkeypatch):
    from optimizer.passes.quantize import Cast

    monkeypatch.setattr(Cast, "apply", lambda self, cand, ctx: time.sleep(30))
    recipe = _recipe(
        write_recipe,
        tiny_bert_dir,
        tmp_path,
        [{"name": "cast", "dtype": {"choice": ["bfloat16"]}}],
        {"trials": 1, "trial_timeout_minutes": 0.02},
    )
    t0 = time.monotonic()
    t = run_search(recipe).trials[0]
    assert time.monotonic() - t0 < 25
    assert t.state == States.FAIL and "time limit of 0.02 min" in Measurement.of(t).error


def test_nan_outputs_fail_the_trial_with_that_reason(write_recipe, tiny_bert_dir, tmp_path, monkeypatch):
    import torch

    from optimizer.passes.quantize import Cast

    def poison(self, cand, ctx):
        with torch.no_grad():
            next(cand.module.parameters()).fill_(float("nan"))
        return cand

    monkeypatch.setattr(Cast, "apply", poison)
    recipe = _recipe(write_recipe, tiny_bert_dir, tmp_path, [{"name": "cast", "dtype": {"choice": ["bfloat16"]}}], {"trials": 2})
    study = run_search(recipe)
    assert [t.state for t in study.trials] == [States.FAIL, States.FAIL]
    assert all("NaN" in Measurement.of(t).error for t in study.trials)


DEPLOYABLE = {
    "onnxruntime": [{"name": "onnx-export"}, {"name": "ort-int8-dynamic", "per_channel": {"choice": [True, False]}}],
    "openvino": [{"name": "ov-export"}, {"name": "ov-int8-static", "samples": {"choice": [8, 16]}}],
}


@pytest.mark.parametrize("runtime", list(DEPLOYABLE))
def test_search_writes_deploy_yaml_that_rebuilds_and_loads(runtime, write_recipe, tiny_bert_dir, tmp_path, capsys):
    import optimizer
    from optimizer.cli import main
    from optimizer.data import stdlib_split
    from optimizer.runtimes import reload_saved

    recipe_file = write_recipe(
        {
            "name": "deployme",
            "model": {"source": str(tiny_bert_dir)},
            "task": "embedding",
            "data": {"eval": {"source": "stdlib-docs", "limit": 40}},
            "quality": {"metrics": ["mrr", "fidelity"], "bootstrap": 200},
            "speed": {"memory_alone": False, "batch_size": 8, "texts": 16, "warmup": 0, "repeats": 1},
            "hardware": {"threads": 1, "catalog": "aws-c7a.large"},
            "output_dir": str(tmp_path / "runs"),
            "search": {"trials": 2, "constraint": {"metric": "fidelity", "max_drop": 0.5}, "screen_examples": None},
            "passes": DEPLOYABLE[runtime],
        },
        "deployme.yaml",
    )
    assert main(["search", str(recipe_file), "-q"]) == 0
    out = capsys.readouterr().out
    deploy_file = tmp_path / "runs" / "deployme" / "deploy.yaml"
    assert "chosen: trial" in out and str(deploy_file) in out
    config = yaml.safe_load(deploy_file.read_text())
    assert config["schema"] == "costopt.deploy/1" and config["runtime"] == runtime
    assert config["batch_size"] == 8 and config["threads"] == 1
    assert [p["name"] for p in config["passes"]] == [p["name"] for p in DEPLOYABLE[runtime]]
    m = config["measured"]
    assert m["cheaper_x"] == pytest.approx(m["baseline_usd_per_m_tokens"] / m["usd_per_m_tokens"], rel=1e-3)
    assert m["drop"]["relative_high"] <= 0.5 and config["hardware"]["catalog"] == "aws-c7a.large"

    out_dir = tmp_path / "built"
    assert main(["deploy", str(deploy_file), "--out", str(out_dir)]) == 0
    assert "load it with: optimizer.load_deployment" in capsys.readouterr().out
    dep = optimizer.load_deployment(out_dir)
    texts = [e.summary for e in stdlib_split("eval")[:5]]
    emb = dep(texts)
    assert emb.shape[0] == 5 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    # the rebuilt artifact is the searched one: same outputs as the cached chain
    cached = [p for p in (tmp_path / "runs" / "deployme" / "cache").iterdir() if not p.name.startswith(".")]
    from optimizer import tasks

    refs = [tasks.embed(reload_saved(c / "artifact"), texts, 8) for c in cached]
    assert any(np.allclose(emb, r, atol=1e-5) for r in refs)
    # a deploy.yaml loads directly too: built next to it on first use
    assert np.allclose(optimizer.load_deployment(deploy_file).encode(texts), emb, atol=1e-5)
    with pytest.raises(Exception, match="encoder|embedding"):
        dep.generate("hello")


def test_deploy_command_rejects_a_file_that_is_not_a_deployment(tmp_path, capsys):
    from optimizer.cli import main

    bad = tmp_path / "deploy.yaml"
    bad.write_text("name: something\n")
    assert main(["deploy", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "is not a costopt deployment" in capsys.readouterr().err


def test_nothing_feasible_names_the_closest_trial(write_recipe, tiny_bert_dir, tmp_path, capsys):
    from optimizer.cli import main

    recipe_file = write_recipe(
        {
            "name": "tooStrict",
            "model": {"source": str(tiny_bert_dir)},
            "task": "embedding",
            "data": {"eval": {"source": "stdlib-docs", "limit": 40}},
            "quality": {"metrics": ["fidelity"], "bootstrap": 200},
            "speed": {"memory_alone": False, "batch_size": 8, "texts": 16, "warmup": 0, "repeats": 1},
            "hardware": {"threads": 1, "catalog": "aws-c7a.large"},
            "output_dir": str(tmp_path / "runs"),
            "search": {"trials": 2, "sampler": "random", "constraint": {"max_drop": 0.0}, "screen_examples": None},
            "passes": [{"name": "prune-magnitude", "sparsity": {"float": [0.3, 0.6]}}],
        },
        "strict.yaml",
    )
    assert main(["search", str(recipe_file), "-q"]) == 3  # ran fine, nothing met the budget
    out = capsys.readouterr().out
    recipe = load_recipe(recipe_file)
    study = optuna.load_study(study_name="tooStrict", storage=f"sqlite:///{tmp_path / 'runs' / 'tooStrict' / 'study.db'}")
    near = closest(study)
    assert near is not None and Measurement.of(near).violation > 0
    assert "no configuration met fidelity drop <= 0% (relative)" in out and f"Closest: trial {near.number}" in out
    assert f"over budget by {100 * Measurement.of(near).violation:.2f} points" in out
    assert not (tmp_path / "runs" / "tooStrict" / "deploy.yaml").exists()
    assert recipe.search.constraint.max_drop == 0.0


def test_generate_on_a_causal_lm_deployment(tiny_llama_dir):
    from optimizer.deploy import Deployment
    from optimizer.recipe import ModelSpec
    from optimizer.runtimes import load_candidate

    dep = Deployment(load_candidate(ModelSpec(source=str(tiny_llama_dir)), "causal-lm", "cpu"), {"batch_size": 1})
    text = dep("the cat", max_new_tokens=5)
    assert isinstance(text, str)
    with pytest.raises(Exception, match="causal-lm"):
        dep.encode(["x"])


@pytest.mark.parametrize("lost", ["postgres-enum", "sqlite-table"])
def test_a_worker_that_loses_the_schema_creation_race_retries(lost, monkeypatch, tmp_path):
    """Workers started together on an empty database race to create Optuna's schema: PostgreSQL says
    "duplicate key" on an enum type, SQLite "table trials already exists" (seen in CI); the loser retries."""
    import sqlite3

    from sqlalchemy.exc import IntegrityError, OperationalError

    from optimizer import storage

    real = storage.ReconnectingStorage
    calls = []

    def racing(url, **kw):  # the first attempt meets another worker creating the same schema
        calls.append(url)
        if len(calls) == 1 and lost == "postgres-enum":
            raise IntegrityError("CREATE TYPE studydirection", {}, Exception("duplicate key value"))
        if len(calls) == 1:
            raise OperationalError("CREATE TABLE trials", {}, sqlite3.OperationalError("table trials already exists"))
        return real(url, **kw)

    monkeypatch.setattr(storage, "ReconnectingStorage", racing)
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    opened = storage.open_storage(f"sqlite:///{tmp_path / 's.db'}", 30)
    assert len(calls) == 2 and isinstance(opened, real)


def test_a_restarted_worker_reuses_a_recent_baseline_on_the_same_machine(write_recipe, tiny_bert_dir, tmp_path):
    from optimizer.trial_runner import worker_id
    from optimizer.trials import WORKER_PREFIX

    passes = [{"name": "prune-magnitude", "sparsity": {"choice": [0.1, 0.2, 0.3]}}]
    recipe = _recipe(write_recipe, tiny_bert_dir, tmp_path, passes, {"trials": 1, "sampler": "grid"})
    study = run_search(recipe)
    first = study.user_attrs["baseline"]
    assert study.user_attrs[WORKER_PREFIX + worker_id()]["baseline"].startswith("measured")
    study = run_search(recipe, trials=2)  # a restart: one more trial
    note = study.user_attrs[WORKER_PREFIX + worker_id()]["baseline"]
    if "contention" in note or "not quiet" in note:  # the refusal to reuse is right then; reuse is untestable
        pytest.skip(f"other processes used this machine's cores during the test: {note}")
    assert note.startswith("reused the speed measured"), note
    assert study.user_attrs["baseline"]["speed"] == first["speed"] and finished(study) == 2
    # the restart's trial was priced against the same baseline figure
    assert Measurement.of(study.trials[-1]).baseline_objective == first["objective"]
    # turned off: measured again
    off = _recipe(write_recipe, tiny_bert_dir, tmp_path, passes, {"trials": 3, "sampler": "grid", "baseline_reuse_minutes": 0})
    study = run_search(off)
    assert study.user_attrs[WORKER_PREFIX + worker_id()]["baseline"] == "measured (baseline_reuse_minutes is 0)"


def test_a_trial_left_running_by_a_dead_worker_is_failed_with_its_reason_when_a_search_ends(
    write_recipe, tiny_bert_dir, tmp_path
):
    import socket
    import subprocess
    import sys

    from optimizer.study import open_study

    passes = [{"name": "prune-magnitude", "sparsity": {"choice": [0.1, 0.2]}}]
    recipe = _recipe(write_recipe, tiny_bert_dir, tmp_path, passes, {"trials": 1, "sampler": "grid"})
    study = open_study(recipe)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = study.ask()  # a worker took this trial and died (SIGKILL) before its heartbeat was written
    orphan.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    study = run_search(recipe)
    states = {t.number: t.state for t in study.trials}
    assert states[orphan.number] == States.FAIL and States.RUNNING not in states.values()
    assert "died while running it" in study.user_attrs["orphans"][str(orphan.number)]
    assert finished(study) == 1  # the orphan does not count as a finished trial


def test_a_trial_no_worker_ever_claimed_is_failed_once_older_than_the_grace_period(write_recipe, tiny_bert_dir, tmp_path):
    """Killed between creating its trial and writing `worker`: no worker, no heartbeat, RUNNING forever
    unless its age gives it away (seen once in CI in the kill-every-baseline-time loop)."""
    import time

    from optimizer.study import fail_orphans, open_study

    passes = [{"name": "prune-magnitude", "sparsity": {"choice": [0.1]}}]
    recipe = _recipe(write_recipe, tiny_bert_dir, tmp_path, passes, {"trials": 1, "sampler": "grid"})
    study = open_study(recipe)
    unclaimed = study.ask()
    assert fail_orphans(study, unclaimed_after_s=60) == []  # young: maybe a live worker about to claim it
    assert fail_orphans(study) == []  # no age given: only dead workers of this host count
    time.sleep(0.05)
    assert fail_orphans(study, unclaimed_after_s=0.01) == [unclaimed.number]
    assert study.trials[unclaimed.number].state == States.FAIL
    assert "never claimed" in study.user_attrs["orphans"][str(unclaimed.number)]


@pytest.mark.parametrize("where", ["suggest", "_measured_twin"])
def test_a_stop_that_lands_outside_the_build_still_fails_the_trial_with_its_reason(
    where, write_recipe, tiny_bert_dir, tmp_path, monkeypatch
):
    import signal

    import optimizer.trial_runner as runner_mod
    from optimizer.signals import Stopped

    def stop(*a, **k):
        raise Stopped(signal.SIGTERM)

    monkeypatch.setattr(runner_mod, where, stop)
    recipe = _recipe(write_recipe, tiny_bert_dir, tmp_path, [{"name": "cast", "dtype": {"choice": ["bfloat16"]}}], {"trials": 1})
    with pytest.raises(Stopped):
        run_search(recipe)
    storage = f"sqlite:///{tmp_path / 'runs' / 'features' / 'study.db'}"
    (t,) = optuna.load_study(study_name="features", storage=storage).trials
    assert t.state == States.FAIL and Measurement.of(t).error.startswith("interrupted (SIGTERM)")
