"""speed.model: quality measured on model.source, speed and cost on a model of the serving shape with the
same passes applied (a run and a search), and a missing speed.model folder is a one-line error."""

from __future__ import annotations

import optuna
import pytest

from optimizer.errors import UserError
from optimizer.measurement import Measurement
from optimizer.recipe import ModelSpec, load_recipe
from optimizer.run_record import run_recipe
from optimizer.runtimes import load_candidate
from optimizer.study import run_search


def _recipe(tiny: str, wide: str, tmp_path, passes: list, **extra) -> dict:
    return {
        "name": "speed-model",
        "model": {"source": tiny},
        "task": "causal-lm",
        "data": {"eval": {"source": "stdlib-docs", "limit": 24}},
        "quality": {"metrics": ["perplexity", "kl"], "bootstrap": 200},
        "speed": {"batch_size": 2, "prompt_tokens": 16, "new_tokens": 4, "warmup": 0, "repeats": 1, "model": {"source": wide}},
        "hardware": {"threads": 1, "catalog": "aws-c7a.large"},
        "output_dir": str(tmp_path / "runs"),
        "passes": passes,
    } | extra


def _params(folder) -> int:
    return load_candidate(ModelSpec(source=str(folder)), "causal-lm", "cpu").parameter_counts()[0]


def test_run_times_the_speed_model_and_judges_model_source(write_recipe, tiny_llama_dir, wide_llama_dir, tmp_path):
    rec = load_recipe(
        write_recipe(_recipe(str(tiny_llama_dir), str(wide_llama_dir), tmp_path, [{"name": "cast", "dtype": "bfloat16"}]))
    )
    res, _ = run_recipe(rec, progress=False)
    wide, tiny = _params(wide_llama_dir), _params(tiny_llama_dir)
    assert wide > 2 * tiny
    for side in ("baseline", "candidate"):
        assert res[side]["speed"]["model"] == {"source": str(wide_llama_dir), "parameters": wide}
    assert res["candidate"]["footprint"]["parameters"] == tiny  # the artifact is model.source's
    assert "speed.model pass cast" in res["candidate"]["timings"] and "pass cast" in res["candidate"]["timings"]
    assert res["candidate"]["drops"]["kl"]["candidate"] > 0  # quality came from the cast tiny model, not the baseline again
    assert any("speed.model" in n and "quality measured on" in n for n in res["notes"])


def test_search_prices_the_speed_model(write_recipe, tiny_llama_dir, wide_llama_dir, tmp_path):
    rec = load_recipe(
        write_recipe(
            _recipe(
                str(tiny_llama_dir),
                str(wide_llama_dir),
                tmp_path,
                [{"name": "cast", "dtype": {"choice": ["bfloat16", "float16"]}}],
                search={"trials": 2, "sampler": "grid", "constraint": {"metric": "perplexity", "max_drop": 0.5}},
            )
        )
    )
    study = run_search(rec)
    wide = _params(wide_llama_dir)
    assert study.user_attrs["baseline"]["speed"]["model"]["parameters"] == wide
    for t in study.get_trials():
        assert t.state == optuna.trial.TrialState.COMPLETE, Measurement.of(t).error
        assert Measurement.of(t).speed["model"]["parameters"] == wide
        assert any(k.startswith("speed.model pass cast") for k in Measurement.of(t).timings)


def test_missing_speed_model_folder_names_the_field(write_recipe, tiny_llama_dir, tmp_path):
    path = write_recipe(_recipe(str(tiny_llama_dir), "./no-such-model", tmp_path, []))
    with pytest.raises(UserError, match=r"speed\.model\.source: folder .* does not exist"):
        load_recipe(path)
