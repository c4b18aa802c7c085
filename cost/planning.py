"""Capacity planning from first principles.

FLOPs per token: about 2N to serve and 6N to train (N = parameters), plus an optional attention
term 2·layers·context·d_model (forward) from Kaplan et al. 2020. Real hardware reaches a fraction
of peak (MFU). Roofline: prefill is bounded by peak FLOP/s; decode at batch 1 by memory bandwidth
over the bytes read per token (weights at their dtype plus the KV cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cost.catalog import Entry
from cost.errors import CostInputError, require_fraction, require_positive

BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5, "nf4": 0.5}
SECONDS_PER_DAY = 86400.0


def _mfu(m: float) -> None:
    require_fraction("MFU", m, "give the achieved share of peak FLOP/s, e.g. 0.4")


def bytes_per_param(dtype: str) -> float:
    if dtype not in BYTES_PER_PARAM:
        raise CostInputError(f"unknown dtype {dtype!r}", f"use one of {', '.join(BYTES_PER_PARAM)}")
    return BYTES_PER_PARAM[dtype]


def attention_flops_per_token(layers: int, context: int, d_model: int) -> float:
    """Forward attention-score FLOPs per token, 2·n_layer·n_ctx·d_model."""
    return 2.0 * layers * context * d_model


def serve_flops_per_token(params: float, layers: int = 0, context: int = 0, d_model: int = 0) -> float:
    require_positive("parameters", params)
    return 2.0 * params + attention_flops_per_token(layers, context, d_model)


def train_flops_per_token(params: float, layers: int = 0, context: int = 0, d_model: int = 0) -> float:
    """Forward + backward = 3x forward."""
    return 3.0 * serve_flops_per_token(params, layers, context, d_model)


def training_compute(params: float, tokens: float) -> float:
    """Total training FLOPs, 6·N·D."""
    require_positive("parameters", params)
    require_positive("training tokens", tokens)
    return 6.0 * params * tokens


def _per_device_peak(entry: Entry, dtype: str) -> tuple[float, int]:
    devices = entry.gpus or 1
    return entry.peak_flops(dtype) / devices, devices


@dataclass
class Plan:
    what: str
    flops: float  # total FLOPs (training) or FLOP/s needed (serving)
    devices: int  # accelerators (GPUs, or whole instances for CPU entries)
    instances: int  # catalog entries to rent (an 8-GPU node counts once)
    exact_devices: float
    hourly_usd: float  # for all instances
    seconds: float | None = None
    total_usd: float | None = None


def accelerators_to_train(params: float, tokens: float, days: float, entry: Entry, mfu: float, dtype: str = "bf16") -> Plan:
    require_positive("days", days)
    _mfu(mfu)
    compute = training_compute(params, tokens)
    peak, per_instance = _per_device_peak(entry, dtype)
    seconds = days * SECONDS_PER_DAY
    exact = compute / (peak * mfu * seconds)
    devices = math.ceil(exact)
    instances = math.ceil(devices / per_instance)
    hourly = instances * entry.hourly_usd()
    return Plan("train", compute, devices, instances, exact, hourly, seconds, hourly * seconds / 3600.0)


def accelerators_to_serve(tokens_per_day: float, flops_per_token: float, entry: Entry, mfu: float, dtype: str = "bf16") -> Plan:
    """Devices to serve a daily volume spread evenly over the day at the given MFU (compute bound)."""
    require_positive("tokens per day", tokens_per_day)
    _mfu(mfu)
    rate = tokens_per_day / SECONDS_PER_DAY * flops_per_token
    peak, per_instance = _per_device_peak(entry, dtype)
    exact = rate / (peak * mfu)
    devices = max(1, math.ceil(exact))
    instances = math.ceil(devices / per_instance)
    hourly = instances * entry.hourly_usd()
    return Plan("serve", rate, devices, instances, exact, hourly, SECONDS_PER_DAY, hourly * 24)


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, context: int, batch: int, dtype: str = "bf16") -> float:
    """Keys and values for every layer, head and position."""
    return 2.0 * layers * kv_heads * head_dim * context * batch * bytes_per_param(dtype)


@dataclass
class Roofline:
    prefill_tokens_per_s: float  # compute bound: peak / FLOPs per token
    decode_tokens_per_s_batch1: float  # bandwidth bound: bandwidth / bytes read per token
    bytes_per_decode_step: float


def roofline(
    params: float,
    entry: Entry,
    weight_dtype: str = "bf16",
    compute_dtype: str = "bf16",
    kv_bytes: float = 0.0,
    flops_per_token: float | None = None,
    weight_bytes: float | None = None,
) -> Roofline:
    """Upper bounds for one device of `entry` (per-device peak and bandwidth). `weight_bytes`, when
    measured (a quantized artifact's weights), replaces params x the dtype's size."""
    peak, devices = _per_device_peak(entry, compute_dtype)
    bandwidth = entry.memory_bandwidth_gbs * 1e9 / devices
    fpt = flops_per_token or serve_flops_per_token(params)
    step_bytes = (params * bytes_per_param(weight_dtype) if weight_bytes is None else weight_bytes) + kv_bytes
    return Roofline(peak / fpt, bandwidth / step_bytes, step_bytes)


@dataclass
class Fit:
    fits: bool
    weights_bytes: float
    kv_cache_bytes: float
    activation_bytes: float
    total_bytes: float
    device_bytes: float
    headroom_bytes: float


def memory_fit(
    params: float,
    entry: Entry,
    dtype: str = "bf16",
    kv_bytes: float = 0.0,
    activation_bytes: float | None = None,
    overhead: float = 0.1,
) -> Fit:
    """Weights + KV cache + activations (+ a runtime overhead share) against one device's memory.

    Activations default to 10% of weights, a rough inference-time allowance: give the real figure
    when you have it.
    """
    require_positive("parameters", params)
    devices = entry.gpus or 1
    device = entry.memory_gb * 1e9 / devices
    weights = params * bytes_per_param(dtype)
    act = 0.1 * weights if activation_bytes is None else activation_bytes
    total = (weights + kv_bytes + act) * (1 + overhead)
    return Fit(total <= device, weights, kv_bytes, act, total, device, device - total)
