"""Evaluators on inputs with known answers, and on tiny real (random-weight) models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from optimizer.data import Dataset
from optimizer.errors import UserError
from optimizer.measure.quality import QualityEvaluator, cosine_rows, retrieval_values
from optimizer.measure.stats import paired_bootstrap
from optimizer.recipe import ModelSpec
from optimizer.runtimes import load_candidate
from tests.conftest import STORIES, needs_stories


def test_retrieval_known_ranks():
    docs = np.eye(4)
    # query 0 finds doc 0 first; query 1's own doc ranks 2nd; query 2's own doc ranks 4th (last)
    queries = np.array([[1, 0, 0, 0], [0.9, 0.5, 0, 0], [0.1, 0.3, 0.05, 0.2], [0, 0, 0, 1.0]])
    v = retrieval_values(queries, docs)
    assert v["mrr"].tolist() == pytest.approx([1, 1 / 2, 1 / 4, 1])
    assert v["recall@1"].tolist() == [1, 0, 0, 1]
    assert v["ndcg@10"].tolist() == pytest.approx([1, 1 / math.log2(3), 1 / math.log2(5), 1])


def test_retrieval_ties_are_not_free_wins():
    v = retrieval_values(np.ones((3, 2)), np.ones((3, 2)))  # every document scores the same
    assert v["recall@1"].tolist() == pytest.approx([1 / 3] * 3)
    assert v["mrr"].tolist() == pytest.approx([1 / 2] * 3)


def test_retrieval_with_a_second_query_and_both_directions_averages_each_examples_retrievals():
    docs = np.eye(3)
    queries = np.array([[1.0, 0, 0], [0.9, 0.5, 0], [0, 0, 1.0]])  # query 1 finds doc 0 first: rank 2
    second = np.array([[0.6, 0.8, 0], [0, 1.0, 0], [0, 0, 1.0]])  # second query 0 finds doc 1 first: rank 2
    assert retrieval_values(queries, docs, second)["mrr"].tolist() == pytest.approx([3 / 4, 3 / 4, 1])
    both = retrieval_values(queries, docs, second, both=True)
    # document 0 retrieves query 0 first (1.0 > 0.9) and second query 0 first (0.6 > 0); document 1
    # retrieves query 1 first (0.5 > 0), and second query 1 first (1.0 > 0.8)
    assert both["mrr"].tolist() == pytest.approx([(1 + 1 / 2 + 1 + 1) / 4, (1 / 2 + 1 + 1 + 1) / 4, 1])
    assert retrieval_values(queries, docs, both=True)["recall@1"].tolist() == pytest.approx([1, 1 / 2, 1])


def test_a_second_query_per_document_goes_through_the_evaluator_and_narrows_nothing_it_should_not(tiny_bert_dir):
    base = load_candidate(ModelSpec(source=str(tiny_bert_dir)), "embedding", "cpu")
    pairs = _pairs(12)
    named = Dataset("pairs", pairs.texts, pairs.texts_b, queries_2=[f"name {i}" for i in range(12)])
    forward = QualityEvaluator("embedding", pairs, ["mrr", "fidelity"], 8).evaluate(base)
    ev = QualityEvaluator("embedding", named, ["mrr", "fidelity"], 8, both_directions=True)
    v = ev.evaluate(base)
    assert len(v["mrr"].values) == 12  # one figure per example, whatever its retrievals
    assert len(v["fidelity"].values) == 36  # one per text: queries, documents, second queries
    assert v["mrr"].value != pytest.approx(forward["mrr"].value)


def test_cosine_rows():
    assert cosine_rows(np.array([[1.0, 0], [1, 1]]), np.array([[2.0, 0], [-1, -1]])).tolist() == pytest.approx([1, -1])


def _pairs(n: int = 24) -> Dataset:
    from optimizer.data import stdlib_split

    e = [x for x in stdlib_split("eval") if len(x.body.split()) > 12][:n]
    return Dataset("pairs", [x.summary for x in e], [x.body for x in e])


def test_embedding_evaluator_on_tiny_bert(tiny_bert_dir):
    base = load_candidate(ModelSpec(source=str(tiny_bert_dir)), "embedding", "cpu")
    assert base.info.pooling == "mean" and base.info.normalize
    ev = QualityEvaluator("embedding", _pairs(), ["mrr", "recall@1", "ndcg@10", "fidelity"], 8)
    b = ev.evaluate(base)
    assert b["fidelity"].value == 1.0 and 0 < b["mrr"].value <= 1
    same = load_candidate(ModelSpec(source=str(tiny_bert_dir)), "embedding", "cpu")
    c = ev.evaluate(same, reference=base)
    assert c["fidelity"].value == pytest.approx(1.0, abs=1e-5)
    assert c["mrr"].value == pytest.approx(b["mrr"].value, abs=1e-6)
    with torch.no_grad():  # damage the copy: fidelity and retrieval must notice
        for p in same.module.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    c2 = ev.evaluate(same, reference=base)
    assert c2["fidelity"].value < 0.99
    assert paired_bootstrap(b["fidelity"], c2["fidelity"]).drop > 0.01


def test_causal_lm_uniform_model_has_vocab_perplexity(tiny_llama_dir):
    cand = load_candidate(ModelSpec(source=str(tiny_llama_dir)), "causal-lm", "cpu")
    with torch.no_grad():
        cand.module.lm_head.weight.zero_()  # logits all zero -> uniform next-token distribution
    texts = ["The quick brown fox jumps over the lazy dog.", "Return a new list of items.", "x"]
    ev = QualityEvaluator("causal-lm", Dataset("text", texts), ["perplexity", "kl", "top1-agreement"], 2)
    vals = ev.evaluate(cand)
    assert vals["perplexity"].value == pytest.approx(cand.module.config.vocab_size, rel=1e-4)
    assert vals["kl"].value == 0 and vals["top1-agreement"].value == 1
    # per-example token counts ignore padding: a 1-token text predicts nothing
    toks = vals["perplexity"].values[:, 1]
    ids = cand.tokenizer(texts)["input_ids"]
    assert toks.tolist() == [len(i) - 1 for i in ids]


def test_causal_lm_kl_against_reference(tiny_llama_dir):
    base = load_candidate(ModelSpec(source=str(tiny_llama_dir)), "causal-lm", "cpu")
    other = load_candidate(ModelSpec(source=str(tiny_llama_dir)), "causal-lm", "cpu")
    texts = ["Open a file and return a stream.", "Split the pathname into a pair."]
    ev = QualityEvaluator("causal-lm", Dataset("text", texts), ["perplexity", "kl", "top1-agreement"], 2)
    same = ev.evaluate(other, reference=base)
    assert same["kl"].value == pytest.approx(0, abs=1e-6) and same["top1-agreement"].value == 1
    with torch.no_grad():
        other.module.lm_head.weight.mul_(3.0)  # sharper distribution, same argmax
    sharp = ev.evaluate(other, reference=base)
    assert sharp["kl"].value > 1e-3 and sharp["top1-agreement"].value == 1


def test_classification_metrics(tiny_classifier_dir):
    cand = load_candidate(ModelSpec(source=str(tiny_classifier_dir)), "classification", "cpu")
    texts = ["good thing", "bad thing", "another text", "more"]
    from optimizer import tasks

    pred = tasks.classify(cand, texts, 2).argmax(1)
    labels = ["pos" if p == 1 else "neg" for p in pred]  # labels equal to predictions -> accuracy 1
    ev = QualityEvaluator("classification", Dataset("labeled", texts, labels=labels), ["accuracy", "f1", "agreement"], 2)
    v = ev.evaluate(cand)
    assert v["accuracy"].value == 1 and v["f1"].value == 1 and v["agreement"].value == 1
    bad = QualityEvaluator("classification", Dataset("labeled", texts, labels=["maybe"] * 4), ["accuracy"], 2)
    with pytest.raises(UserError, match="label 'maybe'"):
        bad.evaluate(cand)


def test_metric_needs_matching_data():
    with pytest.raises(UserError, match="needs scored-pairs"):
        QualityEvaluator("embedding", _pairs(4), ["spearman"], 2)


def test_broken_bounds_name_each_metric_past_them():
    """A chain is broken, not degraded, past a metric's bound: perplexity 10x the baseline's, KL of 2 nats,
    top-1 agreement of 0.2, embedding fidelity of 0.5; inside them nothing is said."""
    from optimizer.measure.stats import Drop
    from optimizer.metrics import broken_by

    def d(base: float, cand: float) -> Drop:
        return Drop("m", base, cand, base - cand, base - cand, base - cand, None, None, None, 0.95, 100)

    assert broken_by({"perplexity": d(30.0, 2.9e6), "kl": d(0.0, 12.0), "top1-agreement": d(1.0, 0.01)}) == [
        "perplexity 2.9e+06 is 96,667x the baseline's 30",
        "kl 12 (broken at 2 or more)",
        "top1-agreement 0.01 (broken at 0.2 or less)",
    ]
    assert broken_by({"perplexity": d(30.0, 290.0), "kl": d(0.0, 1.9), "top1-agreement": d(1.0, 0.21)}) == []
    assert broken_by({"fidelity": d(1.0, 0.4), "mrr": d(0.9, 0.0)}) == ["fidelity 0.4 (broken at 0.5 or less)"]


@needs_stories
def test_a_chain_that_breaks_a_real_model_is_reported_not_priced(write_recipe, tmp_path, capsys):
    """stories260K with 97% of its weights pruned: `costopt run` measures its quality, says in one line
    that the chain broke the model, measures no speed, prices nothing and exits 3; the result keeps it."""
    import json

    from optimizer.cli import main

    recipe = write_recipe(
        {
            "name": "broken",
            "model": {"source": str(STORIES)},
            "task": "causal-lm",
            "data": {"eval": {"source": "stdlib-docs", "limit": 24}},
            "quality": {"metrics": ["perplexity", "kl", "top1-agreement"], "bootstrap": 200},
            "speed": {"memory_alone": False, "batch_size": 2, "prompt_tokens": 16, "new_tokens": 4, "warmup": 0, "repeats": 1},
            "hardware": {"threads": 1, "catalog": "aws-c7a.large"},
            "output_dir": str(tmp_path / "runs"),
            "passes": [{"name": "prune-magnitude", "sparsity": 0.97}],
        }
    )
    assert main(["run", str(recipe), "-q"]) == 3
    out = capsys.readouterr().out
    assert "broken chain: " in out and "its speed was not measured and it is not priced" in out
    result = json.loads(next((tmp_path / "runs").glob("broken-*/result.json")).read_text())
    assert result["status"] == "broken" and result["error"].startswith("broken chain: ")
    cand = result["candidate"]
    assert cand["broken"] == result["error"] and cand["speed"] is None and cand["cost"] is None
    assert cand["drops"]["kl"]["candidate"] >= 2.0 or cand["drops"]["top1-agreement"]["candidate"] <= 0.2
