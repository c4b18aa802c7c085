"""The Python API: optimizer.run and optimizer.search with an in-memory model and a dict recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModel, AutoTokenizer

import optimizer
from optimizer.errors import UserError


def _recipe(tmp_path: Path, **extra) -> dict:
    return {
        "name": "api",
        "task": "embedding",
        "data": {"eval": {"source": "stdlib-docs", "limit": 60}},
        "quality": {"metrics": ["mrr", "fidelity"], "bootstrap": 200},
        "speed": {"memory_alone": False, "batch_size": 8, "texts": 32, "warmup": 1, "repeats": 2},
        "hardware": {"threads": 1, "catalog": "aws-c7a.large"},
        "output_dir": str(tmp_path / "runs"),
        **extra,
    }


def test_run_takes_an_in_memory_model_and_a_dict_recipe(tiny_bert_dir, tmp_path):
    module, tok = AutoModel.from_pretrained(tiny_bert_dir), AutoTokenizer.from_pretrained(tiny_bert_dir)
    recipe = _recipe(tmp_path, passes=[{"name": "cast", "dtype": "bfloat16"}])
    result = optimizer.run(module, recipe, tokenizer=tok)
    assert result["status"] == "ok" and Path(result["result_file"]).is_file()
    assert result["baseline"]["quality"]["fidelity"] == pytest.approx(1.0)
    assert result["candidate"]["speed"]["input_tokens_per_s"]["median"] > 0
    saved = Path(result["config"]["model"]["source"])
    assert saved.parent == tmp_path / "runs" / "models" and (saved / "config.json").is_file()
    with pytest.raises(UserError, match="needs its tokenizer"):
        optimizer.run(module, recipe)


def test_search_returns_the_confirmed_choice_and_writes_deploy_yaml(tiny_bert_dir, tmp_path):
    recipe = _recipe(
        tmp_path,
        search={"trials": 3, "sampler": "random", "screen_examples": None, "constraint": {"metric": "fidelity", "max_drop": 0.5}},
        passes=[{"name": "cast", "dtype": {"choice": ["bfloat16", "float16"]}}],
    )
    outcome = optimizer.search(str(tiny_bert_dir), recipe)
    assert outcome.exit_code == 0 and outcome.chosen is not None and outcome.deploy_file.is_file()
    assert outcome.config["passes"][0]["name"] == "cast" and outcome.confirmation is not None
    assert optimizer.load_deployment(outcome.deploy_file).encode("a text").shape == (32,)
