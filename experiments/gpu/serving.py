"""Issue 17's GPU table: a Llama-3.1-8B-shaped model served in bf16, float8 and int4 weight-only, each
decoding through a static KV cache with CUDA graphs (torch-static-cache), plus bf16 with eager decode for
comparison; one `costopt run` each (its fp32 baseline, then the chain), at the operating points of
serving-8b.yaml.

    python experiments/gpu/serving.py [--chains "bf16,fp8,int4,bf16 (eager decode)"] [--timeout 540]

Writes results.serving.json and the "Serving the 8B shape" section of RESULTS.md next to this file. The
shape (models/shapes/llama-3.1-8b) gets seeded random weights on the GPU (speed only); quality comes
from stories260K as a proxy. Needs a CUDA GPU with
about 40 GB free (the fp32 baseline); float8 needs compute capability 8.9+ (Hopper, Ada).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BF16 = {"name": "cast", "dtype": "bfloat16"}
# serving-grade decode: a static KV cache sized to the recipe's 64 new tokens, the step replayed as a CUDA graph
STATIC = {"name": "torch-static-cache", "new_tokens": 64}
CHAINS: dict[str, list[dict[str, Any]]] = {
    "bf16 (eager decode)": [BF16],
    "bf16": [BF16, STATIC],
    "fp8": [BF16, {"name": "torch-float8"}, STATIC],
    "int4": [BF16, {"name": "torch-weight-only", "bits": 4, "group_size": 128, "algorithm": "hqq"}, STATIC],
}
HEADING = "## Serving the Llama-3.1-8B shape on one GPU"


def run_chain(recipe: Path, label: str, chain: list[dict[str, Any]], timeout: int) -> dict[str, Any]:
    cmd = ["costopt", "-q", "run", str(recipe), "--json", "--set", f"passes={json.dumps(chain)}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"label": label, "error": f"did not finish in {timeout} s"}
    try:
        out = json.loads(done.stdout)
    except json.JSONDecodeError:
        return {"label": label, "error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return {"label": label, "passes": chain, "result": out}


def _row(label: str, part: dict[str, Any] | None, drop: str) -> str:
    if not part:
        return f"| {label} | not measured | | | | | | |"
    sp, cost = part["speed"], part.get("cost") or {}
    points = {p["batch_size"]: p for p in sp.get("operating_points", [])}
    b1 = points.get(1, {})
    return (
        f"| {label} | {drop} | {sp['batch_size']} | ${cost.get('input_usd_per_m', float('nan')):.4f} | "
        f"${cost.get('output_usd_per_m', float('nan')):.4f} | {b1.get('output_tokens_per_s', float('nan')):,.1f} | "
        f"{b1.get('decode_fraction', float('nan')):.0%} | {b1.get('machine_decode_fraction', float('nan')):.0%} |"
    )


def write_table(runs: list[dict[str, Any]], path: Path) -> None:
    lines = [
        HEADING,
        "",
        f"Recorded {datetime.now(UTC).isoformat(timespec='seconds')}: `python experiments/gpu/serving.py`. "
        "Each row is one `costopt run` of serving-8b.yaml: its fp32 baseline, then the chain, in one process "
        "(no alternating rounds, so no saving interval). Random weights of Llama-3.1-8B's shape (speed only); "
        "perplexity change on stories260K as a proxy for each chain's effect.",
        "",
        "| configuration | perplexity change (stories260K proxy) | chosen batch | $/1M in | $/1M out | decode tok/s at batch 1 | "
        "batch-1 decode / the entry's bandwidth bound | / this GPU's measured read bandwidth |",
        "|---|---|---|---|---|---|---|---|",
    ]
    baseline_done = False
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['label']} | failed: {r['error']} | | | | | | |")
            continue
        res = r["result"]
        if not baseline_done:
            lines.append(_row("fp32 (each run's baseline; this one's)", res.get("baseline"), "—"))
            baseline_done = True
        d = ((res.get("candidate") or {}).get("drops") or {}).get("perplexity") or {}
        drop = f"{100 * d['relative']:+.2f}%" if d.get("relative") is not None else ""
        lines.append(_row(r["label"], res.get("candidate"), drop))
    from optimizer import write_section

    if not path.is_file():
        path.write_text("# GPU results\n")
    write_section(path, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chains", default=",".join(CHAINS))
    ap.add_argument("--timeout", type=int, default=540, help="seconds per chain")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("serving.py needs a CUDA GPU", file=sys.stderr)
        return 2
    runs = [run_chain(HERE / "serving-8b.yaml", c, CHAINS[c], args.timeout) for c in args.chains.split(",")]
    (HERE / "results.serving.json").write_text(json.dumps(runs, indent=1, default=str))
    write_table(runs, HERE / "RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
