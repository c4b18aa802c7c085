"""`costopt search` core: trials on a tiny model, constraint bookkeeping, resume without redoing trials."""

from __future__ import annotations

import io
import logging
from dataclasses import replace

import optuna
import pytest

from optimizer.budget import Budget
from optimizer.errors import UserError
from optimizer.measure.stats import Drop
from optimizer.measurement import Measurement
from optimizer.recipe import load_recipe
from optimizer.study import best_feasible, finished, run_search


def _recipe(write_recipe, model_dir, tmp_path, **search):
    return load_recipe(
        write_recipe(
            {
                "name": "tiny-search",
                "model": {"source": str(model_dir)},
                "task": "embedding",
                "data": {"eval": {"source": "stdlib-docs", "limit": 40}},
                "quality": {"metrics": ["mrr", "fidelity"], "bootstrap": 200},
                "speed": {"memory_alone": False, "batch_size": 8, "texts": 16, "warmup": 0, "repeats": 1},
                "hardware": {"threads": 1, "catalog": "aws-c7a.large"},
                "output_dir": str(tmp_path / "runs"),
                "search": {"trials": 3, "constraint": {"metric": "mrr", "max_drop": 0.05}, "seed": 0} | search,
                "passes": [
                    {"name": "cast", "enabled": {"choice": [True, False]}, "dtype": {"choice": ["bfloat16", "float16"]}},
                    {"name": "prune-magnitude", "sparsity": {"float": [0.05, 0.9]}},
                ],
            }
        )
    )


def _drop(**figures):
    return Drop.from_json({"metric": "mrr", "baseline": 0.5, "candidate": 0.5, "low": 0.0, "relative_low": 0.0} | figures)


def test_violation_uses_the_upper_end_of_the_interval():
    drop = _drop(drop=0.004, high=0.02, relative=0.006, relative_high=0.012)
    assert Budget("mrr", 0.01, relative=True).violation(drop) == pytest.approx(0.002)
    assert Budget("mrr", 0.01, relative=False).violation(drop) == pytest.approx(0.01)
    assert Budget("mrr", 0.01).within(replace(drop, relative_high=0.01)) and not Budget("mrr", 0.01).within(drop)


def test_budget_surely_over_reads_the_low_end():
    drop = _drop(drop=0.03, low=0.02, high=0.04, relative=0.03, relative_low=0.015, relative_high=0.05)
    assert Budget("mrr", 0.01).surely_over(drop) and not Budget("mrr", 0.02).surely_over(drop)
    assert Budget("mrr", 0.01).text == "mrr drop <= 1% (relative), at the upper end of the 95% interval"


def test_search_records_trials_and_resumes_without_redoing_them(write_recipe, tiny_bert_dir, tmp_path):
    recipe = _recipe(write_recipe, tiny_bert_dir, tmp_path)
    study = run_search(recipe)
    trials = study.get_trials()
    assert len(trials) == 3 and finished(study) == 3
    assert study.metric_names == ["$ per 1M tokens (blended)"]  # what optuna-dashboard shows
    for t in trials:
        m = Measurement.of(t)
        assert t.state == optuna.trial.TrialState.COMPLETE, m.error
        assert set(t.user_attrs) == {"worker", "measurement"}  # the claim, then one typed record
        assert m.violation is not None and m.deployment["threads"] == 1
        assert t.values[0] > 0 and m.cost.blended_usd_per_m == pytest.approx(t.values[0])
        names = [p["name"] for p in m.passes]
        assert ("0.cast.dtype" in t.params) == ("cast" in names)  # conditional parameter
    again = run_search(recipe)  # same target: nothing new
    assert len(again.get_trials()) == 3
    more = run_search(recipe, trials=5)  # a higher target adds only the missing trials
    assert finished(more) == 5
    new = more.get_trials()[3:]
    assert len(new) == 2 + sum(bool(Measurement.of(t).repeat) for t in new)  # repeats do not use up the target
    assert [t.params for t in more.get_trials()][:3] == [t.params for t in trials]
    best = best_feasible(more)
    if best is not None:
        assert Measurement.of(best).violation <= 0


def test_failing_trial_is_recorded_and_search_goes_on(write_recipe, tiny_bert_dir, tmp_path, monkeypatch):
    """Its reason is in the record and in one line on the terminal: no traceback."""
    from optimizer.passes.prune import PruneMagnitude

    def boom(self, cand, ctx):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(PruneMagnitude, "apply", boom)
    terminal = io.StringIO()
    for handler in logging.getLogger("optuna").handlers:  # what Optuna writes to the terminal
        monkeypatch.setattr(handler, "stream", terminal)
    study = run_search(_recipe(write_recipe, tiny_bert_dir, tmp_path, trials=2))
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.FAIL] * 2
    assert all("out of memory" in Measurement.of(t).error for t in study.get_trials())
    err = terminal.getvalue()
    assert "because of the following error: RuntimeError('out of memory (simulated)')" in err and "Traceback" not in err


