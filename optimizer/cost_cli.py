"""`costopt cost price | plan | fit` and `costopt hardware list`: the cost/ package on the command line."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

import cost
from optimizer.cli_format import table


def _num(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number (write 7e9 or 7000000000)") from None


def _usd(x: float | None) -> str:
    return "-" if x is None else (f"${x:,.2f}" if x >= 1 else f"${x:.4f}")


def cmd_hardware_list(args: argparse.Namespace) -> int:
    cat = cost.load_catalog(args.catalog)
    rows = []
    for e in sorted(cat.entries.values(), key=lambda e: (e.kind, e.hourly_usd())):
        peak = e.peak_tflops.get("bf16") or e.peak_tflops.get("fp16") or e.peak_tflops.get("fp32")
        src = e.price.as_of if e.price else f"owned {e.owned.as_of}".strip()
        rows.append(
            [
                e.name,
                e.kind,
                e.description[:48],
                f"{e.hourly_usd():.4f}",
                f"{peak:g}",
                f"{e.memory_gb:g}",
                f"{e.memory_bandwidth_gbs:g}",
                f"{e.watts:g}",
                src,
            ]
        )
    if args.json:
        print(json.dumps({k: v.model_dump() for k, v in cat.entries.items()}, indent=2))
    else:
        print(table(rows, ["name", "kind", "what", "$/hour", "bf16 TFLOP/s", "memory GB", "GB/s", "watts", "price as of"]))
    return 0


def cmd_price(args: argparse.Namespace) -> int:
    entry = cost.load_catalog(args.catalog).get(args.hardware)
    p = cost.token_price(entry, args.input_tps, args.output_tps, args.utilization, args.pricing, args.grid)
    share = args.input_share if args.input_share is not None else (1.0 if args.output_tps is None else 0.5)
    out: dict[str, Any] = asdict(p) | {"input_share": share, "blended_usd_per_m": p.blended_usd_per_m(share)}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{entry.name}: {_usd(p.hourly_usd)}/hour ({args.pricing}), utilization {args.utilization:.0%}")
    rows = [
        ["input", f"{args.input_tps:,.0f}", _usd(p.input_usd_per_m), f"{p.input_kwh_per_m:.4g}", f"{p.co2_kg_per_m('input'):.4g}"]
    ]
    if args.output_tps is not None:
        rows.append(
            [
                "output",
                f"{args.output_tps:,.0f}",
                _usd(p.output_usd_per_m),
                f"{p.output_kwh_per_m:.4g}",
                f"{p.co2_kg_per_m('output'):.4g}",
            ]
        )
    print(table(rows, ["tokens", "tokens/s", "$ per 1M", "kWh per 1M", "kg CO2 per 1M"]))
    print(f"blended ({share:.0%} input): {_usd(out['blended_usd_per_m'])} per 1M tokens")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    entry = cost.load_catalog(args.catalog).get(args.hardware)
    out: dict[str, Any] = {"hardware": entry.name, "mfu": args.mfu, "dtype": args.dtype}
    lines = []
    if args.train_tokens:
        p = cost.accelerators_to_train(args.params, args.train_tokens, args.days, entry, args.mfu, args.dtype)
        out["train"] = asdict(p)
        unit = "GPUs" if entry.kind == "gpu" else "instances"
        lines.append(
            f"train {args.params:.3g} params on {args.train_tokens:.3g} tokens in {args.days:g} days: "
            f"{p.flops:.3g} FLOPs (6ND) -> {p.devices:,} {unit} of {entry.name} at {args.mfu:.1%} MFU "
            f"({p.exact_devices:,.1f} exactly; {p.instances:,} rentals), {_usd(p.total_usd)} at {_usd(entry.hourly_usd())}/hour each"
        )
    if args.serve_tokens_per_day:
        fpt = cost.serve_flops_per_token(args.params, args.layers or 0, args.context or 0, args.d_model or 0)
        p = cost.accelerators_to_serve(args.serve_tokens_per_day, fpt, entry, args.mfu, args.dtype)
        out["serve"] = asdict(p) | {"flops_per_token": fpt}
        lines.append(
            f"serve {args.serve_tokens_per_day:.3g} tokens/day at {fpt:.3g} FLOPs/token: {p.flops:.3g} FLOP/s "
            f"-> {p.devices:,} devices ({p.exact_devices:.2f} exactly; {p.instances:,} rentals of {entry.name}) "
            f"at {args.mfu:.1%} MFU, {_usd(p.total_usd)}/day"
        )
    r = cost.roofline(args.params, entry, args.weight_dtype or args.dtype, args.dtype)
    out["roofline"] = asdict(r)
    lines.append(
        f"roofline per device: prefill <= {r.prefill_tokens_per_s:,.0f} tokens/s (compute bound), "
        f"batch-1 decode <= {r.decode_tokens_per_s_batch1:,.1f} tokens/s (bandwidth bound, "
        f"{r.bytes_per_decode_step / 1e9:.3g} GB read per token)"
    )
    print(json.dumps(out, indent=2) if args.json else "\n".join(lines))
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    entry = cost.load_catalog(args.catalog).get(args.hardware)
    kv = 0.0
    if args.layers and args.kv_heads and args.head_dim:
        kv = cost.kv_cache_bytes(args.layers, args.kv_heads, args.head_dim, args.context, args.batch, args.kv_dtype)
    f = cost.memory_fit(args.params, entry, args.dtype, kv, args.activation_gb * 1e9 if args.activation_gb is not None else None)
    if args.json:
        print(json.dumps(asdict(f), indent=2))
    else:
        gb = lambda b: f"{b / 1e9:.2f} GB"  # noqa: E731
        print(
            f"{'fits' if f.fits else 'does NOT fit'} on one device of {entry.name}: weights {gb(f.weights_bytes)} "
            f"+ KV cache {gb(f.kv_cache_bytes)} + activations {gb(f.activation_bytes)} (+10% runtime) = "
            f"{gb(f.total_bytes)} of {gb(f.device_bytes)}"
        )
    if not f.fits:
        raise cost.CostInputError(
            f"the model needs {f.total_bytes / 1e9:.1f} GB but one device of {entry.name} has {f.device_bytes / 1e9:.1f} GB",
            "quantize it (int8/int4), shorten the context or batch, or pick larger hardware",
        )
    return 0


def add_commands(sub: Any, hardware_parser: argparse.ArgumentParser) -> None:
    hw_sub = hardware_parser.add_subparsers(dest="hw_command")
    lst = hw_sub.add_parser("list", help="the hardware catalog with prices and their dates")
    lst.add_argument("--catalog", help="your catalog YAML, merged over the packaged one")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(fn=cmd_hardware_list)

    c = sub.add_parser("cost", help="prices per million tokens, capacity planning, memory fit")
    csub = c.add_subparsers(dest="cost_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--hardware", required=True, help="catalog entry name (costopt hardware list)")
        p.add_argument("--catalog", help="your catalog YAML, merged over the packaged one")
        p.add_argument("--json", action="store_true")

    pr = csub.add_parser("price", help="$ per 1M input/output tokens from measured tokens/s")
    common(pr)
    pr.add_argument("--input-tps", type=_num, required=True, help="measured input (prefill/encode) tokens/s")
    pr.add_argument("--output-tps", type=_num, help="measured output (decode) tokens/s")
    pr.add_argument("--utilization", type=_num, default=1.0, help="busy share of paid hours, (0, 1]")
    pr.add_argument("--pricing", choices=["on_demand", "spot", "committed"], default="on_demand")
    pr.add_argument("--input-share", type=_num, help="input share of tokens for the blended price")
    pr.add_argument("--grid", type=_num, default=0.4, help="grid intensity, kg CO2 per kWh")
    pr.set_defaults(fn=cmd_price)

    pl = csub.add_parser("plan", help="accelerators to train or serve; roofline bounds")
    common(pl)
    pl.add_argument("--params", type=_num, required=True, help="model parameters, e.g. 175e9")
    pl.add_argument("--mfu", type=_num, default=0.4, help="achieved share of peak FLOP/s, (0, 1]")
    pl.add_argument("--dtype", default="bf16", help="compute dtype for peak FLOP/s")
    pl.add_argument("--weight-dtype", help="weight dtype for the decode roofline (default: --dtype)")
    pl.add_argument("--train-tokens", type=_num, help="training tokens D")
    pl.add_argument("--days", type=_num, default=30.0, help="training time budget")
    pl.add_argument("--serve-tokens-per-day", type=_num, help="daily tokens to serve")
    pl.add_argument("--layers", type=int)
    pl.add_argument("--context", type=int)
    pl.add_argument("--d-model", type=int)
    pl.set_defaults(fn=cmd_plan)

    ft = csub.add_parser("fit", help="does the model (weights + KV cache + activations) fit one device?")
    common(ft)
    ft.add_argument("--params", type=_num, required=True)
    ft.add_argument("--dtype", default="bf16", help="weight dtype: fp32, bf16, fp16, fp8, int8, int4, nf4")
    ft.add_argument("--layers", type=int)
    ft.add_argument("--kv-heads", type=int)
    ft.add_argument("--head-dim", type=int)
    ft.add_argument("--context", type=int, default=4096)
    ft.add_argument("--batch", type=int, default=1)
    ft.add_argument("--kv-dtype", default="bf16")
    ft.add_argument("--activation-gb", type=_num)
    ft.set_defaults(fn=cmd_fit)
