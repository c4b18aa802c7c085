"""The roofline check's arithmetic: bounds from the catalog entry, the measured shares of them."""

from __future__ import annotations

import pytest

import cost
from optimizer.measure.roofline import ENGINE_FLAG, kv_bytes_per_token, llm_roofline, roofline_text


class _Config:
    num_attention_heads = 9
    num_key_value_heads = 3
    hidden_size = 576
    num_hidden_layers = 30


def _speed(prefill: float, decode: float) -> dict:
    return {
        "batch_size": 4,
        "prompt_tokens": 128,
        "new_tokens": 64,
        "input_tokens_per_s": {"median": prefill},
        "output_tokens_per_s": {"median": decode},
    }


def test_bounds_follow_bandwidth_over_bytes_per_step_and_peak_over_2n():
    entry = cost.load_catalog().get("aws-c7i.large")  # 8 GB/s, 0.2 fp32 TFLOP/s, 6.4 int8
    kv = kv_bytes_per_token(_Config(), 4)
    assert kv == 2 * 30 * 3 * 64 * 4  # SmolLM2-135M's shape: 3 KV heads of 64
    params, weights = 134_515_008, 538_060_032
    r = llm_roofline(_speed(100.0, 20.0), entry, params, weights, kv, "fp32")
    step = weights + 4 * (128 + 32) * kv  # the KV cache at its mean length over the decode steps
    assert r["bytes_per_decode_step"] == pytest.approx(step)
    assert r["decode_bound_tokens_per_s"] == pytest.approx(4 * 8e9 / step)
    assert r["prefill_bound_tokens_per_s"] == pytest.approx(0.2e12 / (2 * params))
    assert r["decode_fraction"] == pytest.approx(20.0 / r["decode_bound_tokens_per_s"])
    assert r["decode_fraction"] > ENGINE_FLAG and len(r["flags"]) == 1 and "prefill" in r["flags"][0]
    int8 = llm_roofline(_speed(100.0, 10.0), entry, params, weights // 4, kv, "int8")
    assert int8["prefill_bound_tokens_per_s"] == pytest.approx(32 * r["prefill_bound_tokens_per_s"])
    assert int8["decode_bound_tokens_per_s"] > 2 * r["decode_bound_tokens_per_s"]  # a quarter of the weight bytes


def test_an_entry_without_the_chains_arithmetic_is_bounded_on_fp32():
    entry = cost.load_catalog().get("aws-c7a.large")
    r = llm_roofline(_speed(100.0, 10.0), entry, 1_000_000, 4_000_000, 1000, "fp8")
    assert r["compute_dtype"] == "fp32"


def test_the_engine_check_uses_this_machines_bounds_where_measured():
    from optimizer.measure.machine_bounds import MachineBounds

    entry = cost.load_catalog().get("aws-c7i.large")  # 8 GB/s: a quarter of what this machine reads
    kv = kv_bytes_per_token(_Config(), 4)
    params, weights = 134_515_008, 538_060_032
    here = MachineBounds("cpu", 2, read_gb_s=32.0, matmul_dtype="fp32", matmul_tflops=0.4)
    r = llm_roofline(_speed(100.0, 20.0), entry, params, weights, kv, "fp32", here)
    m = r["machine"]
    assert m["decode_bound_tokens_per_s"] == pytest.approx(4 * r["decode_bound_tokens_per_s"])
    assert m["prefill_bound_tokens_per_s"] == pytest.approx(0.4e12 / (2 * params))
    assert m["decode_fraction"] == pytest.approx(r["decode_fraction"] / 4) and m["prefill_fraction"] > 0
    # on the entry's bound decode looked fine (over ENGINE_FLAG); on this machine's it is the engine
    assert r["decode_fraction"] > ENGINE_FLAG > m["decode_fraction"]
    assert any("decode reaches" in f and "on this machine" in f for f in r["flags"])
    # no matmul in the chain's arithmetic here: prefill is judged on the entry's bound
    none = llm_roofline(_speed(100.0, 20.0), entry, params, weights, kv, "fp32", MachineBounds("cpu", 2, 32.0, "fp8", None))
    assert none["machine"]["prefill_fraction"] is None
    assert any("aws-c7i.large's fp32 compute bound" in f for f in none["flags"])
    assert "on this machine (32 GB/s read, measured)" in roofline_text(r)


def test_this_machines_bounds_are_measured_once_a_process():
    import time

    from optimizer.measure.machine_bounds import machine_bounds

    first = machine_bounds("cpu", "fp32")
    assert 0.5 < first.read_gb_s < 5000  # GB/s: any machine this runs on
    assert first.matmul_tflops is not None and 0.001 < first.matmul_tflops < 10_000
    start = time.perf_counter()
    assert machine_bounds("cpu", "fp32") == first
    assert time.perf_counter() - start < 0.05  # cached, not measured again
    assert machine_bounds("cpu", "fp8").matmul_tflops is None  # torch has no plain fp8 matmul


def test_a_dtype_without_a_matmul_kernel_here_has_no_compute_bound(monkeypatch):
    import torch

    from optimizer.measure.machine_bounds import matmul_tflops

    def no_kernel(a, b):
        raise RuntimeError('"_int_mm" not implemented for this device')

    monkeypatch.setattr(torch, "_int_mm", no_kernel)
    assert matmul_tflops("cpu", -1, "int8") is None  # threads -1: its own cache entry