def test_a_trial_failing_before_its_passes_counts_so_the_search_ends(write_recipe, tiny_bert_dir, tmp_path, monkeypatch):
    """A sampler or search-space error (raised while suggesting) fails the trial with its reason; the
    search ends after its trials instead of drawing failed trials forever (it once looped)."""
    from optimizer import trial_runner as runner_mod

    def broken(trial, recipe):
        raise ValueError("The parameter name, 0.cast.dtype, is not found in the given grid.")

    monkeypatch.setattr(runner_mod, "suggest", broken)
    study = run_search(_recipe(write_recipe, tiny_bert_dir, tmp_path, trials=2))
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.FAIL] * 2
    assert all("not found in the given grid" in Measurement.of(t).error for t in study.get_trials())


def test_grid_covers_keep_sensitive_serving_knobs_and_list_choices(write_recipe, tiny_bert_dir, tmp_path):
    from optimizer.study import _grid

    recipe = _recipe(write_recipe, tiny_bert_dir, tmp_path, sampler="grid", batch_size={"choice": [4, 8]})
    passes = [
        {"name": "onnx-export"},
        {"name": "ort-int8-dynamic", "keep_sensitive": {"int": [0, 2]}, "exclude": {"choice": [[], ["layer\\.0/"]]}},
    ]
    recipe = load_recipe(write_recipe(recipe.model_dump(mode="json") | {"passes": passes}))
    assert _grid(recipe) == {
        "1.ort-int8-dynamic.exclude": ["[]", '["layer\\\\.0/"]'],  # as the search stores list choices: JSON text
        "1.ort-int8-dynamic.keep_sensitive": [0, 1, 2],
        "batch_size": [4, 8],
    }


def test_cost_objective_needs_a_catalog_entry(write_recipe, tiny_bert_dir, tmp_path):
    recipe = _recipe(write_recipe, tiny_bert_dir, tmp_path)
    recipe.hardware.catalog = None
    with pytest.raises(UserError, match="hardware.catalog"):
        run_search(recipe)


def test_search_command_prints_a_leaderboard(write_recipe, tiny_bert_dir, tmp_path, capsys):
    from optimizer.cli import main

    recipe_file = write_recipe(
        {
            "name": "cli-search",
            "model": {"source": str(tiny_bert_dir)},
            "task": "embedding",
            "data": {"eval": {"source": "stdlib-docs", "limit": 40}},
            "quality": {"metrics": ["mrr"], "bootstrap": 200},
            "speed": {"memory_alone": False, "batch_size": 8, "texts": 16, "warmup": 0, "repeats": 1},
            "hardware": {"threads": 1, "catalog": "aws-c7a.large"},
            "output_dir": str(tmp_path / "runs"),
            # a loose budget: this test is about the printing; a half-precision random model on 20 held-out
            # pairs lands near a 1% budget, either side of it from run to run
            "search": {"trials": 2, "constraint": {"metric": "mrr", "max_drop": 0.2}},
            "passes": [{"name": "cast", "dtype": {"choice": ["bfloat16", "float16"]}}],
        },
        "cli.yaml",
    )
    assert main(["search", str(recipe_file)]) == 0
    out = capsys.readouterr().out
    assert "study cli-search: 2 finished trials" in out and "cast(dtype=" in out and "feasible" in out
    assert (tmp_path / "runs" / "cli-search" / "study.db").is_file()


def test_the_all_passes_off_configuration_is_not_measured_again(write_recipe, tiny_bert_dir, tmp_path):
    """Turning every optional pass off gives the baseline: pruned at once, never chosen as the 'best'."""
    recipe = load_recipe(
        write_recipe(
            {
                "name": "tiny-off",
                "model": {"source": str(tiny_bert_dir)},
                "task": "embedding",
                "data": {"eval": {"source": "stdlib-docs", "limit": 40}},
                "quality": {"metrics": ["mrr"], "bootstrap": 200},
                "speed": {"memory_alone": False, "batch_size": 8, "texts": 16, "warmup": 0, "repeats": 1},
                "hardware": {"threads": 1, "catalog": "aws-c7a.large"},
                "output_dir": str(tmp_path / "runs"),
                "search": {
                    "trials": 6,
                    "sampler": "random",
                    "constraint": {"metric": "mrr", "max_drop": 0.5},
                    "batch_size": {"choice": [8, 4]},  # the baseline is timed at each: at either it is measured
                },
                "passes": [{"name": "cast", "enabled": {"choice": [True, False]}, "dtype": "bfloat16"}],
            }
        )
    )
    trials = run_search(recipe).get_trials()
    off = [t for t in trials if not Measurement.of(t).passes]
    assert off and len(off) < len(trials)  # the seed gives both
    for t in trials:
        assert (t.state == optuna.trial.TrialState.PRUNED) == (t in off)
    assert all("baseline itself" in Measurement.of(t).pruned for t in off)
    assert any("baseline itself at batch 4" in Measurement.of(t).pruned for t in off)  # seeded sampler: it comes
    assert Measurement.of(best_feasible(run_search(recipe))).passes != []
