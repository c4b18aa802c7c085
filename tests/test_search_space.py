"""The recipe's search space as Optuna sees it: conditional parameters, value kinds, resolvable choices."""

from __future__ import annotations

import optuna
import pytest

from optimizer.chain import resolved_passes
from optimizer.recipe import load_recipe
from optimizer.search_space import space_size, suggest

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def recipe(write_recipe, tiny_bert_dir):
    return load_recipe(
        write_recipe(
            {
                "name": "space",
                "model": {"source": str(tiny_bert_dir)},
                "task": "embedding",
                "data": {"eval": {"source": "stdlib-docs"}},
                "passes": [
                    {"name": "prune-structured", "enabled": {"choice": [True, False]}, "neurons": {"float": [0.1, 0.5]}},
                    {"name": "onnx-export"},
                    {
                        "name": "ort-int8-dynamic",
                        "enabled": {"choice": [True, False]},
                        "per_channel": {"choice": [True, False]},
                        "op_types": {"choice": [["MatMul"], ["MatMul", "Attention"]]},
                    },
                    {"name": "ort-int4", "enabled": False, "block_size": {"int": [16, 64], "step": 16}},
                ],
            }
        )
    )


def test_disabled_pass_parameters_are_never_sampled(recipe):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_on = seen_off = False
    for _ in range(30):
        trial = study.ask()
        chosen = suggest(trial, recipe)
        on = chosen["0.prune-structured.enabled"]
        assert ("0.prune-structured.neurons" in trial.params) == on
        seen_on |= on
        seen_off |= not on
        if on:
            assert 0.1 <= chosen["0.prune-structured.neurons"] <= 0.5
        assert not any(k.startswith("3.") for k in chosen)  # enabled: false is never searched
        passes = resolved_passes(recipe, chosen)  # every sampled configuration resolves to a runnable chain
        assert [p["name"] for p in passes][:1] in (["prune-structured"], ["onnx-export"])
        if chosen["2.ort-int8-dynamic.enabled"]:
            assert chosen["2.ort-int8-dynamic.op_types"] in (["MatMul"], ["MatMul", "Attention"])
        study.tell(trial, 0.0)
    assert seen_on and seen_off


def test_space_size_counts_conditional_choices(recipe, write_recipe, tiny_bert_dir):
    assert space_size(recipe) is None  # a float range: continuous
    discrete = load_recipe(
        write_recipe(
            {
                "name": "d",
                "model": {"source": str(tiny_bert_dir)},
                "task": "embedding",
                "data": {"eval": {"source": "stdlib-docs"}},
                "passes": [
                    {"name": "cast", "enabled": {"choice": [True, False]}, "dtype": {"choice": ["bfloat16", "float16"]}},
                    {"name": "prune-magnitude", "sparsity": 0.5, "scope": {"choice": ["layer", "global"]}},
                ],
            },
            "d.yaml",
        )
    )
    assert space_size(discrete) == (2 + 1) * 2


def _two_paths(write_recipe, tiny_bert_dir):
    """ONNX Runtime or OpenVINO, each with its int8 pass, and a runtime-agnostic cap last."""
    return load_recipe(
        write_recipe(
            {
                "name": "paths",
                "model": {"source": str(tiny_bert_dir)},
                "task": "embedding",
                "data": {"eval": {"source": "stdlib-docs"}},
                "search": {"streams": {"choice": [1, 2]}},
                "passes": [
                    {"name": "onnx-export", "enabled": {"choice": [True, False]}},
                    {"name": "ort-int8-dynamic"},
                    {"name": "ov-export", "enabled": {"choice": [True, False]}},
                    {"name": "ov-int8-static", "enabled": {"choice": [True, False]}, "samples": {"choice": [64, 128]}},
                    {"name": "max-length", "enabled": {"choice": [True, False]}, "tokens": {"choice": [64, 32]}},
                ],
            }
        )
    )


def test_within_budget_techniques_combine_along_the_cheapest_trials_path(write_recipe, tiny_bert_dir):
    from optimizer.search_space import combined_params, running_passes

    r = _two_paths(write_recipe, tiny_bert_dir)
    off = {
        "0.onnx-export.enabled": False,
        "2.ov-export.enabled": False,
        "3.ov-int8-static.enabled": False,
        "4.max-length.enabled": False,
    }
    ov_int8 = off | {"2.ov-export.enabled": True, "3.ov-int8-static.enabled": True, "3.ov-int8-static.samples": 128, "streams": 2}
    ort = off | {"0.onnx-export.enabled": True, "streams": 1}
    cap = off | {"4.max-length.enabled": True, "4.max-length.tokens": 32, "streams": 1}
    assert running_passes(r, ort) == [0, 1] and running_passes(r, ov_int8) == [2, 3]
    merged = combined_params(r, [ov_int8, ort, cap])
    # the cheapest's path and knobs, plus the cap; the ONNX path cannot join the OpenVINO one
    assert merged == ov_int8 | {"4.max-length.enabled": True, "4.max-length.tokens": 32}
    assert running_passes(r, merged) == [2, 3, 4]
    assert combined_params(r, [ov_int8]) is None and combined_params(r, [ov_int8, ort]) is None


