"""Every compression pass, measured in one process with 2 threads, against the same baseline.

    python experiments/passes/run.py [--only minilm|minilm-openvino|stories|smollm|int4-stories|int4-smollm]
                                     [--out experiments/passes]

Three parts:
  minilm  - all-MiniLM-L6-v2 (real weights) on stdlib-docs retrieval: MRR / Recall@1 drop with 95% CIs,
            encode tokens/s and speedup over torch fp32, size. The baseline's speed is measured at the start
            and again at the end, so drift over the run is visible.
  stories - stories260K (real weights): perplexity, KL and top-1 agreement vs fp32 on stdlib docstrings.
  smollm  - a random-weight Llama with SmolLM2-135M's shape: prefill and decode tokens/s only
            (speed depends on shapes; its quality means nothing).
  int4-stories, int4-smollm - calibrated 4-bit weights (HQQ, GPTQ, AWQ + scale estimation) against
            round to nearest on each runtime: quality on stories260K, speed on the 135M shape.
Writes results.json (every figure) and RESULTS.md next to this file.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optimizer import drop_text

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

EXPORT = [{"name": "onnx-export"}]
OPT = EXPORT + [{"name": "ort-optimize"}]
QUANT_CHAINS: dict[str, list[dict[str, Any]]] = {
    "torch bf16": [{"name": "cast", "dtype": "bfloat16"}],
    "torch fp16": [{"name": "cast", "dtype": "float16"}],
    "torch dynamic int8": [{"name": "torch-dynamic-int8"}],
    "bnb int8": [{"name": "bnb-int8"}],
    "bnb nf4": [{"name": "bnb-4bit", "quant_type": "nf4"}],
    "ORT fp32": EXPORT,
    "ORT fp32 optimized": OPT,
    "ORT int8 dynamic": OPT + [{"name": "ort-int8-dynamic"}],
    "ORT int8 dynamic reduce_range": OPT + [{"name": "ort-int8-dynamic", "reduce_range": True}],
    "ORT int8 static (QDQ, minmax)": EXPORT + [{"name": "ort-int8-static", "samples": 128}],
    "ORT int4 (block 32)": EXPORT + [{"name": "ort-int4", "block_size": 32}],
    "OpenVINO f32": [{"name": "ov-export"}],
    "OpenVINO bf16": [{"name": "ov-export", "inference_precision": "bf16"}],
    "OpenVINO int8 static (NNCF)": [{"name": "ov-export"}, {"name": "ov-int8-static", "samples": 128}],
    "OpenVINO int8 weights (NNCF)": [{"name": "ov-export"}, {"name": "ov-weight-compress", "mode": "int8_asym"}],
    "OpenVINO int4 weights, round-to-nearest (group 32)": [
        {"name": "ov-export"},
        {"name": "ov-weight-compress", "mode": "int4_sym", "group_size": 32},
    ],
    "OpenVINO int4 weights, AWQ + scale estimation (group 32)": [
        {"name": "ov-export"},
        {"name": "ov-weight-compress", "mode": "int4_sym", "group_size": 32, "awq": True, "scale_estimation": True},
    ],
}
MINILM_EXTRA = {
    "distill to 3 layers": [
        {
            "name": "distill",
            "num_layers": 3,
            "steps": 400,
            "batch_size": 32,
            "lr": 1e-4,
            "max_length": 128,
            "hidden_weight": 1.0,
            "max_seconds": 420,
        }
    ],
    "prune-structured FFN 50%": [{"name": "prune-structured", "neurons": 0.5, "samples": 128}],
    "prune-structured FFN 50% + distill": [
        {"name": "prune-structured", "neurons": 0.5, "samples": 128},
        {"name": "distill", "steps": 150, "batch_size": 32, "lr": 1e-4, "max_length": 128, "max_seconds": 180},
    ],
}
OV = [{"name": "ov-export"}]
INT4 = {"mode": "int4_sym", "group_size": 32}
INT4_CHAINS: dict[str, list[dict[str, Any]]] = {  # calibrated 4-bit against round to nearest, per runtime
    "ORT int4 round-to-nearest (block 32)": EXPORT + [{"name": "ort-int4", "block_size": 32}],
    "ORT int4 round-to-nearest, asymmetric (block 32)": EXPORT + [{"name": "ort-int4", "block_size": 32, "symmetric": False}],
    "ORT int4 HQQ (block 32)": EXPORT + [{"name": "ort-int4", "block_size": 32, "algorithm": "hqq"}],
    "OpenVINO int4 round-to-nearest (group 32)": OV + [{"name": "ov-weight-compress"} | INT4],
    "OpenVINO int4 AWQ + scale estimation (group 32)": OV
    + [{"name": "ov-weight-compress", "awq": True, "scale_estimation": True, "samples": 64} | INT4],
    "OpenVINO int4 GPTQ (group 32)": OV + [{"name": "ov-weight-compress", "gptq": True, "samples": 64} | INT4],
    "torch int4 round-to-nearest (group 32)": [{"name": "torch-weight-only", "bits": 4, "group_size": 32}],
    "torch int4 HQQ (group 32)": [{"name": "torch-weight-only", "bits": 4, "group_size": 32, "algorithm": "hqq"}],
}
OPENVINO_CHAINS = {k: v for k, v in QUANT_CHAINS.items() if k.startswith("OpenVINO")}
PARTS = ["minilm", "minilm-openvino", "stories", "smollm", "int4-stories", "int4-smollm"]
MINILM_PARTS = {  # part key -> heading: the OpenVINO rows were added later, on another machine, as their own part
    "minilm": "## all-MiniLM-L6-v2 (real weights), stdlib-docs retrieval",
    "minilm-openvino": "## all-MiniLM-L6-v2 on OpenVINO (real weights), stdlib-docs retrieval, with its own fp32 baseline",
}
PRUNE_CHAINS = {
    "prune-wanda 50%": [{"name": "prune-wanda", "sparsity": 0.5, "samples": 128}],
    "prune-magnitude 50%": [{"name": "prune-magnitude", "sparsity": 0.5}],
}
SMOLLM = json.loads((REPO / "models" / "shapes" / "smollm2-135m" / "config.json").read_text())


def measure_part(
    recipe_path: Path, chains: dict[str, list[dict[str, Any]]], quality: bool, overrides: list[str], log: logging.Logger
) -> dict[str, Any]:
    from optimizer import Bench, UserError, apply_chain, chain_of, footprint, load_recipe, resolve_device, set_threads

    recipe = load_recipe(recipe_path, overrides)
    set_threads(recipe.hardware.threads)
    bench = Bench.load_data(recipe, resolve_device(recipe.hardware.device))
    baseline = bench.load_baseline()
    work = Path(tempfile.mkdtemp(prefix="costopt-exp-"))
    rows: dict[str, Any] = {}

    def figures(label: str, cand: Any) -> dict[str, Any]:
        row: dict[str, Any] = {"runtime": cand.runtime}
        if quality:
            if cand is baseline:
                row["quality"] = bench.baseline_quality()
            else:
                row["quality"], row["drops"] = bench.judge(cand)
            log.info("%s: %s", label, row["quality"])
        row["speed"], row["cost"] = bench.speed_and_cost(cand)
        row["footprint"] = footprint(cand, work / label.replace(" ", "_").replace("/", "_"))
        row["footprint"]["artifact"] = None
        row["notes"] = list(cand.notes)
        return row

    t0 = time.time()
    rows["torch fp32 (baseline)"] = figures("baseline", baseline)
    for label, chain in chains.items():
        log.info("== %s", label)
        timings: dict[str, float] = {}
        try:
            cand = apply_chain(recipe, chain_of(chain), bench.context(work / "passes"), timings)
            rows[label] = figures(label, cand) | {"passes": chain_of(chain), "timings": timings}
            del cand
        except UserError as e:  # a pass that refuses this model says why; the table shows it
            rows[label] = {"passes": chain_of(chain), "error": e.one_line()}
            log.warning("%s refused: %s", label, e.one_line())
        except Exception as e:  # keep going: one broken pass must not lose the others' figures
            rows[label] = {"passes": chain_of(chain), "error": f"{type(e).__name__}: {e}"}
            log.error("%s failed:\n%s", label, traceback.format_exc())
        shutil.rmtree(work / "passes", ignore_errors=True)
    rows["torch fp32 (baseline, again at the end)"] = {"speed": bench.speed_and_cost(baseline)[0]}
    shutil.rmtree(work, ignore_errors=True)
    return {
        "recipe": str(recipe_path.relative_to(REPO)),
        "overrides": overrides,
        "task": recipe.task,
        "model": recipe.model.source,
        "speed_settings": recipe.speed.model_dump(),
        "catalog": recipe.hardware.catalog,
        "seconds": round(time.time() - t0, 1),
        "rows": rows,
    }


# ---------------------------------------------------------------- report


def _fmt_drop(d: dict[str, Any] | None) -> str:
    if not d:
        return ""
    return drop_text(d)


def _mib(row: dict[str, Any]) -> str:
    return f"{row['footprint']['weight_bytes'] / 2**20:.1f}" if "footprint" in row else ""


def table_minilm(part: dict[str, Any]) -> list[str]:
    rows = part["rows"]
    base_tps = rows["torch fp32 (baseline)"]["speed"]["input_tokens_per_s"]["median"]
    out = [
        "| configuration | MRR | MRR drop (95% CI) | Recall@1 drop (95% CI) | encode tok/s (min-max) | speedup | $/1M tokens | weights MiB | non-zero params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        if "error" in r:
            out.append(f"| {label} | refused: {r['error']} | | | | | | | |")
            continue
        s = r["speed"]["input_tokens_per_s"]
        speed = f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f}) | {s['median'] / base_tps:.2f}x"
        if "footprint" not in r:  # the baseline measured again at the end: speed only
            out.append(f"| {label} | | | | {speed} | | | |")
            continue
        q, drops, cost = r.get("quality", {}), r.get("drops", {}), r.get("cost") or {}
        out.append(
            f"| {label} | {q.get('mrr', float('nan')):.4f} | {_fmt_drop(drops.get('mrr'))} | "
            f"{_fmt_drop(drops.get('recall@1'))} | {speed} | {cost.get('input_usd_per_m', float('nan')):.4f} | "
            f"{_mib(r)} | {r['footprint']['nonzero_parameters']:,} |"
        )
    return out


def table_stories(part: dict[str, Any]) -> list[str]:
    out = [
        "| configuration | perplexity | perplexity change (95% CI) | KL vs fp32 | top-1 agreement | weights MiB |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in part["rows"].items():
        if "error" in r:
            out.append(f"| {label} | refused: {r['error']} | | | | |")
            continue
        if "quality" not in r:
            continue
        q = r["quality"]
        out.append(
            f"| {label} | {q['perplexity']:.2f} | {_fmt_drop(r.get('drops', {}).get('perplexity'))} | "
            f"{q.get('kl', 0):.4f} | {q.get('top1-agreement', 1):.3f} | {_mib(r)} |"
        )
    return out


def table_smollm(part: dict[str, Any]) -> list[str]:
    rows = part["rows"]
    b = rows["torch fp32 (baseline)"]["speed"]
    out = [
        "| configuration | prefill tok/s (min-max) | prefill speedup | decode tok/s (min-max) | decode speedup | weights MiB |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        if "error" in r:
            out.append(f"| {label} | refused: {r['error']} | | | | |")
            continue
        p, d = r["speed"]["input_tokens_per_s"], r["speed"]["output_tokens_per_s"]
        out.append(
            f"| {label} | {p['median']:,.0f} ({p['min']:,.0f}-{p['max']:,.0f}) | "
            f"{p['median'] / b['input_tokens_per_s']['median']:.2f}x | {d['median']:,.1f} ({d['min']:,.1f}-{d['max']:,.1f}) | "
            f"{d['median'] / b['output_tokens_per_s']['median']:.2f}x | {_mib(r)} |"
        )
    return out


def notes(part: dict[str, Any]) -> list[str]:
    out = []
    for label, r in part["rows"].items():
        for n in r.get("notes", []):
            out.append(f"- {label}: {n}")
    return out


def _reproduce(part: dict[str, Any]) -> str:
    machine = f"\nMachine: {machine_line(part['system'])}\n" if "system" in part else ""
    return f"Recorded {part['finished']}: `{part['command']}` ({part['seconds']:.0f} s).\n{machine}"


def machine_line(sysinfo: dict[str, Any]) -> str:
    cpu = sysinfo["cpu"]
    return (
        f"{cpu['model']}, {cpu.get('logical_cores')} logical cores, flags {', '.join(cpu.get('isa', []) or [])}; "
        "threads used: 2 for every runtime. Libraries: "
        + ", ".join(f"{k} {v}" for k, v in sysinfo["libraries"].items() if v)
        + "."
    )


INT4_HEADING = "## Calibrated 4-bit weights against round to nearest"
INT4_INTRO = (
    "Each runtime's own 4-bit weight quantizers, all weights in 4 bits with blocks of 32 (the FFN down projection "
    "of stories260K, 172 wide, is padded by ORT, fitted to a smaller group by NNCF, and left in float by torchao). "
    "Calibrated methods (GPTQ, AWQ + scale estimation) use 64 texts of the calibration split; HQQ uses none. "
    "onnxruntime's own GPTQ is not in the table: in onnxruntime 1.32 its output equals round to nearest "
    "(see the ort-int4 pass). "
    "Quality on stories260K (real weights, its own fp32 baseline); speed on the random-weight 135M shape, which "
    "says nothing of quality."
)


def write_report(results: dict[str, Any], path: Path) -> None:
    sysinfo = results.get("system") or next(iter(results["parts"].values()))["system"]
    lines = [
        "# Compression passes, measured",
        "",
        "Each part was recorded separately (one process each) with the command under its heading; "
        "`python experiments/passes/run.py --report` rewrites this file from results.json.",
        "",
        "Machine of the parts that do not name their own: " + machine_line(sysinfo),
        "",
    ]
    parts = results["parts"]
    for key, heading in MINILM_PARTS.items():
        if key not in parts:
            continue
        p = parts[key]
        sp = p["speed_settings"]
        lines += [
            heading,
            "",
            _reproduce(p),
            f"Quality on the eval split (summary line -> docstring body); speed: {sp['texts']} texts, batch {sp['batch_size']}, "
            f"{sp['warmup']} warm-up + {sp['repeats']} timed passes, real (unpadded) tokens. Drops: positive = worse, "
            f"paired bootstrap. $/1M: this machine's speed priced at {p['catalog']}. ",
            "",
        ]
        lines += table_minilm(p) + [""] + notes(p) + [""]
    if "stories" in parts:
        p = parts["stories"]
        lines += [
            "## stories260K (real weights), next-token quality on stdlib docstrings",
            "",
            _reproduce(p),
            "KL(fp32 || candidate) per token and top-1 agreement with fp32, on the same batches. "
            "Perplexity change: positive = worse.",
            "",
        ]
        lines += table_stories(p) + [""] + notes(p) + [""]
    if "smollm" in parts:
        p = parts["smollm"]
        sp = p["speed_settings"]
        lines += [
            "## SmolLM2-135M shape (random weights): speed only",
            "",
            _reproduce(p),
            f"Llama with SmolLM2-135M's dimensions ({SMOLLM['num_hidden_layers']} layers, hidden {SMOLLM['hidden_size']}, "
            f"vocab {SMOLLM['vocab_size']}; models/shapes/smollm2-135m), seeded random weights: its speed is real, its quality is meaningless. Batch {sp['batch_size']}, "
            f"{sp['prompt_tokens']}-token prompts of real text, {sp['new_tokens']} decoded tokens with the KV cache, "
            f"{sp['warmup']} warm-up + {sp['repeats']} timed.",
            "",
        ]
        lines += table_smollm(p) + [""] + notes(p) + [""]
    if "int4-stories" in parts or "int4-smollm" in parts:
        lines += [INT4_HEADING, "", INT4_INTRO, ""]
    if "int4-stories" in parts:
        p = parts["int4-stories"]
        lines += ["### Quality: stories260K (real weights)", "", _reproduce(p)]
        lines += table_stories(p) + [""] + notes(p) + [""]
    if "int4-smollm" in parts:
        p = parts["int4-smollm"]
        lines += ["### Speed: SmolLM2-135M shape (random weights)", "", _reproduce(p)]
        lines += table_smollm(p) + [""] + notes(p) + [""]
    path.write_text("\n".join(lines + kept_sections(path, lines)))


def kept_sections(path: Path, generated: list[str]) -> list[str]:
    """The sections of the existing file that this script does not write (recorded by other commands)."""
    if not path.is_file():
        return []
    ours = {line for line in generated if line.startswith("## ")}
    kept: list[str] = []
    keep = False
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            keep = line not in ours
        if keep:
            kept.append(line)
    return kept


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=PARTS, action="append")
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--report", action="store_true", help="only rewrite RESULTS.md from results.json")
    ap.add_argument("--stories", default=str(REPO / "models" / "stories260K"))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")  # quantizers log per node at INFO
    log = logging.getLogger("passes")
    log.setLevel(logging.INFO)
    from optimizer import fingerprint

    out = Path(args.out)
    results_file = out / "results.json"
    results: dict[str, Any] = json.loads(results_file.read_text()) if results_file.is_file() else {"parts": {}}
    parts = [] if args.report else (args.only or ["minilm", "stories", "smollm"])
    for part in parts:
        if part == "minilm":
            res = measure_part(HERE / "minilm.yaml", QUANT_CHAINS | MINILM_EXTRA, True, [], log)
        elif part == "minilm-openvino":
            res = measure_part(HERE / "minilm.yaml", OPENVINO_CHAINS, True, [], log)
        elif part == "stories":
            res = measure_part(HERE / "stories.yaml", QUANT_CHAINS | PRUNE_CHAINS, True, [f"model.source={args.stories}"], log)
        elif part == "int4-stories":
            res = measure_part(HERE / "stories.yaml", INT4_CHAINS, True, [f"model.source={args.stories}"], log)
        else:
            chains = INT4_CHAINS if part == "int4-smollm" else QUANT_CHAINS | PRUNE_CHAINS
            res = measure_part(HERE / "smollm-shape.yaml", chains, False, [], log)
        res |= {
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": f"python experiments/passes/run.py --only {part}",
        }
        res["system"] = fingerprint()  # each part names the machine it ran on (parts may be re-run elsewhere)
        results["parts"][part] = res
        results_file.write_text(json.dumps(results, indent=1))  # after each part: a crash keeps finished parts
        write_report(results, out / "RESULTS.md")
    if args.report:
        write_report(results, out / "RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
