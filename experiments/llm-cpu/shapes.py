"""Issue 17's CPU table: a real LLM shape served by torch, ONNX Runtime and OpenVINO, int8 and int4, in one process.

    python experiments/llm-cpu/shapes.py --shape smollm2-135m|llama-3.2-1b [--chains "ORT int8,OV int4,..."]

Each configuration is timed on seeded random weights of the shape (models/shapes/<shape>: speed only) at
the operating points of operating-points.yaml (batch 1 and 8, then doubling while a point meets the latency
targets), priced per 1M input and per 1M output tokens at the cheapest point within the targets, with every
point's share of this machine's measured roofline. Its
quality is the same chain on stories260K (real weights), a proxy. The fp32 baseline is timed once, first;
configurations run one after another (no alternating rounds: the table's ratios carry no interval).
Writes shapes-<shape>.json and the shape's section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import shutil
import tempfile
import time
import traceback
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optimizer import chain_of, write_section

HERE = Path(__file__).resolve().parent
RECIPE = HERE / "operating-points.yaml"
EXPORT, OV = {"name": "onnx-export"}, {"name": "ov-export"}
CHAINS: dict[str, list[dict[str, Any]]] = {
    "torch bf16": [{"name": "cast", "dtype": "bfloat16"}],
    "torch int8 (torchao) + static cache (compiled step)": [
        {"name": "torch-dynamic-int8", "compile": False},
        {"name": "torch-static-cache", "new_tokens": 32},
    ],
    # OpenVINO before ONNX Runtime: the ONNX export of the 1B shape ran out of 24 GiB on this machine, and
    # rows are saved as they finish
    "OpenVINO int8 weights": [OV, {"name": "ov-weight-compress", "mode": "int8_asym"}],
    "OpenVINO int4 weights (group 32)": [OV, {"name": "ov-weight-compress", "mode": "int4_sym", "group_size": 32}],
    "ONNX Runtime int8 dynamic": [EXPORT, {"name": "ort-int8-dynamic"}],
    "ONNX Runtime int4 (block 32)": [EXPORT, {"name": "ort-int4", "block_size": 32}],
}
BASELINE = "torch fp32 (baseline)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", required=True, choices=["smollm2-135m", "llama-3.2-1b"])
    ap.add_argument("--chains", default=",".join(CHAINS), help="comma-separated labels of CHAINS")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--report", action="store_true", help="only rewrite the shape's section from its json")
    ap.add_argument("--note", action="append", default=[], help="with --report: a line to keep with the results")
    args = ap.parse_args(argv)
    if args.report:  # e.g. after a run that was killed: its json holds the rows that finished
        path = args.out / f"shapes-{args.shape}.json"
        result = json.loads(path.read_text())
        result["notes"] = result.get("notes", []) + args.note
        path.write_text(json.dumps(result, indent=1, default=str))
        write_section(args.out / "RESULTS.md", render(result))
        return 0
    unknown = [c for c in args.chains.split(",") if c not in CHAINS]
    if unknown:
        ap.error(f"unknown chain {unknown[0]!r}; choose from {', '.join(CHAINS)}")
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log = logging.getLogger("shapes")
    log.setLevel(logging.INFO)

    import torch

    from optimizer import Bench, apply_chain, fingerprint, footprint, load_recipe, resolve_device, set_threads

    recipe = load_recipe(RECIPE, [f"speed.model.source=../../models/shapes/{args.shape}"])
    set_threads(recipe.hardware.threads)
    bench = Bench.load_data(recipe, resolve_device(recipe.hardware.device))
    baseline = bench.load_baseline()
    bench.baseline_quality()
    work = Path(tempfile.mkdtemp(prefix="costopt-shapes-"))
    rows: dict[str, Any] = {}
    t0 = time.time()
    for label in [BASELINE, *args.chains.split(",")]:
        chain = CHAINS.get(label, [])
        passes = chain_of(chain)
        log.info("== %s", label)
        timings: dict[str, float] = {}
        started = time.time()
        try:
            if label == BASELINE:
                cand, timed, drops = baseline, bench.timed_baseline, {}
            else:
                cand = apply_chain(recipe, passes, bench.context(work / "quality"), timings)
                _, drops = bench.judge(cand)
                timed = bench.timed(cand, passes, work / "timed", timings)
            speed, cost = bench.speed_and_cost(timed)
            fp = footprint(cand, work / "artifact")
            speed["roofline"] = bench.roofline(speed, fp, passes, timed.weight_bytes())
            rows[label] = {"passes": passes, "drops": drops, "speed": speed, "cost": cost, "timings": timings}
            if label == BASELINE:  # measured: its weights go (a 1B shape's 5 GB), its config stays for the roofline
                bench.timed_baseline.module = None
        except Exception as e:  # keep going: one failing configuration must not lose the others' figures
            rows[label] = {"passes": passes, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
            log.error("%s failed:\n%s", label, traceback.format_exc())
        rows[label]["seconds"] = round(time.time() - started, 1)
        timed = cand = None
        torch._dynamo.reset()  # compiled steps hold their module (a 1B shape's weights) until reset
        gc.collect()
        for sub in ("quality", "timed", "artifact"):
            shutil.rmtree(work / sub, ignore_errors=True)
        result = {
            "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": f"python experiments/llm-cpu/shapes.py --shape {args.shape}"
            + ("" if args.chains == ",".join(CHAINS) else f' --chains "{args.chains}"'),
            "shape": args.shape,
            "machine": fingerprint(),
            "speed_settings": recipe.speed.model_dump(mode="json"),
            "catalog": recipe.hardware.catalog,
            "seconds": round(time.time() - t0, 1),
            "chains": [BASELINE, *args.chains.split(",")],
            "rows": rows,
        }
        (args.out / f"shapes-{args.shape}.json").write_text(json.dumps(result, indent=1, default=str))  # after each row
    shutil.rmtree(work, ignore_errors=True)
    write_section(args.out / "RESULTS.md", render(result))
    print(render(result))
    return 0


def heading(shape: str) -> str:
    return f"## One table, one process: the {shape} shape on torch, ONNX Runtime and OpenVINO"


def _cell(points: dict[int, dict[str, Any]], key: str, fmt: str, at: tuple[int, ...]) -> str:
    return " / ".join(fmt.format(points[b][key]) if points.get(b, {}).get(key) is not None else "–" for b in at)


def render(r: dict[str, Any]) -> str:
    from optimizer import drop_text

    s, m = r["speed_settings"], r["machine"]["cpu"]
    listed = " and ".join(str(b) for b in s["batch_sizes"])
    measured = any(
        "machine_decode_fraction" in p for row in r["rows"].values() for p in row.get("speed", {}).get("operating_points", [])
    )
    sweep = (
        f"Batch {listed}, then doubling up to {s['max_batch_size']} while a point meets the targets"
        if s.get("max_batch_size")
        else f"Batch {listed}"
    )
    lines = [
        heading(r["shape"]),
        "",
        f"Recorded {r['recorded']} with `{r['command']}` ({r['seconds'] / 60:.0f} min).",
        "",
        f"- Machine: {m['model']} ({', '.join(m.get('isa') or [])}), {r['machine']['cpu']['usable_cores']} cores, "
        "2 threads for every runtime.",
        f"- Speed: seeded random weights of the {r['shape']} shape (models/shapes/{r['shape']}): speed only. "
        f"{sweep}; {s['prompt_tokens']}-token prompts of real text, "
        f"{s['new_tokens']} greedy decode steps; {s['warmup']} warm-up and {s['repeats']} timed runs per point. The fp32 "
        "baseline first, then each configuration, one after another (no alternating rounds: ratios carry no interval).",
        f"- Operating point: the cheapest batch within time to first token p95 ≤ {s['ttft_p95_s']} s and time per "
        f"output token p95 ≤ {1e3 * s['tpot_p95_s']:.0f} ms (else the nearest miss); priced on {r['catalog']}.",
        "- Roofline: shares of this machine's own bounds, measured in the same process with the same threads "
        "(`optimizer/measure/machine_bounds.py`: the best read bandwidth over twice the last-level cache, and torch's "
        "best square matmul in the chain's arithmetic), with the timed model's own weight bytes; the catalog entry's "
        "shares are in the json."
        if measured
        else f"- Roofline: shares of {r['catalog']}'s catalog bounds.",
        "- Quality: the same chain on stories260K (real weights), perplexity change with its 95% interval: a proxy.",
        "",
        "| configuration | perplexity change (stories260K proxy) | prefill tok/s (b1 / b8 / chosen) | "
        "decode tok/s (b1 / b8 / chosen) | TPOT p95 (b1 / b8 / chosen) | chosen batch | $/1M in | $/1M out | "
        "decode / bandwidth bound (b1 / chosen) | prefill / matmul bound (chosen) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    sweeps = []
    for label, row in r["rows"].items():
        if "error" in row:
            lines.append(f"| {label} | failed: {row['error']} | | | | | | | | |")
            continue
        sp, cost = row["speed"], row["cost"] or {}
        points = {p["batch_size"]: p for p in sp.get("operating_points", [])}
        chosen = sp["batch_size"]
        d = (row["drops"] or {}).get("perplexity")
        drop = "—" if not d else drop_text(d)
        miss = "" if not sp.get("latency_misses") else " (misses)"
        machine = "machine_decode_fraction" if measured else "decode_fraction"
        prefill = machine.replace("decode", "prefill")
        lines.append(
            f"| {label} | {drop} | {_cell(points, 'input_tokens_per_s', '{:,.0f}', (1, 8, chosen))} | "
            f"{_cell(points, 'output_tokens_per_s', '{:,.1f}', (1, 8, chosen))} | "
            f"{_cell(points, 'time_per_output_token_p95_s', '{:.3f} s', (1, 8, chosen))} | {chosen}{miss} | "
            f"${cost.get('input_usd_per_m', float('nan')):.4f} | ${cost.get('output_usd_per_m', float('nan')):.4f} | "
            f"{_cell(points, machine, '{:.0%}', (1, chosen))} | {_cell(points, prefill, '{:.0%}', (chosen,))} |"
        )
        if sp.get("sweep_stopped"):
            sweeps.append(f"  - {label}: batches {', '.join(str(b) for b in points)}; {sp['sweep_stopped']}")
    for label in r.get("chains", []):
        if label not in r["rows"]:
            lines.append(f"| {label} | not measured: the run ended before this row | | | | | | | | |")
    lines += [""] + (["- Where each sweep stopped:", *sweeps] if sweeps else []) + [f"- {n}" for n in r.get("notes", [])]
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