def test_a_search_queues_the_combination_once_after_the_singles(write_recipe, tiny_bert_dir):
    from optimizer.measurement import Measurement
    from optimizer.study import COMBINED, queue_combination

    r = _two_paths(write_recipe, tiny_bert_dir)
    study = optuna.create_study()
    for params in (
        {"0.onnx-export.enabled": True, "2.ov-export.enabled": False, "4.max-length.enabled": False, "streams": 1},
        {
            "0.onnx-export.enabled": False,
            "2.ov-export.enabled": True,
            "3.ov-int8-static.enabled": False,
            "4.max-length.enabled": False,
            "streams": 1,
        },
        {
            "0.onnx-export.enabled": False,
            "2.ov-export.enabled": False,
            "4.max-length.enabled": True,
            "4.max-length.tokens": 64,
            "streams": 2,
        },
        {
            "0.onnx-export.enabled": False,
            "2.ov-export.enabled": False,
            "4.max-length.enabled": True,
            "4.max-length.tokens": 32,
            "streams": 1,
        },
    ):
        study.enqueue_trial(params)
    assert queue_combination(study, r) is None  # singles still waiting
    for cost, violation in ((3.0, -0.1), (2.0, -0.1), (4.0, -0.1), (1.0, 0.2)):
        t = study.ask()
        suggest(t, r)
        Measurement(violation=violation).save(t)
        study.tell(t, cost)
    merged = queue_combination(study, r)
    # the cheapest within budget (OpenVINO) with the within-budget cap (64, not the over-budget 32)
    assert merged["2.ov-export.enabled"] and merged["4.max-length.enabled"] and merged["4.max-length.tokens"] == 64
    # queued as the cheapest was served (one stream) and as the cap's trial was (two): the combination's serving
    # is measured, not inherited
    waiting = [t.system_attrs["fixed_params"] for t in study.get_trials(states=(optuna.trial.TrialState.WAITING,))]
    assert study.user_attrs[COMBINED] == merged and merged["streams"] == 1
    assert waiting == [merged, merged | {"streams": 2}]
    assert queue_combination(study, r) is None  # once per study


def test_single_technique_trials_take_the_first_choice_of_each_pass_and_serving_knob(write_recipe, tiny_bert_dir):
    """A recipe lists its preferred settings first; a single technique is measured at them, batch size included
    (sampled, a batch that misses the latency targets would prune the only trial of that technique)."""
    from optimizer.search_space import single_technique

    r = load_recipe(
        write_recipe(
            {
                "name": "seeds",
                "model": {"source": str(tiny_bert_dir)},
                "task": "embedding",
                "data": {"eval": {"source": "stdlib-docs"}},
                "search": {"batch_size": {"choice": [4, 1, 8]}, "streams": {"choice": [2, 1]}},
                "passes": [
                    {"name": "onnx-export", "enabled": {"choice": [True, False]}},
                    {"name": "ort-int8-dynamic", "enabled": {"choice": [True, False]}, "per_channel": {"choice": [False, True]}},
                ],
            }
        )
    )
    params = single_technique(r, 1)
    assert params == {
        "0.onnx-export.enabled": True,
        "1.ort-int8-dynamic.enabled": True,
        "1.ort-int8-dynamic.per_channel": False,
        "batch_size": 4,
        "streams": 2,
    }


@pytest.mark.parametrize("has", [frozenset(), frozenset({"int8-dot"})])
def test_a_pass_whose_speed_up_this_cpu_lacks_is_not_tried_alone_first(write_recipe, tiny_bert_dir, has, monkeypatch):
    """The recipe states the levers, the machine orders them: OpenVINO's static int8 is seeded only where the
    CPU has int8 dot-product kernels (VNNI / AMX); elsewhere it is left to the sampler, and said why."""
    import optuna

    from optimizer.measure import system
    from optimizer.search_space import seed_single_techniques

    monkeypatch.setattr(system, "cpu_capabilities", lambda: has)
    r = load_recipe(
        write_recipe(
            {
                "name": "isa",
                "model": {"source": str(tiny_bert_dir)},
                "task": "embedding",
                "data": {"eval": {"source": "stdlib-docs"}},
                "passes": [
                    {"name": "ov-export", "enabled": {"choice": [True, False]}},
                    {"name": "ov-int8-static", "enabled": {"choice": [True, False]}},
                ],
            }
        )
    )
    study = optuna.create_study()
    queued, left = seed_single_techniques(study, r)
    seeded = [t.system_attrs["fixed_params"] for t in study.get_trials(deepcopy=False)]  # queued, not yet run
    if has:
        assert queued == 2 and not left and any(p.get("1.ov-int8-static.enabled") for p in seeded)
    else:
        assert queued == 1 and not any(p.get("1.ov-int8-static.enabled") for p in seeded)
        assert left == ["ov-int8-static (its speed-up needs int8-dot kernels, which this CPU lacks)"]
    assert seed_single_techniques(optuna.create_study(), r, device="cuda")[0] == 2  # a GPU run: not this CPU's kernels
