"""Speed harness on tiny random-weight BERT and Llama: real-token counts, repeats, spread."""

from __future__ import annotations

import pytest
import torch

from optimizer.measure import speed
from optimizer.recipe import ModelSpec
from optimizer.runtimes import load_candidate


def test_stat_summary():
    s = speed.Stat.of([1.0, 2.0, 3.0, 10.0])
    assert s.median == 2.5 and s.min == 1 and s.max == 10 and s.n == 4 and s.cv > 0.5
    assert speed.percentile([1, 2, 3, 4, 5], 0.5) == 3 and speed.percentile([0, 10], 0.95) == pytest.approx(9.5)


def test_thread_count_is_applied():
    before = torch.get_num_threads()
    try:
        assert speed.set_threads(1) == 1 and torch.get_num_threads() == 1 and speed.threads() == 1
    finally:
        speed.set_threads(before)


def test_encoder_bench_counts_real_tokens(tiny_bert_dir):
    cand = load_candidate(ModelSpec(source=str(tiny_bert_dir)), "embedding", "cpu")
    texts = ["short", "a much longer text with many more words in it than the first one"] * 4
    # length-sorted batches of 3 from 4 long + 4 short texts: the second batch mixes lengths
    r = speed.bench_encoder(cand, texts, batch_size=3, warmup=1, repeats=3, request_latency=True)
    expected = sum(len(ids) for ids in cand.tokenizer(texts)["input_ids"])
    assert r["real_tokens"] == expected < r["padded_tokens"]
    tps = r["input_tokens_per_s"]
    assert tps["n"] == 3 and 0 < tps["min"] <= tps["median"] <= tps["max"]
    assert r["sequences_per_s"]["median"] == pytest.approx(tps["median"] * len(texts) / expected, rel=1e-6)
    assert r["peak_rss_bytes"] > 10 * 2**20
    lat = r["request_latency_s"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]


def test_request_latency_is_each_requests_batch_in_arrival_order(tiny_bert_dir, monkeypatch):
    """Arrival order, not length order: a short request that arrives with a long one waits for it."""
    cand = load_candidate(ModelSpec(source=str(tiny_bert_dir)), "embedding", "cpu")
    texts = ["short", "a much longer text " * 20, "tiny", "brief"]
    seen = []
    real = type(cand).forward

    def forward(self, ids, mask):
        seen.append(int(mask.sum(1).min()))  # the shortest request in each batch
        return real(self, ids, mask)

    monkeypatch.setattr(type(cand), "forward", forward)
    lat = speed.request_latencies(cand, texts, batch_size=2, streams=1)
    assert len(lat) == 4 and lat[0] == lat[1] and lat[2] == lat[3]  # one figure per request, its batch's
    short = len(cand.tokenizer("short")["input_ids"])
    assert seen[0] == short < len(cand.tokenizer(texts[1])["input_ids"])  # "short" was batched with the long text


def test_memory_served_alone_is_not_the_callers_memory(tiny_bert_dir):
    """The probe runs in a fresh process: what the caller holds (here 600 MiB) is not counted."""
    import psutil

    from optimizer.data import stdlib_split
    from optimizer.measure.alone import serving_memory

    ballast = torch.ones(600 * 2**20 // 4)  # noqa: F841 - held while the probe runs
    texts = [e.text for e in stdlib_split("eval")[:16]]
    m = serving_memory("embedding", texts, {"batch_size": 4}, 1, model={"source": str(tiny_bert_dir)})
    assert psutil.Process().memory_info().rss > 600 * 2**20 > m["peak_rss_bytes"]
    assert 0 < m["libraries_rss_bytes"] < m["peak_rss_bytes"] and m["model_rss_bytes"] > 0


def test_causal_bench_prefill_and_decode(tiny_llama_dir):
    cand = load_candidate(ModelSpec(source=str(tiny_llama_dir)), "causal-lm", "cpu")
    from optimizer.data import stdlib_split

    texts = [e.text for e in stdlib_split("eval")[:40]]
    r = speed.bench_causal_lm(cand, texts, batch_size=2, prompt_tokens=16, new_tokens=8, warmup=1, repeats=3)
    assert r["input_tokens_per_s"]["median"] > 0 and r["output_tokens_per_s"]["median"] > 0
    assert r["time_to_first_token_s"]["n"] == 3
    assert 0 < r["token_latency_s"]["p50"] <= r["token_latency_s"]["p95"]


def test_decode_with_cache_matches_full_forward(tiny_llama_dir):
    """The KV-cache path the benchmark times computes the same logits as a full forward."""
    cand = load_candidate(ModelSpec(source=str(tiny_llama_dir)), "causal-lm", "cpu")
    ids = torch.randint(3, 300, (2, 10))
    mask = torch.ones_like(ids)
    logits, state = cand.prefill(ids[:, :9], mask[:, :9])
    step, _ = cand.decode(ids[:, 9:], state)
    full = cand.forward(ids, mask)
    assert torch.allclose(logits, full[:, 8], atol=1e-4) and torch.allclose(step, full[:, 9], atol=1e-4)


def test_causal_bench_rejects_impossible_shapes(tiny_llama_dir):
    from optimizer.errors import UserError

    cand = load_candidate(ModelSpec(source=str(tiny_llama_dir)), "causal-lm", "cpu")
    with pytest.raises(UserError, match="fewer than"):
        speed.bench_causal_lm(cand, ["tiny"], 4, 64, 8, 0, 1)
    with pytest.raises(UserError, match="exceeds the model's context"):
        speed.bench_causal_lm(cand, ["word " * 3000], 1, 250, 64, 0, 1)


@pytest.mark.parametrize("side", ["right", "left"])
def test_batches_are_the_tokenizers_own_padded_batches(tiny_bert_dir, tiny_llama_dir, side):
    """make_batches tokenizes once and pads each batch itself: the same tensors as the tokenizer padding
    each batch, on either padding side, sorted or in arrival order."""
    from optimizer.tasks import make_batches

    texts = [("word " * n).strip() for n in (3, 17, 1, 9, 30, 5, 12)]
    for folder, task in ((tiny_bert_dir, "embedding"), (tiny_llama_dir, "causal-lm")):
        cand = load_candidate(ModelSpec(source=str(folder)), task, "cpu")
        cand.tokenizer.padding_side = side
        for sort in (True, False):
            for b in make_batches(cand, texts, 3, max_length=16, sort=sort):
                ref = cand.tokenizer(
                    [texts[i] for i in b.index], padding=True, truncation=True, max_length=16, return_tensors="pt"
                )
                assert torch.equal(b.input_ids, ref["input_ids"]) and torch.equal(b.attention_mask, ref["attention_mask"])
