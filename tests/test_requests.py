"""Requests served at once (measure/requests.py): static batches and transformers' continuous batching."""

from __future__ import annotations

import pytest
import torch

from optimizer.errors import UserError
from optimizer.measure.requests import Request, bench_requests, continuous_engine, request_mix, serve_static
from optimizer.passes import PassContext, build_pass
from optimizer.recipe import ModelSpec, load_recipe
from optimizer.runtimes import load_candidate, reload_saved

TEXTS = [
    f"def function_{i}(x):\n    return x * {i} + sum(range({i})) # a docstring of some length {i}" * (1 + i % 3)
    for i in range(12)
]


def _plain(folder):
    return load_candidate(ModelSpec(source=str(folder)), "causal-lm", "cpu")


def _continuous(folder, tmp_path, **params):
    ctx = PassContext(task="causal-lm", device="cpu", threads=1, seed=0, work_dir=tmp_path)
    return build_pass("torch-continuous-batching", params).apply(_plain(folder), ctx)


def _alone(cand, r: Request) -> tuple[int, ...]:
    """Greedy answer of one unpadded request."""
    ids = torch.tensor([r.prompt])
    logits, state = cand.prefill(ids, torch.ones_like(ids))
    out = []
    for _ in range(r.new_tokens):
        nxt = logits.argmax(-1, keepdim=True)
        out.append(int(nxt))
        logits, state = cand.decode(nxt, state)
    return tuple(out)


def test_the_mix_cuts_real_text_and_draws_answer_lengths(tiny_llama_dir):
    cand = _plain(tiny_llama_dir)
    mix = request_mix(cand, TEXTS, 6, prompt_tokens=20, new_tokens=8, seed=3)
    assert len(mix) == 6 and all(8 <= len(r.prompt) <= 20 for r in mix)
    assert all(2 <= r.new_tokens <= 8 for r in mix) and len({r.new_tokens for r in mix}) > 1
    assert mix == request_mix(cand, TEXTS, 6, prompt_tokens=20, new_tokens=8, seed=3)  # seeded
    with pytest.raises(UserError, match="speed.requests = 50, but the eval texts hold only 12") as e:
        request_mix(cand, TEXTS, 50, 20, 8)
    assert "lower speed.requests" in e.value.fix


def test_static_batches_and_continuous_batching_answer_as_each_request_alone(tiny_llama_dir, tmp_path):
    plain = _plain(tiny_llama_dir)
    mix = request_mix(plain, TEXTS, 5, prompt_tokens=24, new_tokens=6, seed=1)
    want = [_alone(plain, r) for r in mix]
    static = serve_static(plain, mix, batch_size=2)  # left-padded batches: rotary positions are relative
    assert [s.tokens for s in static] == want
    with continuous_engine(_continuous(tiny_llama_dir, tmp_path, max_batch_tokens=64), mix) as serve:
        continuous = serve()
        assert [s.tokens for s in continuous] == want == [s.tokens for s in serve()]  # a second burst, same engine
    for served in (static, continuous):
        assert all(0 < s.first_token_s <= s.finished_s for s in served)
    # a static batch ends together: its requests share their first-token time
    assert static[0].first_token_s == static[1].first_token_s != static[2].first_token_s


def test_bench_requests_reports_the_burst(tiny_llama_dir, tmp_path):
    cand = _continuous(tiny_llama_dir, tmp_path)
    out = bench_requests(cand, TEXTS, 4, batch_size=2, prompt_tokens=16, new_tokens=8, warmup=0, repeats=3)
    mix = request_mix(cand, TEXTS, 4, 16, 8)
    assert out["engine"] == "continuous batching" and out["requests"] == 4 and out["wall_s"]["n"] == 3
    assert out["prompt_tokens"]["total"] == sum(len(r.prompt) for r in mix)
    assert out["new_tokens"]["total"] == sum(r.new_tokens for r in mix)
    total = out["prompt_tokens"]["total"] + out["new_tokens"]["total"]  # 3 rounds: the medians are one round's
    assert out["tokens_per_s"]["median"] == pytest.approx(total / out["wall_s"]["median"], rel=1e-9)
    assert out["time_to_first_token_s"]["p50"] <= out["time_to_first_token_s"]["p95"] <= out["wall_s"]["max"]
    assert bench_requests(_plain(tiny_llama_dir), TEXTS, 4, 3, 16, 8, 0, 1)["engine"] == "static batches of 3"


def test_continuous_batching_is_kept_in_the_artifact_and_speed_requests_is_for_causal_lms(
    tiny_llama_dir, tmp_path, write_recipe, tiny_bert_dir
):
    again = reload_saved(_continuous(tiny_llama_dir, tmp_path, max_batch_tokens=128).save(tmp_path / "artifact"))
    assert again.continuous == {"max_batch_tokens": 128, "page_size": 256}
    path = write_recipe(
        {
            "name": "enc",
            "model": {"source": str(tiny_bert_dir)},
            "task": "embedding",
            "data": {"eval": {"source": "stdlib-docs"}},
            "speed": {"requests": 16},
        }
    )
    with pytest.raises(UserError, match="speed.requests"):
        load_recipe(path)


