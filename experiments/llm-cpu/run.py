"""A small Llama served three ways, measured in one run: the baseline, the best single technique, and
the configuration `costopt search` chose.

    python experiments/llm-cpu/run.py                  (2 CPU threads; about 40 minutes on 2 cores: a 30-minute search, then the comparison)
    python experiments/gpu/run.py                      (the same on a CUDA GPU)

1. The recipe's speed.model is a Llama of SmolLM2-135M's shape with seeded random weights (models/shapes;
   speed depends on shapes; its quality means nothing).
2. Runs `costopt search` on the recipe (recipes/llm-cpu-search.yaml or llm-gpu-search.yaml): quality on
   stories260K (real weights), speed and cost on the 135M-shaped model (the recipe's speed.model).
   Skipped with --deploy FILE, which compares an earlier search's choice instead.
3. In one process: every configuration's quality on stories260K against fp32 on the same batches
   (perplexity change with a paired-bootstrap 95% interval, KL, top-1 agreement), then its prefill and
   decode speed on the 135M-shaped model, one warm-up round and then rounds that alternate the
   configurations, rotating the order, so drift hits all of them alike.
4. The best single technique is the cheapest single-technique configuration within the recipe's quality
   budget, measured in this run. Writes results.json and RESULTS.md beside the script given as --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optimizer import drop_text, write_section

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

X = [{"name": "onnx-export"}]
SINGLES: dict[str, dict[str, list[dict[str, Any]]]] = {
    "cpu": {
        "torch bf16": [{"name": "cast", "dtype": "bfloat16"}],
        "torch dynamic int8": [{"name": "torch-dynamic-int8"}],
        "ORT int8 dynamic": X + [{"name": "ort-int8-dynamic"}],
        "ORT int4 (block 32)": X + [{"name": "ort-int4", "block_size": 32}],
    },
    "cuda": {
        "torch bf16": [{"name": "cast", "dtype": "bfloat16"}],
        "torch fp16": [{"name": "cast", "dtype": "float16"}],
        "bnb int8": [{"name": "bnb-int8"}],
        "bnb nf4 (bf16 compute)": [{"name": "bnb-4bit", "quant_type": "nf4", "compute_dtype": "bfloat16"}],
    },
}
BASELINE, CHOSEN = "torch fp32 (baseline)", "costopt search's choice"


def costopt(*args: str) -> None:
    """The CLI as a user runs it (the same interpreter, so it also works where no console script is installed)."""
    subprocess.run(
        [sys.executable, "-c", "import sys; from optimizer.cli import main; sys.exit(main())", *args], check=True, cwd=REPO
    )


def search(recipe: Path, overrides: list[str], runs: Path) -> Path:
    sets = [a for o in overrides + [f"output_dir={runs}"] for a in ("--set", o)]
    costopt("search", str(recipe), *sets)
    name = recipe.stem
    deploy = runs / name / "deploy.yaml"
    if not deploy.is_file():
        raise SystemExit(f"the search wrote no {deploy}: nothing met the budget; see `costopt report {runs / name}`")
    return deploy


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--recipe", help="default: recipes/llm-cpu-search.yaml (cpu) or llm-gpu-search.yaml (cuda)")
    ap.add_argument("--deploy", help="compare this deploy.yaml's configuration instead of running a search")
    ap.add_argument("--runs", default=str(REPO / "runs"), help="where the search keeps its study")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(HERE), help="folder for results.json and RESULTS.md")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (repeatable)")
    ap.add_argument("--report", action="store_true", help="only rewrite RESULTS.md from --out's results.json")
    args = ap.parse_args(argv)
    if args.report:
        write_section(Path(args.out) / "RESULTS.md", render(json.loads((Path(args.out) / "results.json").read_text())))
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import cost
    from optimizer import (
        Bench,
        Stat,
        apply_chain,
        bench_causal_lm,
        chain_of,
        fingerprint,
        load_recipe,
        read_deployment,
        resolve_device,
        set_threads,
    )

    recipe_path = Path(args.recipe or REPO / "recipes" / f"llm-{'gpu' if args.device == 'cuda' else 'cpu'}-search.yaml")
    overrides = list(args.set)
    t0 = time.time()
    deploy = Path(args.deploy) if args.deploy else search(recipe_path, overrides, Path(args.runs))
    search_seconds = None if args.deploy else round(time.time() - t0, 1)
    config = read_deployment(deploy)

    recipe = load_recipe(recipe_path, overrides)
    budget = recipe.budget
    metric = budget.metric
    threads = set_threads(recipe.hardware.threads)
    bench = Bench.load_data(recipe, resolve_device(recipe.hardware.device))
    bench.load_baseline()
    base_quality = bench.baseline_quality()
    s = recipe.speed
    batch = int(config.get("batch_size") or s.batch_size)
    chains = {BASELINE: []} | {k: chain_of(chain) for k, chain in SINGLES[bench.device].items()}
    chains[CHOSEN] = [{"name": p["name"], "params": p["params"]} for p in config["passes"]]

    work = Path(tempfile.mkdtemp(prefix="costopt-llm-"))
    rows: dict[str, dict[str, Any]] = {}
    timed: dict[str, Any] = {}
    for label, chain in chains.items():
        print(f"== {label}", flush=True)
        if not chain:
            rows[label] = {"passes": [], "quality": base_quality, "within_budget": True}
            timed[label] = bench.timed_baseline
            continue
        timings: dict[str, float] = {}
        try:
            cand = apply_chain(recipe, chain, bench.context(work / label.replace(" ", "_")), timings)
            values, drops = bench.judge(cand, budget.confidence, batch)
            violation = budget.violation(drops[metric])
            timed[label] = bench.timed(cand, chain, work / (label.replace(" ", "_") + "-speed"), timings)
            rows[label] = {
                "passes": chain,
                "runtime": cand.runtime,
                "quality": values,
                "drops": drops,
                "within_budget": violation <= 0,
                "notes": cand.notes,
                "timings": timings,
            }
            del cand
        except Exception as e:  # a refused or broken configuration is reported, not fatal
            rows[label] = {"passes": chain, "error": f"{type(e).__name__}: {e}"[:300]}
            print(f"   failed: {rows[label]['error']}", flush=True)

    texts = bench.eval_data.interleaved()
    names = list(timed)
    samples: dict[str, dict[str, list[float]]] = {n: {"prefill": [], "decode": []} for n in names}

    def one(name: str) -> dict[str, Any]:
        if bench.device == "cpu":
            time.sleep(1.0)  # let the previous runtime's spinning worker threads go quiet
        return bench_causal_lm(timed[name], texts, batch, s.prompt_tokens, s.new_tokens, 0, 1)

    for n in names:  # warm-up round (and the untimed first calls of each runtime)
        one(n)
        one(n)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            res = one(n)
            samples[n]["prefill"].append(res["input_tokens_per_s"]["median"])
            samples[n]["decode"].append(res["output_tokens_per_s"]["median"])
    shutil.rmtree(work, ignore_errors=True)

    entry = cost.load_catalog().get(recipe.hardware.catalog)
    share = 0.5
    for n in names:
        pre, dec = Stat.of(samples[n]["prefill"]), Stat.of(samples[n]["decode"])
        price = cost.token_price(entry, pre.median, dec.median, recipe.hardware.utilization)
        rows[n] |= {
            "prefill_tokens_per_s": asdict(pre),
            "decode_tokens_per_s": asdict(dec),
            "usd_per_m_input": price.input_usd_per_m,
            "usd_per_m_output": price.output_usd_per_m,
            "usd_per_m_blended": price.blended_usd_per_m(share),
        }
    singles = [n for n in SINGLES[bench.device] if rows[n].get("within_budget") and "usd_per_m_blended" in rows[n]]
    best_single = min(singles, key=lambda n: rows[n]["usd_per_m_blended"]) if singles else None
    chosen_usd = rows[CHOSEN].get("usd_per_m_blended")
    ratios = {n: rows[n]["usd_per_m_blended"] / chosen_usd for n in names if chosen_usd and n != CHOSEN}

    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f"python {Path(sys.argv[0]).resolve().relative_to(REPO)}"
        + (f" --deploy {args.deploy}" if args.deploy else ""),
        "device": bench.device,
        "machine": fingerprint(),
        "threads": threads,
        "recipe": str(recipe_path.relative_to(REPO)),
        "quality_model": recipe.model.source,
        "speed_model": recipe.speed.model.model_dump() if recipe.speed.model else None,
        "batch_size": batch,
        "prompt_tokens": s.prompt_tokens,
        "new_tokens": s.new_tokens,
        "rounds": args.rounds,
        "eval": {"source": recipe.data.eval.source, "examples": len(bench.eval_data)},
        "budget": {"metric": metric, "max_drop": budget.max_drop, "relative": budget.relative, "confidence": budget.confidence},
        "catalog": entry.name,
        "hourly_usd": entry.hourly_usd(),
        "utilization": recipe.hardware.utilization,
        "input_share": share,
        "search_seconds": search_seconds,
        "study": _shown(deploy.parent),
        "chosen": {"trial": config.get("trial"), "passes": config["passes"], "deploy": str(deploy)},
        "best_single": best_single,
        "ratios_vs_chosen": ratios,
        "results": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    write_section(out / "RESULTS.md", render(result))  # its part only: later sections of the file stay
    print(render(result))
    return 0


def _same_chain(a: list[dict[str, Any]] | None, b: list[dict[str, Any]]) -> bool:
    """The same passes with the same parameters, once each pass's defaults are filled in."""
    from optimizer import build_pass

    def norm(chain: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        return [(p["name"], build_pass(p["name"], p.get("params", {})).config.model_dump()) for p in chain]

    return a is not None and norm(a) == norm(b)


def _shown(path: Path) -> str:
    """A path relative to the repository when it lies inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _times(ratio: float) -> str:
    """`ratio` = the other configuration's $ / costopt's $."""
    return f"{ratio:.2f}x cheaper" if ratio >= 1 else f"{1 / ratio:.2f}x more expensive"


def _drop(row: dict[str, Any], metric: str) -> str:
    d = row.get("drops", {}).get(metric)
    if not d:
        return "—"
    return drop_text(d)


def _stat(st: dict[str, Any] | None, digits: int = 0) -> str:
    if not st:
        return "—"
    return f"{st['median']:,.{digits}f} ({st['min']:,.{digits}f}–{st['max']:,.{digits}f})"


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    gpus = "; ".join(f"{g['name']} ({g['memory_bytes'] / 2**30:.0f} GiB, CUDA {g.get('cuda')})" for g in m.get("gpus") or [])
    b = r["budget"]
    lines = [
        f"# Small Llama on {'a GPU' if r['device'] == 'cuda' else 'the CPU'}: baseline, best single technique, costopt's choice",
        "",
        f"Recorded {r['date']} with `{r['command']}`"
        + (f" (the search took {r['search_seconds'] / 60:.1f} min; its study: {r['study']})." if r["search_seconds"] else "."),
        "",
        f"- Machine: {m['cpu'].get('model')}, {m['cpu'].get('logical_cores')} logical cores"
        + (f"; GPU: {gpus}" if gpus else "")
        + f"; {r['threads']} CPU threads for every runtime.",
        "- Libraries: " + ", ".join(f"{k} {v}" for k, v in m.get("libraries", {}).items()) + ".",
        f"- Quality: stories260K (real weights) on {r['eval']['examples']} stdlib docstrings, against fp32 on the same "
        "batches. Perplexity change: positive = worse, paired bootstrap 95% interval.",
        f"- Speed: a random-weight Llama of SmolLM2-135M's shape (30 layers, hidden 576, vocab 49,152): speed depends on "
        f"shapes, its quality means nothing. Batch {r['batch_size']}, {r['prompt_tokens']}-token prompts of real text, "
        f"{r['new_tokens']} greedy decode steps with the KV cache; one warm-up round, then {r['rounds']} rounds alternating "
        "the configurations; medians (min–max over rounds).",
        f"- Price: {r['catalog']} at ${r['hourly_usd']:.3f}/hour, {r['utilization']:.0%} utilization; blended = "
        f"{r['input_share']:.0%} input tokens. Budget: {b['metric']} within {b['max_drop']:.0%} (upper end of the "
        f"{b['confidence']:.0%} interval).",
        "",
        "| configuration | perplexity change (95% CI) | KL vs fp32 | top-1 agreement | within budget | prefill tok/s | "
        "decode tok/s | $/1M in | $/1M out | $/1M blended | fp32 ÷ this |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = r["results"][BASELINE].get("usd_per_m_blended")
    for name, row in r["results"].items():
        label = name + (" ← best single technique" if name == r["best_single"] else "")
        if "error" in row:
            lines.append(f"| {label} | refused: {row['error']} | | | | | | | | | |")
            continue
        q = row.get("quality", {})
        budget = "—" if name == BASELINE else ("yes" if row.get("within_budget") else "no")
        usd = row.get("usd_per_m_blended")
        lines.append(
            f"| {label} | {_drop(row, b['metric'])} | {q.get('kl', 0):.4f} | {q.get('top1-agreement', 1):.3f} | {budget} | "
            f"{_stat(row.get('prefill_tokens_per_s'))} | {_stat(row.get('decode_tokens_per_s'), 1)} | "
            f"${row.get('usd_per_m_input', 0):.4f} | ${row.get('usd_per_m_output', 0):.4f} | ${usd:.4f} | "
            f"{base / usd:.2f}x |"
        )
    ch = r["chosen"]
    chain = (
        " → ".join(
            p["name"] + (" " + ", ".join(f"{k}={v}" for k, v in p["params"].items()) if p["params"] else "") for p in ch["passes"]
        )
        or "no passes (the baseline)"
    )
    lines += ["", f"costopt's choice (trial {ch['trial']}): {chain}.", ""]
    best = r["best_single"]
    twins = [n for n, row in r["results"].items() if n not in (CHOSEN, BASELINE) and _same_chain(row.get("passes"), ch["passes"])]
    if twins:
        lines += [
            f"The search's choice is the same configuration as {twins[0]}: the two rows are two builds of one "
            "configuration, timed in the same rounds, so the gap between them is this run's noise.",
            "",
        ]
    if best and best in r["ratios_vs_chosen"]:
        lines.append(
            f"**costopt's choice against the best single technique ({best}): {_times(r['ratios_vs_chosen'][best])} "
            f"per 1M blended tokens; against the fp32 baseline: {_times(r['ratios_vs_chosen'][BASELINE])}.**"
        )
    elif not best:
        lines.append("No single technique met the budget in this run.")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
