"""What each serving lever is worth on its own for all-MiniLM-L6-v2 on this CPU, in one run.

    python experiments/levers/run.py [--deploy runs/minilm-cpu-search/deploy.yaml] [--rounds 7]

- streams: one 2-thread stream against two 1-thread streams at once, for torch fp32 and for the
  search's chosen artifact, at batch 8 and 16;
- sequence-length cap (the max-length pass): speed of torch fp32 at caps 256 (none), 192, 128 and 96,
  requests always counted at 256 tokens, and the MRR drop each cap costs on the recipe's 961 pairs;
- OpenVINO's precision hint (a chosen OpenVINO artifact): bf16 against f32 for the float parts, at batch 16
  on two streams, and each hint's outputs against the baseline's at every input width (measure.widths).

Speed is the recipe's model-only benchmark (`measure.speed.bench_encoder`: the same 256 texts,
tokenization outside the timed region), one warm-up, then rounds that alternate every configuration;
each ratio gets a bootstrap interval over rounds. Writes RESULTS.md and results.json beside this file.
Sections of RESULTS.md after the generated one (the distilled student, pruning) come from `costopt run`
commands they name, and are kept as written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deploy", default=str(REPO / "runs/minilm-cpu-search/deploy.yaml"))
    ap.add_argument("--recipe", default=str(REPO / "recipes/minilm-cpu-search.yaml"))
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    from optimizer import (
        Bench,
        PassContext,
        bench_encoder,
        build_pass,
        drop_text,
        fingerprint,
        load_deployment,
        load_recipe,
        ratio_interval,
        ratio_text,
        set_threads,
    )

    set_threads(2)
    recipe = load_recipe(args.recipe)
    bench = Bench.load_data(recipe, "cpu")
    base = bench.load_baseline()
    bench.baseline_quality()
    texts = bench.eval_data.interleaved()[: recipe.speed.texts]
    deployment = load_deployment(args.deploy)
    chosen = deployment.candidate
    ctx = PassContext(task="embedding", device="cpu", threads=2, seed=0, work_dir=HERE / "work")

    def capped(tokens: int):  # noqa: ANN202
        fresh = bench.load_baseline()
        return build_pass("max-length", {"tokens": tokens}).apply(fresh, ctx)

    caps = {t: capped(t) for t in (192, 128, 96)}
    quality = {}
    for t, cand in caps.items():
        _, drops = bench.judge(cand)
        quality[t] = drops["mrr"]

    # name -> (candidate, batch, streams)
    arms = {f"torch fp32, batch {b}, {s} stream{'s' if s > 1 else ''}": (base, b, s) for b in (8, 16) for s in (1, 2)} | {
        f"chosen artifact, batch {b}, {s} stream{'s' if s > 1 else ''}": (chosen, b, s) for b in (8, 16) for s in (1, 2)
    }
    arms |= {f"torch fp32, batch 16, cap {t}": (c, 16, 1) for t, c in caps.items()}
    hints = {}
    if chosen.runtime == "openvino":  # the plugin's precision for the float parts, which it picks by itself on AMX
        hints = {h: chosen.derive(chosen.folder, precision=h) for h in ("f32", "bf16")}
        arms |= {f"chosen artifact at the {h} hint, batch 16, 2 streams": (c, 16, 2) for h, c in hints.items()}
    widths = {h: bench.check_widths(c) for h, c in hints.items()}
    seconds: dict[str, list[float]] = {n: [] for n in arms}
    tokens = {}
    for n, (c, b, s) in arms.items():  # warm-up
        tokens[n] = bench_encoder(c, texts, b, 1, 1, s)["real_tokens"]
    names = list(arms)
    for r in range(args.rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            c, b, s = arms[n]
            time.sleep(0.5)  # worker threads of the previous arm spin down
            out = bench_encoder(c, texts, b, 0, 1, s)
            seconds[n].append(out["real_tokens"] / out["input_tokens_per_s"]["median"])
    tps = {n: tokens[n] / statistics.median(v) for n, v in seconds.items()}

    def gain(slow: str, fast: str) -> dict:
        return ratio_interval(seconds[slow], seconds[fast])

    comparisons = []
    for who in ("torch fp32", "chosen artifact"):
        for b in (8, 16):
            comparisons.append(
                (
                    f"{who}, batch {b}: two 1-thread streams vs one 2-thread stream",
                    gain(f"{who}, batch {b}, 1 stream", f"{who}, batch {b}, 2 streams"),
                )
            )
    for t in caps:
        comparisons.append(
            (f"torch fp32, batch 16: cap {t} vs no cap", gain("torch fp32, batch 16, 1 stream", f"torch fp32, batch 16, cap {t}"))
        )
    if hints:
        comparisons.append(
            (
                "chosen artifact, batch 16, 2 streams: bf16 hint vs f32 hint",
                gain(
                    "chosen artifact at the f32 hint, batch 16, 2 streams",
                    "chosen artifact at the bf16 hint, batch 16, 2 streams",
                ),
            )
        )
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python experiments/levers/run.py",
        "machine": fingerprint()["cpu"]["model"],
        "chosen": [p["name"] for p in deployment.config.get("passes", [])],
        "rounds": args.rounds,
        "tokens_per_s": tps,
        "comparisons": {k: v for k, v in comparisons},
        "cap_quality": {str(t): q for t, q in quality.items()},
        "eval_pairs": len(bench.eval_data),
        "widths": {h: w.as_dict() for h, w in widths.items()},
    }
    (HERE / "results.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    lines = [
        "# Serving levers one at a time: streams, the sequence-length cap, OpenVINO's precision hint",
        "",
        f"Measured {result['date']} with `{result['command']}` on {result['machine']}, 2 threads, in one run: "
        f"{args.rounds} rounds alternating every configuration after a warm-up; model-only speed on the recipe's "
        f"{len(texts)} texts (requests counted at the model's 256-token limit, whatever the cap); ratios with a "
        "95% bootstrap interval over rounds. The chosen artifact is the search's deploy.yaml "
        f"({' -> '.join(result['chosen'])}).",
        "",
        "| configuration | tokens/s |",
        "|---|---|",
        *[f"| {n} | {v:,.0f} |" for n, v in tps.items()],
        "",
        "| lever | times faster |",
        "|---|---|",
        *[f"| {k} | {ratio_text(v)} |" for k, v in comparisons],
        "",
        f"Quality cost of the cap (torch fp32, MRR drop on {result['eval_pairs']} pairs, 95% interval; budget 1%):",
        "",
        *[f"- cap {t}: {drop_text(q)}" for t, q in quality.items()],
        "",
    ]
    if widths:
        lines += [
            "The chosen artifact's outputs against the baseline's at every input width (measure.widths):",
            "",
            *[f"- {h} hint: {w.text()}" for h, w in widths.items()],
            "",
        ]
    # the sections after the generated one come from other commands (costopt run): kept as written
    old = (HERE / "RESULTS.md").read_text() if (HERE / "RESULTS.md").is_file() else ""
    kept = old[old.index("\n## ") + 1 :] if "\n## " in old else ""
    (HERE / "RESULTS.md").write_text("\n".join(lines) + ("\n" + kept if kept else ""))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
