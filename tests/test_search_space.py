"""The recipe's search space as Optuna sees it: conditional parameters, value kinds, resolvable choices."""

from __future__ import annotations

import optuna
import pytest

from optimizer.pipeline import resolved_passes
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
