"""Roofline check of a causal LM's measured speed: how close prefill and decode come to their bounds.

Decode at small batch reads every weight (and the KV cache) once per step, so its bound is the
memory bandwidth over the bytes read per step; prefill does ~2N FLOPs per token, so its bound is the
peak FLOP/s at the arithmetic the chain runs in. Both come from `cost.roofline` with the catalog
entry the recipe prices on. A figure far below its bound is the engine's (launch and dispatch
overhead, unfused kernels, a slow path), not the model's: the result says so.
"""

from __future__ import annotations

from typing import Any

ENGINE_FLAG = 0.25  # below this share of a bound, the result names the engine as the limit


def kv_bytes_per_token(config: Any, element_bytes: int) -> int:
    """Keys and values one token adds to the cache, over all layers (a transformers config)."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * element_bytes


def llm_roofline(
    speed: dict[str, Any], entry: Any, parameters: int, weight_bytes: int, kv_per_token: int, compute_dtype: str
) -> dict[str, Any]:
    """The bounds for the benchmark's shape (batch, prompt, new tokens) on `entry`, and the measured shares of them."""
    import cost

    batch = speed["batch_size"]
    context = speed["prompt_tokens"] + speed["new_tokens"] / 2  # the KV cache's mean length over the decode steps
    kv = batch * context * kv_per_token
    try:
        r = cost.roofline(parameters, entry, compute_dtype=compute_dtype, kv_bytes=kv, weight_bytes=weight_bytes)
    except cost.CostInputError:  # the entry states no peak for this arithmetic: bound on fp32's
        compute_dtype = "fp32"
        r = cost.roofline(parameters, entry, compute_dtype=compute_dtype, kv_bytes=kv, weight_bytes=weight_bytes)
    decode_bound = batch * r.decode_tokens_per_s_batch1
    prefill = speed["input_tokens_per_s"]["median"] / r.prefill_tokens_per_s
    decode = speed["output_tokens_per_s"]["median"] / decode_bound
    flags = []
    if decode < ENGINE_FLAG:
        flags.append(
            f"decode reaches {decode:.0%} of the memory-bandwidth bound ({decode_bound:,.0f} tokens/s at batch {batch}): "
            "the engine, not the model, limits it (per-step overhead, unfused kernels)"
        )
    if prefill < ENGINE_FLAG:
        flags.append(
            f"prefill reaches {prefill:.0%} of the {compute_dtype} compute bound ({r.prefill_tokens_per_s:,.0f} tokens/s): "
            "the engine, not the model, limits it"
        )
    for share, what in ((decode, "decode"), (prefill, "prefill")):
        if share > 1.0:  # no engine beats a bound: the machine that measured is not the entry priced
            flags.append(
                f"{what} exceeds its bound on {entry.name} ({share:.0%}): this machine has more bandwidth or compute "
                f"than {entry.name}'s catalog figures, so its speed priced at that entry overstates what the entry serves"
            )
    return {
        "entry": entry.name,
        "compute_dtype": compute_dtype,
        "bytes_per_decode_step": r.bytes_per_decode_step,
        "decode_bound_tokens_per_s": decode_bound,
        "decode_fraction": decode,
        "prefill_bound_tokens_per_s": r.prefill_tokens_per_s,
        "prefill_fraction": prefill,
        "flags": flags,
    }


def roofline_text(r: dict[str, Any]) -> str:
    return (
        f"roofline on {r['entry']}: decode {r['decode_fraction']:.0%} of the memory-bandwidth bound "
        f"({r['decode_bound_tokens_per_s']:,.0f} tokens/s), prefill {r['prefill_fraction']:.0%} of the "
        f"{r['compute_dtype']} compute bound ({r['prefill_bound_tokens_per_s']:,.0f} tokens/s)"
    )
