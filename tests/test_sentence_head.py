"""sentence-transformers models are scored as sentence-transformers runs them: prompts before the
transformer, then pooling, Dense layers and Normalize; a module costopt cannot reproduce is refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from optimizer import tasks
from optimizer.data import Dataset
from optimizer.errors import UserError
from optimizer.recipe import ModelSpec
from optimizer.runtimes import load_candidate, reload_saved


def _by_hand(folder, texts: list[str]) -> np.ndarray:
    """transformer -> mean pooling -> tanh(x W^T + b) -> L2 norm, written out in torch."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    dense = load_file(str(folder / "2_Dense" / "model.safetensors"))
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        states = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (states * m).sum(1) / m.sum(1)
    y = torch.tanh(pooled @ dense["linear.weight"].T + dense["linear.bias"])
    return torch.nn.functional.normalize(y, dim=-1).numpy()


QUERIES = ["how do I sort a list", "what is a context manager"]
DOCS = ["Return a new sorted list from the items in iterable.", "An object that defines the runtime context."]


def test_dense_and_prompts_are_applied_as_sentence_transformers_does(dense_prompt_bert_dir):
    cand = load_candidate(ModelSpec(source=str(dense_prompt_bert_dir)), "embedding", "cpu")
    head = cand.info.head
    assert head.pooling == "mean" and head.normalize and len(head.dense) == 1
    assert head.prompt("query") == "query: " and head.prompt("document") == "passage: " and head.prompt("text") == ""
    pairs = tasks.prompted(cand, Dataset("pairs", QUERIES, DOCS))
    assert pairs.texts == ["query: " + q for q in QUERIES] and pairs.texts_b == ["passage: " + d for d in DOCS]
    got = tasks.embed(cand, pairs.all_texts(), batch_size=4)
    want = _by_hand(dense_prompt_bert_dir, pairs.all_texts())
    assert got.shape == (4, 16) and np.allclose(got, want, atol=1e-5)
    # the prompts are part of the input: the same texts without them give other vectors
    assert not np.allclose(got, tasks.embed(cand, QUERIES + DOCS, batch_size=4), atol=1e-3)  # prompts change them


def test_the_head_travels_with_every_artifact(dense_prompt_bert_dir, tmp_path):
    from optimizer.passes import PassContext, build_pass

    cand = load_candidate(ModelSpec(source=str(dense_prompt_bert_dir)), "embedding", "cpu")
    texts = ["query: " + q for q in QUERIES]
    want = tasks.embed(cand, texts, 4)
    ctx = PassContext(task="embedding", device="cpu", threads=1, seed=0, work_dir=tmp_path / "w")
    graph = build_pass("onnx-export", {}).apply(cand, ctx)
    again = reload_saved(graph.save(tmp_path / "onnx"))
    assert (tmp_path / "onnx" / "2_Dense" / "model.safetensors").is_file()
    assert again.info.head.prompts == cand.info.head.prompts and len(again.info.head.dense) == 1
    assert np.allclose(tasks.embed(again, texts, 4), want, atol=1e-4)


def test_a_deployment_encodes_with_a_named_prompt(dense_prompt_bert_dir):
    from optimizer.deploy import Deployment

    dep = Deployment(load_candidate(ModelSpec(source=str(dense_prompt_bert_dir)), "embedding", "cpu"), {"batch_size": 4})
    assert np.allclose(
        dep.encode(QUERIES, prompt_name="query"), _by_hand(dense_prompt_bert_dir, ["query: " + q for q in QUERIES]), atol=1e-5
    )
    assert np.allclose(dep.encode(DOCS), _by_hand(dense_prompt_bert_dir, DOCS), atol=1e-5)  # no default prompt: none
    with pytest.raises(UserError, match="no prompt named 'passage'"):
        dep.encode(DOCS, prompt_name="passage")


@pytest.mark.parametrize(
    "change, says",
    [
        (
            lambda m, f: m.insert(2, {"idx": 2, "name": "x", "path": "2_LN", "type": "sentence_transformers.models.LayerNorm"}),
            "'sentence_transformers.models.LayerNorm'",
        ),
        (
            lambda m, f: (f / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_weightedmean_tokens": True})),
            "pooling_mode_weightedmean_tokens",
        ),
        (lambda m, f: m.reverse(), "after Normalize"),
        (
            lambda m, f: (f / "2_Dense" / "config.json").write_text(
                json.dumps({"activation_function": "torch.nn.modules.activation.Softplus"})
            ),
            "activation 'Softplus'",
        ),
    ],
    ids=["unknown-module", "weighted-mean", "normalize-first", "unknown-activation"],
)
def test_a_module_costopt_cannot_reproduce_is_refused_in_one_line(
    change, says, dense_prompt_bert_dir, tmp_path, write_recipe, capsys
):
    from optimizer.cli import main

    folder = tmp_path / "model"
    shutil.copytree(dense_prompt_bert_dir, folder)
    modules = json.loads((folder / "modules.json").read_text())
    change(modules, folder)
    for i, m in enumerate(modules):
        m["idx"] = i
    (folder / "modules.json").write_text(json.dumps(modules))
    recipe = write_recipe(
        {
            "name": "head",
            "model": {"source": str(folder)},
            "task": "embedding",
            "data": {"eval": {"source": "stdlib-docs", "limit": 20}},
            "output_dir": str(tmp_path / "runs"),
        }
    )
    assert main(["run", str(recipe), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "cannot reproduce" in err[0], err


def test_sentence_transformers_itself_agrees(dense_prompt_bert_dir):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(dense_prompt_bert_dir), device="cpu")
    cand = load_candidate(ModelSpec(source=str(dense_prompt_bert_dir)), "embedding", "cpu")
    want_q = model.encode(QUERIES, prompt_name="query")
    want_d = model.encode(DOCS, prompt_name="document")
    pairs = tasks.prompted(cand, Dataset("pairs", QUERIES, DOCS))
    got = tasks.embed(cand, pairs.all_texts(), 4)
    assert np.allclose(got[:2], want_q, atol=1e-5) and np.allclose(got[2:], want_d, atol=1e-5)
