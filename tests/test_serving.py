"""How a model is served: concurrent streams on every runtime, and the sequence-length cap.

Streams change speed, never outputs; a cap changes what the model reads (so quality is measured with
it) but never how many tokens a request is counted as.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from optimizer import tasks
from optimizer.data import stdlib_split
from optimizer.errors import UserError
from optimizer.measure import speed
from optimizer.model import ModelSpec
from optimizer.passes import PassContext, build_pass, validate_pass_params
from optimizer.recipe import PassSpec
from optimizer.runtimes import load_candidate, reload_saved
from optimizer.runtimes.threads import set_threads, threads

TEXTS = [e.text for e in stdlib_split("eval")[:40]]


def _ctx(tmp_path: Path) -> PassContext:
    return PassContext(task="embedding", device="cpu", threads=threads(), seed=0, work_dir=tmp_path / "work")


def _candidate(runtime: str, folder: Path, tmp_path: Path):
    cand = load_candidate(ModelSpec(source=str(folder)), "embedding", "cpu")
    export = {"torch": None, "onnxruntime": "onnx-export", "openvino": "ov-export"}[runtime]
    return cand if export is None else build_pass(export, {}).apply(cand, _ctx(tmp_path))


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino"])
def test_two_streams_give_the_same_embeddings_in_the_same_order(runtime, tiny_bert_dir, tmp_path):
    before = threads()
    try:
        set_threads(2)
        cand = _candidate(runtime, tiny_bert_dir, tmp_path)
        one = tasks.embed(cand, TEXTS, 4)
        two = tasks.embed(cand, TEXTS, 4, streams=2)
        np.testing.assert_allclose(one, two, atol=1e-5)
        lat: list[float] = []
        outs = cand.forward_batches([(b.input_ids, b.attention_mask) for b in tasks.make_batches(cand, TEXTS, 4)], 2, lat)
        assert len(outs) == len(lat) == 10 and all(x > 0 for x in lat)
        assert threads() == 2  # the process's thread count is back after the streams
    finally:
        set_threads(before)


def test_the_benchmark_records_its_streams_and_refuses_more_streams_than_threads(tiny_bert_dir, write_recipe, tmp_path):
    from optimizer.recipe import load_recipe
    from optimizer.serving import measure_speed

    before = threads()
    try:
        set_threads(2)
        cand = load_candidate(ModelSpec(source=str(tiny_bert_dir)), "embedding", "cpu")
        r = speed.bench_encoder(cand, TEXTS, 4, warmup=1, repeats=2, streams=2)
        assert r["streams"] == 2 and r["input_tokens_per_s"]["n"] == 2
        recipe = load_recipe(
            write_recipe(
                {
                    "name": "s",
                    "model": {"source": str(tiny_bert_dir)},
                    "task": "embedding",
                    "data": {"eval": {"source": "stdlib-docs"}},
                }
            )
        )
        data = type("D", (), {"interleaved": lambda self: TEXTS})()
        with pytest.raises(UserError, match="3 serving streams on 2 threads"):
            measure_speed(cand, recipe, data, streams=3)
    finally:
        set_threads(before)


@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_a_cap_changes_what_is_read_not_what_is_counted_and_survives_a_reload(runtime, tiny_bert_dir, tmp_path):
    cand = _candidate(runtime, tiny_bert_dir, tmp_path)
    long = [t for t in TEXTS if len(cand.tokenizer(t)["input_ids"]) > 24]
    assert len(long) >= 4
    full = tasks.embed(cand, long, 4)
    uncapped = speed.bench_encoder(cand, long, 4, warmup=0, repeats=1)
    capped = build_pass("max-length", {"tokens": 16}).apply(cand, _ctx(tmp_path))
    assert capped.info.limit == 16 and "at most 16 of the model's 128 tokens" in capped.notes[-1]
    r = speed.bench_encoder(capped, long, 4, warmup=0, repeats=1)
    assert r["real_tokens"] == uncapped["real_tokens"] and r["processed_tokens"] == 16 * len(long) < r["real_tokens"]
    cut = tasks.embed(capped, long, 4)
    assert np.abs(cut - full).max() > 1e-3  # the tail is no longer read
    back = reload_saved(capped.save(tmp_path / "saved"))
    assert back.info.input_cap == 16
    np.testing.assert_allclose(tasks.embed(back, long, 4), cut, atol=1e-5)


def test_a_cap_at_or_above_the_models_limit_caps_nothing_and_causal_lms_refuse_it(tiny_bert_dir, tmp_path):
    cand = load_candidate(ModelSpec(source=str(tiny_bert_dir)), "embedding", "cpu")
    out = build_pass("max-length", {"tokens": 512}).apply(cand, _ctx(tmp_path))
    assert out.info.input_cap is None and out.info.limit == 128 and "nothing capped" in out.notes[-1]
    problem = validate_pass_params(PassSpec(name="max-length", tokens=64), "causal-lm")
    assert problem is not None and "does not apply to task 'causal-lm'" in problem[1]


def test_openvino_int8_at_bf16_is_judged_in_serving_batches_and_at_f32_is_not():
    from optimizer.passes import batch_dependent

    def chain(precision: str) -> list[dict]:
        return [{"name": "ov-export", "params": {"inference_precision": precision}}, {"name": "ov-int8-static", "params": {}}]

    assert batch_dependent(chain("bf16")) and not batch_dependent(chain("f32"))
    assert not batch_dependent([{"name": "ov-export", "params": {"inference_precision": "bf16"}}])
    assert batch_dependent([{"name": "ort-int8-dynamic", "params": {}}])
