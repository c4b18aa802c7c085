"""Requests served at once on the SmolLM2-135M shape: every engine on the same burst, in alternating rounds.

    python experiments/llm-cpu/serving.py [--rounds 4] [--requests 32] [--batches 8,32]

A burst of real-text requests (stdlib docstrings; prompts of their own length up to 128 tokens, answers of
16 to 64 tokens) is served by each engine (measure/requests.py):
- torch fp32, torchao int8, ONNX Runtime int8 dynamic and OpenVINO int8 weights in static batches of each
  size in --batches (the largest holding the whole burst),
- torch fp32 and torchao int8 through transformers' continuous batching (the others have none).
After one warm-up round per engine, each round serves the burst once per engine, in an order that
rotates every round; ratios to torch fp32 in the smallest static batches get a bootstrap interval over rounds.
Random weights of the 135M shape: the figures are speed, not quality. Quality of these passes is in the
tables above this section (stories260K proxy). Writes serving.json and the section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optimizer import chain_of, write_section

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RECIPE = HERE / "operating-points.yaml"
HEADING = "## Requests served at once: static batches against continuous batching"

INT8 = {"name": "torch-dynamic-int8", "compile": False}
MODELS: dict[str, list[dict[str, Any]]] = {
    "torch fp32": [],
    "torch int8 (torchao)": [INT8],
    "ONNX Runtime int8 dynamic": [{"name": "onnx-export"}, {"name": "ort-int8-dynamic"}],
    "OpenVINO int8 weights": [{"name": "ov-export"}, {"name": "ov-weight-compress", "mode": "int8_asym"}],
}
CONTINUOUS = "continuous batching"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--batches", default="8,32", help="static batches' sizes, comma-separated")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--report", action="store_true", help="only rewrite the section of RESULTS.md from serving.json")
    args = ap.parse_args(argv)
    if args.report:
        write_section(args.out / "RESULTS.md", render(json.loads((args.out / "serving.json").read_text())))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.WARNING)  # its thread logs every start and stop
    log = logging.getLogger("serving")

    import cost
    from optimizer import fingerprint, ratio_interval, replicas_on, summarize_requests

    recipe, bench, mix = requests_for(args.requests, args.prompt_tokens, args.new_tokens)
    t0 = time.time()
    batches = [int(b) for b in args.batches.split(",")]
    reference = f"torch fp32, static batches of {batches[0]}"
    rounds, engine = served_rounds(recipe, bench, MODELS, batches, mix, args.rounds, log)
    labels = list(rounds)
    answers_agree = {
        label: sum(a.tokens == b.tokens for a, b in zip(rounds[label][0], rounds[reference][0], strict=True)) for label in labels
    }
    entry = cost.load_catalog(recipe.hardware.catalog_file).get(recipe.hardware.catalog)
    rows = {}
    ref = [max(s.finished_s for s in rnd) for rnd in rounds[reference]]
    for label in labels:
        row = summarize_requests(mix, rounds[label], engine[label])
        tps = row["tokens_per_s"]["median"] * replicas_on(entry, row["threads"])
        row["usd_per_m_tokens"] = cost.usd_per_million(
            tps, entry.hourly_usd(recipe.hardware.pricing), recipe.hardware.utilization
        )
        walls = [max(s.finished_s for s in rnd) for rnd in rounds[label]]
        row["cheaper_than_reference_x"] = ratio_interval(ref, walls)  # same tokens: time ratio = cost ratio
        row["answers_as_reference"] = answers_agree[label]
        row["walls_s"] = walls  # each round's, for ratios between any two rows
        rows[label] = row
    result = {
        "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python experiments/llm-cpu/serving.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "report")),
        "machine": fingerprint(),
        "catalog": entry.name,
        "hourly_usd": entry.hourly_usd(recipe.hardware.pricing),
        "utilization": recipe.hardware.utilization,
        "speed_model": str(Path(recipe.speed.model.source).resolve().relative_to(REPO)),
        "seconds": round(time.time() - t0, 1),
        "batches": batches,
        "reference": reference,
        "rows": rows,
    }
    (args.out / "serving.json").write_text(json.dumps(result, indent=2))
    write_section(args.out / "RESULTS.md", render(result))
    print(render(result))
    return 0


def requests_for(
    n: int, prompt_tokens: int | None = None, new_tokens: int | None = None, rate: float | None = None
) -> tuple[Any, Any, list[Any]]:
    """The operating-points recipe, its bench (threads set, baseline loaded) and `n` of its real-text requests:
    prompts up to `prompt_tokens`, answers up to `new_tokens` (default: the recipe's), arriving at `rate` a
    second, or all at once."""
    from optimizer import Bench, load_recipe, prompted, request_mix, resolve_device, set_threads

    recipe = load_recipe(RECIPE)
    set_threads(recipe.hardware.threads)
    bench = Bench.load_data(recipe, resolve_device(recipe.hardware.device))
    bench.load_baseline()
    texts = prompted(bench.timed_baseline, bench.eval_data).interleaved()
    s = recipe.speed
    mix = request_mix(
        bench.timed_baseline, texts, n, prompt_tokens or s.prompt_tokens, new_tokens or s.new_tokens, recipe.data.seed, rate
    )
    return recipe, bench, mix


def served_rounds(
    recipe: Any, bench: Any, models: dict[str, list[dict[str, Any]]], batches: list[int], mix: list[Any], rounds: int, log: Any
) -> tuple[dict[str, list[Any]], dict[str, str]]:
    """Each model built once and served by static batches of each size in `batches` (and, on torch, by
    transformers' continuous batching), a warm-up round each, then `rounds` rounds in an order rotated every
    round. Returns each engine's rounds and its description, by label."""
    from optimizer import apply_chain, build_pass, request_engine, request_server, timed_recipe

    work = Path(tempfile.mkdtemp(prefix="costopt-serving-"))
    timed = timed_recipe(recipe)
    out: dict[str, list[Any]] = {}
    with ExitStack() as stack:
        serve, engine = {}, {}
        for model, chain in models.items():
            log.info("building %s", model)
            ctx = bench.context(work / model.replace(" ", "_"))
            cand = apply_chain(timed, chain_of(chain), ctx, {})
            served = [(f"{model}, static batches of {b}", cand, b) for b in batches]
            if cand.runtime == "torch":  # the same weights, served by transformers' engine
                cb = build_pass("torch-continuous-batching", {}).apply(copy.copy(cand), ctx)
                served.append((f"{model}, {CONTINUOUS}", cb, batches[0]))
            for label, c, b in served:
                serve[label] = stack.enter_context(request_server(c, mix, b))
                engine[label] = request_engine(c, b)
                serve[label]()  # warm-up round
        labels = list(serve)
        out = {k: [] for k in labels}
        for r in range(rounds):
            for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
                out[label].append(serve[label]())
            log.info("round %d of %d done", r + 1, rounds)
    return out, engine


def render(r: dict[str, Any]) -> str:
    from optimizer import ratio_interval

    any_row = next(iter(r["rows"].values()))
    p, n = any_row["prompt_tokens"], any_row["new_tokens"]
    m = r["machine"]
    lines = [
        HEADING,
        "",
        f"Recorded {r['recorded']} with `{r['command']}` ({r['seconds'] / 60:.1f} min).",
        "",
        f"- Machine: {m.get('cpu', {}).get('model', '?')}, {any_row['threads']} threads for every engine.",
        f"- Model: a random-weight Llama of SmolLM2-135M's shape ({r['speed_model']}): speed only, its answers mean nothing.",
        f"- The burst: {any_row['requests']} requests at once, prompts cut from stdlib docstrings at their own length "
        f"({p['min']}-{p['max']} tokens, {p['total']:,} in all), answers of {n['min']}-{n['max']} tokens ({n['total']:,} in "
        "all), greedy; end-of-sequence does not stop an answer, so every engine does the same work.",
        f"- Static batches hold {' or '.join(str(b) for b in r['batches'])} requests in arrival order, left-padded to the longest prompt; continuous "
        "batching is transformers' engine (paged attention, its KV cache sized for the burst).",
        f"- Method: one warm-up round per engine, then {any_row['wall_s']['n']} rounds; each round serves the burst once "
        "per engine, in an order rotated every round. Time to first token counts the wait in the queue "
        "(all requests arrive at once).",
        f"- Price: {r['catalog']} at ${r['hourly_usd']}/hour, {r['utilization']:.0%} utilization, per 1M tokens of "
        "this mix (prompt and answer tokens together).",
        "",
        f"| engine | tokens/s (min–max) | output tokens/s | TTFT p50 / p95 | TPOT p50 / p95 | $/1M tokens | "
        f"cheaper than {r['reference']} (95% interval over rounds) | answers as {r['reference']} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, row in r["rows"].items():
        t, ttft, tpot, x = (
            row["tokens_per_s"],
            row["time_to_first_token_s"],
            row["time_per_output_token_s"],
            row["cheaper_than_reference_x"],
        )
        lines.append(
            f"| {label} | {t['median']:,.0f} ({t['min']:,.0f}–{t['max']:,.0f}) | "
            f"{row['output_tokens_per_s']['median']:,.1f} | {ttft['p50']:.2f} / {ttft['p95']:.2f} s | "
            f"{1e3 * tpot['p50']:.0f} / {1e3 * tpot['p95']:.0f} ms | ${row['usd_per_m_tokens']:.4f} | "
            f"{x['median']:.2f}x [{x['low']:.2f}, {x['high']:.2f}] | {row['answers_as_reference']} of {row['requests']} |"
        )
    rows = r["rows"]
    cheapest = min(rows, key=lambda k: rows[k]["usd_per_m_tokens"])
    x = rows[cheapest]["cheaper_than_reference_x"]
    lines += ["", "What it shows:", ""]
    lines.append(
        f"- Cheapest here: {cheapest}, ${rows[cheapest]['usd_per_m_tokens']:.4f} per 1M tokens, "
        f"{x['median']:.2f}x [{x['low']:.2f}, {x['high']:.2f}] cheaper than {r['reference']}."
    )
    for model in [k.split(", ")[0] for k in rows if k.endswith(CONTINUOUS)]:
        b = rows[f"{model}, {CONTINUOUS}"]
        for size in r["batches"]:
            a = rows[f"{model}, static batches of {size}"]
            x = ratio_interval(a["walls_s"], b["walls_s"])  # rounds are paired: both served in each round
            lines.append(
                f"- {model}: continuous batching serves {x['median']:.2f}x [{x['low']:.2f}, {x['high']:.2f}] the "
                f"tokens/s of static batches of {size}; time to first token p95 "
                f"{b['time_to_first_token_s']['p95']:.1f} s against {a['time_to_first_token_s']['p95']:.1f} s, time per "
                f"output token p95 {1e3 * b['time_per_output_token_s']['p95']:.0f} against "
                f"{1e3 * a['time_per_output_token_s']['p95']:.0f} ms."
            )
    lines.append(
        "- The last column checks the engines against each other: the same weights give the same greedy answers under "
        "either batching. Quantized weights change some of this random-weight model's picks, whose next-token scores "
        "are nearly flat; their quality is in the tables above (stories260K proxy)."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