def test_a_run_serves_the_burst_with_each_engine_and_prices_it(write_recipe, tiny_llama_dir, tmp_path, capsys):
    import json

    from optimizer.cli import main

    rec = write_recipe(
        {
            "name": "served",
            "model": {"source": str(tiny_llama_dir)},
            "task": "causal-lm",
            "data": {"eval": {"source": "stdlib-docs", "limit": 40}},
            "speed": {
                "memory_alone": False,
                "batch_size": 4,
                "prompt_tokens": 16,
                "new_tokens": 6,
                "warmup": 0,
                "repeats": 1,
                "requests": 8,
            },
            "hardware": {"threads": 1, "catalog": "aws-c7a.large"},
            "output_dir": str(tmp_path / "runs"),
            "passes": [{"name": "torch-continuous-batching", "max_batch_tokens": 64}],
        }
    )
    assert main(["run", str(rec), "-q"]) == 0
    out = capsys.readouterr().out
    assert "baseline served 8 requests at once" in out and "by static batches of 4" in out
    assert "candidate served 8 requests at once" in out and "by continuous batching" in out
    [result] = (tmp_path / "runs").glob("served-*/result.json")
    r = json.loads(result.read_text())
    for part, engine in (("baseline", "static batches of 4"), ("candidate", "continuous batching")):
        served = r[part]["speed"]["served"]
        assert served["engine"] == engine and served["requests"] == 8
        hourly = 0.10264  # aws-c7a.large on demand, 1 thread of its 2 vCPUs: 2 replicas, 50% busy
        want = hourly / (served["tokens_per_s"]["median"] * 2 * 3600 * 0.5) * 1e6
        assert served["usd_per_m_tokens"] == pytest.approx(want, rel=1e-6)
    # the same requests arriving one by one at 50 a second (speed.arrival_rate)
    assert main(["run", str(rec), "-q", "--set", "speed.arrival_rate=50"]) == 0
    out = capsys.readouterr().out
    assert "baseline served 8 requests arriving at 50/s" in out and "(from arrival, queueing included)" in out


def test_requests_arriving_at_a_rate_wait_only_for_what_came_before_them(tiny_llama_dir, tmp_path):
    """speed.arrival_rate: seeded Poisson arrivals; a static server takes what has arrived when it is free, the
    continuous engine gets each request at its arrival; times to first token count from arrival."""
    from optimizer.measure.requests import summarize

    plain = _plain(tiny_llama_dir)
    burst = request_mix(plain, TEXTS, 6, prompt_tokens=20, new_tokens=6, seed=2)
    mix = request_mix(plain, TEXTS, 6, prompt_tokens=20, new_tokens=6, seed=2, rate=20.0)
    assert [r.arrival_s for r in burst] == [0.0] * 6
    arrivals = [r.arrival_s for r in mix]
    assert arrivals[0] == 0.0 and arrivals == sorted(arrivals) and len(set(arrivals)) == 6
    assert 0.05 < arrivals[-1] < 1.5  # 5 gaps of mean 50 ms
    assert [(r.prompt, r.new_tokens) for r in mix] == [(r.prompt, r.new_tokens) for r in burst]  # a rate moves only the arrivals
    assert mix == request_mix(plain, TEXTS, 6, prompt_tokens=20, new_tokens=6, seed=2, rate=20.0)  # seeded
    want = [_alone(plain, r) for r in mix]
    static = serve_static(plain, mix, batch_size=4)
    with continuous_engine(_continuous(tiny_llama_dir, tmp_path, max_batch_tokens=64), mix) as serve:
        continuous = serve()
    for served in (static, continuous):
        assert [s.tokens for s in served] == want
        assert all(s.first_token_s >= s.arrival_s == r.arrival_s for s, r in zip(served, mix, strict=True))
        assert max(s.finished_s for s in served) >= arrivals[-1]  # the round lasts at least until the last arrival
    summary = summarize(mix, [static], "static batches of 4", 20.0)
    assert summary["arrival_rate"] == 20.0 and summary["last_arrival_s"] == arrivals[-1]
    waits = sorted(s.waited_for_first_token_s for s in static)
    assert summary["time_to_first_token_s"]["p50"] == pytest.approx(waits[2] + (waits[3] - waits[2]) * 0.5, rel=0.2)


def test_an_arrival_rate_needs_requests(write_recipe, tiny_llama_dir, capsys):
    from optimizer.cli import main

    recipe = write_recipe(
        {
            "name": "rate-alone",
            "model": {"source": str(tiny_llama_dir)},
            "task": "causal-lm",
            "data": {"eval": {"source": "stdlib-docs", "limit": 8}},
            "speed": {"arrival_rate": 2.0},
        }
    )
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "speed.arrival_rate" in err and "set speed.requests too" in err and len(err.strip().splitlines()) == 1
