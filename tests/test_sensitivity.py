"""Sensitivity-ranked exclusion: block patterns per runtime, the ranking before a search, keep_sensitive
expanded into each trial's exclude list, and the report's table and chart."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from optimizer.errors import UserError
from optimizer.measurement import Measurement
from optimizer.passes import PassContext, build_pass
from optimizer.recipe import ModelSpec, load_recipe
from optimizer.runtimes import load_candidate
from optimizer.sensitivity import ANY_BLOCK, PARTS, block_pattern, only


def _names(folder: Path, task: str, chain: list[tuple[str, dict]], tmp_path: Path) -> list[str]:
    """The names a pass's exclude regexes are matched against, after `chain`."""
    import onnx

    ctx = PassContext(task=task, device="cpu", threads=1, seed=0, work_dir=tmp_path / "work")
    cand = load_candidate(ModelSpec(source=str(folder)), task, "cpu")
    for name, params in chain:
        cand = build_pass(name, params).apply(cand, ctx)
    if cand.runtime == "onnxruntime":
        return [n.name for n in onnx.load(str(cand.model_path)).graph.node if n.op_type in ("MatMul", "Attention")]
    if cand.runtime == "openvino":
        from optimizer.runtimes.ov import require_openvino

        model = require_openvino().Core().read_model(str(cand.model_path))
        return [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"]
    return [n for n, m in cand.module.named_modules() if type(m).__name__ == "Linear"]


@pytest.mark.parametrize(
    "chain",
    [[], [("onnx-export", {})], [("onnx-export", {}), ("ort-optimize", {})], [("ov-export", {})]],
    ids=["torch", "onnx", "onnx-fused-attention", "openvino"],
)
def test_block_patterns_split_every_runtimes_names_by_block(tiny_bert_dir, tmp_path, chain):
    """Block 1's pattern matches block 1's matmuls (ONNX Runtime's fused Attention_1 included) and no
    other block's; everything either is in a block or outside them all; NNCF's re.match and the ONNX
    passes' re.search read the patterns alike."""
    names = _names(tiny_bert_dir, "embedding", chain, tmp_path)
    in_block = {i: [n for n in names if re.search(block_pattern(i), n)] for i in (0, 1)}
    assert in_block[0] and in_block[1] and not set(in_block[0]) & set(in_block[1])
    assert all(re.match(block_pattern(1), n) for n in in_block[1])  # NNCF's matching
    assert set(in_block[0]) | set(in_block[1]) == {n for n in names if re.search(ANY_BLOCK, n)}
    assert all("layer.1" in n or n == "Attention_1" for n in in_block[1])
    # `only(p)` excludes everything but the block
    assert [n for n in names if not re.search(only(block_pattern(1)), n)] == in_block[1]
    # a block's four parts split it, each part non-empty, under re.search and re.match alike
    parts = {part: [n for n in in_block[1] if re.search(pat(1), n)] for part, pat in PARTS.items()}
    assert all(parts.values()) and sorted(n for ns in parts.values() for n in ns) == sorted(in_block[1])
    assert all(re.match(pat(1), n) for part, pat in PARTS.items() for n in parts[part])
    assert all(
        "query" in n or "key" in n or "value" in n or "self/MatMul" in n or n == "Attention_1" for n in parts["attention inputs"]
    )
    assert all("attention" in n and "output" in n for n in parts["attention output"])
    assert all("intermediate" in n for n in parts["FFN input"])
    assert all("attention" not in n and "output" in n for n in parts["FFN output"])


def test_keep_sensitive_needs_a_pass_with_an_exclude_list(write_recipe, tiny_bert_dir):
    path = write_recipe(
        {
            "name": "x",
            "model": {"source": str(tiny_bert_dir)},
            "task": "embedding",
            "data": {"eval": {"source": "stdlib-docs"}},
            "passes": [{"name": "cast", "keep_sensitive": 1}],
        }
    )
    with pytest.raises(UserError, match=r"passes\[0\]\.keep_sensitive: cast has no exclude list") as e:
        load_recipe(path)
    assert "ort-int8-dynamic" in e.value.fix


def test_search_ranks_blocks_once_and_keeps_the_k_most_sensitive_out(search_recipe, tiny_bert_dir, tmp_path):
    from optimizer.cli import main

    recipe_file = search_recipe(
        tiny_bert_dir,
        [{"name": "onnx-export"}, {"name": "ort-int8-dynamic", "keep_sensitive": {"choice": [0, 1, 2]}}],
        name="sensitive",
        confirm={"share": 0},
        constraint={"metric": "mrr", "max_drop": 0.05},
    )
    assert main(["search", str(recipe_file), "-q"]) == 0
    study = optuna.load_study(study_name="sensitive", storage=f"sqlite:///{tmp_path / 'runs' / 'sensitive' / 'study.db'}")
    ranking = study.user_attrs["sensitivity"]["1"]
    units = ranking["units"]
    # two blocks' four parts and the rest of the graph, each measured and ranked by fidelity (continuous);
    # one whose outputs did not move is not ranked
    assert ranking["ranked_by"] == "fidelity"
    parts = {f"block {i} {p}" for i in (0, 1) for p in PARTS} | {"outside the blocks"}
    assert units and {u["unit"] for u in units} | set(ranking["unchanged"]) == parts
    assert [u["score"] for u in units] == sorted((u["score"] for u in units), reverse=True)
    assert all(u["drop"]["n"] > 0 and u["drop"]["low"] <= u["drop"]["drop"] <= u["drop"]["high"] for u in units)
    by_k = {}
    for t in study.trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            exclude = Measurement.of(t).passes[1]["params"].get("exclude", [])
            by_k[t.params["1.ort-int8-dynamic.keep_sensitive"]] = exclude
    assert by_k == {k: [u["pattern"] for u in units[:k]] for k in (0, 1, 2)}
    # a second search on the same study reads the ranking from the cache: no unit is rebuilt
    cached = list((tmp_path / "runs" / "sensitive" / "sensitivity").glob("*.json"))
    assert len(cached) == 1
    # the report: a table and a chart, the chosen configuration's kept-out blocks marked
    assert main(["report", str(tmp_path / "runs" / "sensitive"), "--format", "md", "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Block sensitivity" in md and "| rank | part |" in md and "report-sensitivity-1.svg" in md
    assert "<svg" in (tmp_path / "rep" / "report-sensitivity-1.svg").read_text()


def test_a_single_run_with_keep_sensitive_is_refused_in_one_line(write_recipe, tiny_bert_dir, tmp_path, capsys):
    """The ranking is measured by a search; a run says so instead of quantizing everything silently."""
    from optimizer.cli import main

    path = write_recipe(
        {
            "name": "one",
            "model": {"source": str(tiny_bert_dir)},
            "task": "embedding",
            "data": {"eval": {"source": "stdlib-docs", "limit": 40}},
            "passes": [{"name": "onnx-export"}, {"name": "ort-int8-dynamic", "keep_sensitive": 1}],
        }
    )
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keep_sensitive: the block ranking it reads is measured by `costopt search`" in err[0]


LLAMA_BLOCK_1 = {  # block 1's matmul names as torch, the ONNX export and the OpenVINO export give them
    "torch": ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.o_proj", "model.layers.1.mlp.gate_proj",
              "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"],
    "onnx": ["/m/model/layers.1/self_attn/k_proj/MatMul", "/m/model/layers.1/self_attn/MatMul_1",
             "/m/model/layers.1/self_attn/o_proj/MatMul", "/m/model/layers.1/mlp/up_proj/MatMul",
             "/m/model/layers.1/mlp/down_proj/MatMul"],
    "openvino": ["__module.m.model.layers.1.self_attn.v_proj/aten::linear/MatMul",
                 "__module.m.model.layers.1.self_attn.o_proj/aten::linear/MatMul",
                 "__module.m.model.layers.1.mlp.gate_proj/aten::linear/MatMul",
                 "__module.m.model.layers.1.mlp.down_proj/aten::linear/MatMul"],
}  # fmt: skip


@pytest.mark.parametrize("kind", list(LLAMA_BLOCK_1))
def test_llama_names_fall_in_the_expected_part(kind):
    want = {"q_proj": "attention inputs", "k_proj": "attention inputs", "v_proj": "attention inputs",
            "MatMul_1": "attention inputs", "o_proj": "attention output", "gate_proj": "FFN input",
            "up_proj": "FFN input", "down_proj": "FFN output"}  # fmt: skip
    for name in LLAMA_BLOCK_1[kind]:
        [part] = [p for p, pat in PARTS.items() if re.match(pat(1), name)]  # exactly one part, NNCF's way too
        assert part == next(v for k, v in want.items() if k in name), name
        assert not any(re.search(pat(0), name) for pat in PARTS.values())  # no other block's
