"""Recipe validation: each mistake gives one line naming the field and the fix."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from optimizer.cli import main
from optimizer.errors import UserError
from optimizer.ranges import Choice, FloatRange
from optimizer.recipe import load_recipe

GOOD = {
    "name": "t",
    "model": {"source": "org/some-model"},
    "task": "embedding",
    "data": {"eval": {"source": "stdlib-docs"}},
    "passes": [{"name": "cast", "dtype": "bfloat16"}],
}


def mutate(path: str, value, delete: bool = False) -> dict:
    raw = copy.deepcopy(GOOD)
    node = raw
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if k.isdigit() else node.setdefault(k, {})
    if delete:
        del node[keys[-1]]
    elif keys[-1].isdigit():
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value
    return raw


MISTAKES = [
    # (mutation, text the message must contain)
    (lambda: mutate("colour", "red"), "colour: unknown key"),
    (lambda: mutate("model.sourc", "x"), "model.sourc: unknown key"),
    (lambda: mutate("model.source", None, delete=True), "model.source: required field is missing"),
    (lambda: mutate("task", "translation"), "task: 'translation' is not allowed"),
    (lambda: mutate("speed.batch_size", "big"), "speed.batch_size"),
    (lambda: mutate("speed.batch_size", 0), "speed.batch_size"),
    (lambda: mutate("quality.confidence", 1.5), "quality.confidence"),
    (lambda: mutate("passes.0", {"name": "quantise"}), "passes[0].name: unknown pass 'quantise'"),
    (lambda: mutate("passes.0", {"name": "cast", "dtype": "int3"}), "passes[0].dtype"),
    (lambda: mutate("passes.0", {"name": "cast", "bits": 4}), "passes[0].bits: unknown parameter"),
    (lambda: mutate("passes.0", {"name": "cast", "dtype": {"choice": ["bfloat16", "fp8"]}}), "search value 'fp8'"),
    (lambda: mutate("data.eval.source", "missing.jsonl"), "missing.jsonl' does not exist"),
    (lambda: mutate("model.source", "./no/such/folder"), "model.source: folder"),
    (lambda: mutate("quality.metrics", ["perplexity"]), "quality.metrics[0]: 'perplexity' is not a embedding metric"),
    (lambda: mutate("quality.primary", "spearman"), "quality.primary"),
    (lambda: mutate("hardware.device", "tpu"), "hardware.device"),
    (lambda: mutate("name", "a/b"), "name:"),
    (lambda: mutate("data.eval", "stdlib-docs"), "data.eval"),
]


@pytest.mark.parametrize("make, expected", MISTAKES, ids=[m[1][:40] for m in MISTAKES])
def test_each_mistake_is_one_clear_line(make, expected, write_recipe):
    path = write_recipe(make())
    with pytest.raises(UserError) as exc:
        load_recipe(path)
    line = exc.value.one_line()
    assert expected in line, line
    assert "\n" not in line
    assert "fix:" in line


def test_search_range_validation(write_recipe):
    raw = mutate("passes.0", {"name": "cast", "dtype": {"choice": ["bfloat16", "float16"]}})
    rec = load_recipe(write_recipe(raw))
    assert rec.has_ranges()
    assert isinstance(Choice.model_validate({"choice": [1]}), Choice)
    with pytest.raises(Exception, match="reversed"):
        FloatRange.model_validate({"float": [1.0, 0.1]})


def test_invalid_yaml_and_non_mapping(write_recipe):
    with pytest.raises(UserError, match="not valid YAML at line 2"):
        load_recipe(write_recipe("model:\n\tsource: x\n"))
    with pytest.raises(UserError, match="top level must be a mapping"):
        load_recipe(write_recipe("- just\n- a list\n"))
    with pytest.raises(UserError, match="does not exist"):
        load_recipe("/no/such/recipe.yaml")


def test_set_overrides_and_env_expansion(write_recipe, monkeypatch, tmp_path):
    raw = copy.deepcopy(GOOD)
    raw["model"]["source"] = "${COSTOPT_TEST_MODEL:-org/default}"
    path = write_recipe(raw)
    assert load_recipe(path).model.source == "org/default"
    monkeypatch.setenv("COSTOPT_TEST_MODEL", "org/from-env")
    assert load_recipe(path).model.source == "org/from-env"
    rec = load_recipe(path, ["speed.batch_size=8", "hardware.threads=1"])
    assert rec.speed.batch_size == 8 and rec.hardware.threads == 1
    with pytest.raises(UserError, match="has no '='"):
        load_recipe(path, ["speed.batch_size"])
    # a number indexes a list: one pass's parameter
    assert load_recipe(path, ["passes.0.dtype=float16"]).passes[0].params == {"dtype": "float16"}
    with pytest.raises(UserError, match=r"passes is a list of \d+, and '9' is not an index in it; fix: use passes.N"):
        load_recipe(path, ["passes.9.x=1"])
    with pytest.raises(UserError, match="is not an index"):
        load_recipe(path, ["passes.first.x=1"])
    raw["model"]["source"] = "${COSTOPT_UNSET_VAR}"
    with pytest.raises(UserError, match="COSTOPT_UNSET_VAR is not set"):
        load_recipe(write_recipe(raw))


def test_relative_paths_resolve_against_recipe_folder(tmp_path, write_recipe):
    (tmp_path / "eval.jsonl").write_text('{"query": "a", "document": "b"}\n')
    raw = mutate("data.eval.source", "eval.jsonl")
    rec = load_recipe(write_recipe(raw))
    assert Path(rec.data.eval.source) == (tmp_path / "eval.jsonl").resolve()


def test_shipped_recipes_validate_with_nothing_outside_the_repository():
    repo = Path(__file__).resolve().parents[1]
    shipped = sorted(repo.glob("recipes/*.yaml")) + sorted(repo.glob("experiments/*/*.yaml"))
    extras = (repo / "pyproject.toml").read_text()
    for f in shipped:  # stories260K and the shapes are vendored under models/; other models are packages an extra installs
        rec = load_recipe(f)
        for spec in (rec.model, rec.speed.model):
            if spec is None:
                continue
            if spec.source.isidentifier():  # an installed model package: one of the project's extras installs it
                assert f'"{spec.source.replace("_", "-")}>=' in extras, (f, spec.source)
            else:
                assert Path(spec.source).resolve().is_relative_to(repo / "models"), (f, spec.source)
    assert len(shipped) >= 15


def test_a_shape_loads_with_seeded_random_weights_and_no_weight_file(tiny_llama_dir, tmp_path):
    import shutil

    import torch

    from optimizer.model import ModelSpec
    from optimizer.runtimes import load_candidate

    shape = tmp_path / "shape"
    shape.mkdir()
    for f in tiny_llama_dir.iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, shape)
    spec = ModelSpec(source=str(shape), random_weights=True)
    a, b = load_candidate(spec, "causal-lm", "cpu"), load_candidate(spec, "causal-lm", "cpu")
    trained = load_candidate(ModelSpec(source=str(tiny_llama_dir)), "causal-lm", "cpu")
    with torch.no_grad():
        for p in trained.module.parameters():
            p.add_(1.0)
    trained.module.save_pretrained(tmp_path / "saved")  # a folder whose weights differ from the seeded ones
    shutil.copy(shape / "tokenizer.json", tmp_path / "saved")
    c = load_candidate(ModelSpec(source=str(tmp_path / "saved"), random_weights=True), "causal-lm", "cpu")
    wa, wb, wc, wt = (next(iter(x.module.state_dict().values())) for x in (a, b, c, trained))
    assert torch.equal(wa, wb) and torch.equal(wa, wc)  # seeded: the same every time, whatever the folder holds
    assert not torch.equal(wc, wt)  # the saved weights are not read
    assert a.parameter_counts()[0] == trained.parameter_counts()[0]
    ids = torch.tensor([[1, 5, 9, 3]])
    assert a.forward(ids, torch.ones_like(ids)).shape == (1, 4, trained.module.config.vocab_size)
    with pytest.raises(UserError, match="model.source|could not load"):
        load_candidate(ModelSpec(source=str(shape)), "causal-lm", "cpu")  # without random_weights: no weights, one line


def test_cli_validate_exit_codes(write_recipe, capsys):
    assert main(["validate", str(write_recipe(GOOD))]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["validate", str(write_recipe(mutate("task", "nope")))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("costopt: error:") and "task" in err and len(err.splitlines()) == 1
