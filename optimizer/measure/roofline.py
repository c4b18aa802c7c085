"""Roofline check of a causal LM's measured speed: how close prefill and decode come to their bounds.

Decode at small batch reads every weight (and the KV cache) once per step, so its bound is the
memory bandwidth over the bytes read per step; prefill does ~2N FLOPs per token, so its bound is the
peak FLOP/s at the arithmetic the chain runs in. The bounds come from `cost.roofline` with the catalog
entry the recipe prices on and, where measured, from this machine's own read bandwidth and matmul
throughput (`machine_bounds`). A figure far below its bound is the engine's (launch and dispatch
overhead, unfused kernels, a slow path), not the model's: the result says so, judged on this machine's
bounds when they were measured (the entry's may be another machine's), else on the entry's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optimizer.measure.machine_bounds import MachineBounds

ENGINE_FLAG = 0.25  # below this share of a bound, the result names the engine as the limit


def kv_bytes_per_token(config: Any, element_bytes: int) -> int:
    """Keys and values one token adds to the cache, over all layers (a transformers config)."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * element_bytes


def machine_shares(speed: dict[str, Any], machine: MachineBounds, parameters: int, step_bytes: float) -> dict[str, Any]:
    """The measured speed as shares of this machine's own bounds (`step_bytes`: read per decode step)."""
    decode_bound = speed["batch_size"] * machine.read_gb_s * 1e9 / step_bytes
    prefill_bound = None if machine.matmul_tflops is None else machine.matmul_tflops * 1e12 / (2 * parameters)
    return machine.as_dict() | {
        "decode_bound_tokens_per_s": decode_bound,
        "decode_fraction": speed["output_tokens_per_s"]["median"] / decode_bound,
        "prefill_bound_tokens_per_s": prefill_bound,
        "prefill_fraction": None if prefill_bound is None else speed["input_tokens_per_s"]["median"] / prefill_bound,
    }


def llm_roofline(
    speed: dict[str, Any],
    entry: Any,
    parameters: int,
    weight_bytes: int,
    kv_per_token: int,
    compute_dtype: str,
    machine: MachineBounds | None = None,
) -> dict[str, Any]:
    """The bounds for the benchmark's shape (batch, prompt, new tokens) on `entry` (and on this machine, when
    `machine` was measured), and the measured shares of them."""
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
    here = None if machine is None else machine_shares(speed, machine, parameters, r.bytes_per_decode_step)
    # the engine check: on this machine's bounds where measured (the entry may be another machine's)
    d_share, d_bound, p_share, p_bound = decode, decode_bound, prefill, r.prefill_tokens_per_s
    whose = f"{entry.name}'s {compute_dtype}"
    if here is not None:
        d_share, d_bound = here["decode_fraction"], here["decode_bound_tokens_per_s"]
        if here["prefill_fraction"] is not None:  # else torch has no matmul in this arithmetic here
            p_share, p_bound = here["prefill_fraction"], here["prefill_bound_tokens_per_s"]
            whose = f"this machine's measured {here['matmul_dtype']}"
    flags = []
    if d_share < ENGINE_FLAG:
        flags.append(
            f"decode reaches {d_share:.0%} of the memory-bandwidth bound ({d_bound:,.0f} tokens/s at batch {batch}"
            f"{'' if here is None else ' on this machine'}): the engine, not the model, limits it "
            "(per-step overhead, unfused kernels)"
        )
    if p_share < ENGINE_FLAG:
        flags.append(
            f"prefill reaches {p_share:.0%} of {whose} compute bound ({p_bound:,.0f} tokens/s): "
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
        "machine": here,
        "flags": flags,
    }


def roofline_text(r: dict[str, Any]) -> str:
    text = (
        f"roofline on {r['entry']}: decode {r['decode_fraction']:.0%} of the memory-bandwidth bound "
        f"({r['decode_bound_tokens_per_s']:,.0f} tokens/s), prefill {r['prefill_fraction']:.0%} of the "
        f"{r['compute_dtype']} compute bound ({r['prefill_bound_tokens_per_s']:,.0f} tokens/s)"
    )
    m = r.get("machine")
    if not m:
        return text
    prefill = (
        f"; prefill {m['prefill_fraction']:.0%} of its {m['matmul_dtype']} matmul ({m['matmul_tflops']:.2f} TFLOP/s)"
        if m["prefill_fraction"] is not None
        else ""
    )
    return (
        f"{text}; on this machine ({m['read_gb_s']:.0f} GB/s read, measured): decode "
        f"{m['decode_fraction']:.0%} of its bandwidth bound ({m['decode_bound_tokens_per_s']:,.0f} tokens/s){prefill}"
    )
