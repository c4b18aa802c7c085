"""A `costopt run` result as the terminal shows it: the figures of the baseline and the candidate, their
speed rows, the drop, the saving and what to look at next."""

from __future__ import annotations

from typing import Any

from optimizer.cli_format import table
from optimizer.formatting import drop_text, num, served_text, speed_rows
from optimizer.measure.price import Price
from optimizer.measure.roofline import roofline_text
from optimizer.measure.width_check import check_text
from optimizer.measurement import run_candidate


def render_result(r: dict[str, Any]) -> str:
    sysinfo = r["system"]
    sp = r["baseline"]["speed"]
    shape = (
        f"batch {sp['batch_size']}, {sp['prompt_tokens']} prompt + {sp['new_tokens']} new tokens"
        if sp["kind"] == "causal-lm"
        else f"batch {sp['batch_size']}, {sp['texts']} texts, {sp['real_tokens']} real tokens"
    )
    out = [
        f"{r['recipe']}: {r['model']} ({r['task']}) on {sysinfo['cpu']['model']}, {sp['threads']} threads; {shape}",
        f"eval data: {r['data']['eval']['origin']}, {r['data']['eval']['examples']} examples",
        "",
    ]
    cand, record = r.get("candidate"), run_candidate(r)
    q_rows = []
    for m, v in r["baseline"]["quality"].items():
        row = [m, num(v, 4)]
        if record:
            row += [num(record.quality.get(m), 4), drop_text(record.drops[m]) if m in record.drops else "-"]
        q_rows.append(row)
    header = ["metric", "baseline"] + (["candidate", "drop (95% CI)"] if record else [])
    out += [table(q_rows, header), ""]
    if record and len(record.drops_by_set) > 1:  # data.extra_eval: the drop on each set
        rows = [[name, m, drop_text(d)] for name, on_set in record.drops_by_set.items() for m, d in on_set.items()]
        out += [table(rows, ["eval set", "metric", "drop (95% CI)"]), ""]
    base, other = speed_rows(r["baseline"]), speed_rows(cand)  # medians (range over repeats, cv)
    rows = [[k, v] + ([other.get(k, "–")] if other else []) for k, v in base.items()]
    out += [table(rows, ["speed and footprint", "baseline"] + (["candidate"] if other else []))]
    base_price = Price.maybe(r["baseline"].get("cost"))
    if base_price is not None:
        c_rows = []
        for label, price in (("baseline", base_price), ("candidate", record.cost if record else None)):
            if price is not None:
                c_rows.append(
                    [
                        label,
                        f"${price.input_usd_per_m:.4f}",
                        "-" if price.output_usd_per_m is None else f"${price.output_usd_per_m:.4f}",
                        f"${price.blended_usd_per_m:.4f}",
                        "-" if price.monthly_usd is None else f"${price.monthly_usd:,.2f}",
                    ]
                )
        out += [
            "",
            f"cost on {base_price.hardware} (${base_price.hourly_usd}/hour, {base_price.utilization:.0%} utilization; "
            "this machine's measured speed priced at that rate):",
            table(c_rows, ["model", "$/1M input", "$/1M output", "$/1M blended", "per month"]),
        ]
    if cand and cand.get("speed") and cand["speed"]["input_tokens_per_s"]["median"]:
        ratio = cand["speed"]["input_tokens_per_s"]["median"] / sp["input_tokens_per_s"]["median"]
        out += ["", f"input speedup over baseline: {ratio:.2f}x"]
    for label, part in (("baseline", r["baseline"]), ("candidate", cand)):
        speed = (part or {}).get("speed") or {}
        points = speed.get("operating_points")
        if points:
            out += ["", f"{label} operating points (the chosen one: batch {part['speed']['batch_size']}):"]
            out.append(
                table(
                    [
                        [
                            pt["batch_size"],
                            f"{pt['input_tokens_per_s']:,.0f}",
                            f"{pt['output_tokens_per_s']:,.1f}",
                            f"{pt['time_to_first_token_p95_s']:.3f}",
                            f"{1e3 * pt['time_per_output_token_p95_s']:.1f}",
                            "yes" if pt["meets_targets"] else "no",
                            "-" if pt["input_usd_per_m"] is None else f"${pt['input_usd_per_m']:.4f}",
                            "-" if pt["output_usd_per_m"] is None else f"${pt['output_usd_per_m']:.4f}",
                            "-" if pt.get("decode_fraction") is None else f"{pt['decode_fraction']:.0%}",
                            "-" if pt.get("machine_decode_fraction") is None else f"{pt['machine_decode_fraction']:.0%}",
                        ]
                        for pt in points
                    ],
                    [
                        "batch",
                        "prefill tok/s",
                        "decode tok/s",
                        "TTFT p95 (s)",
                        "TPOT p95 (ms)",
                        "meets targets",
                        "$/1M in",
                        "$/1M out",
                        "decode / bandwidth bound",
                        "(this machine's)",
                    ],
                )
            )
            if part["speed"].get("sweep_stopped"):
                out.append(f"{label} sweep stopped: {part['speed']['sweep_stopped']}")
        if speed.get("latency_misses"):
            out.append(f"{label} misses the latency targets: {'; '.join(part['speed']['latency_misses'])}")
        served = speed.get("served")
        if served:
            out.append(f"{label} served {served_text(served)}")
        roof = speed.get("roofline")
        if roof:
            out.append(f"{label} {roofline_text(roof)}")
            out += [f"  flag: {f}" for f in roof["flags"]]
    if cand and cand.get("widths"):
        out.append(f"candidate outputs against the baseline's, at every input width: {check_text(cand['widths'])}")
    for n in r.get("notes", []):
        out.append(f"note: {n}")
    if r.get("status") == "broken":
        out.append(f"{r['error']}: its speed was not measured and it is not priced")
    return "\n".join(out)
