"""Requests arriving one by one on the SmolLM2-135M shape: each engine at the same arrival rate, in alternating rounds.

    python experiments/llm-cpu/online.py [--rate 1.0] [--requests 16] [--rounds 3]

The burst of serving.py asks how fast an engine clears a queue; a live service meets its requests as they come.
Here the recipe's real-text requests (prompts of their own length up to speed.prompt_tokens, answers of a quarter
of speed.new_tokens to all of it)
arrive at seeded exponential gaps, --rate a second on average (measure/requests.py, speed.arrival_rate), and
each engine serves them as they come: torch fp32 and ONNX Runtime int8 dynamic in static batches of 8 (a
free server takes the requests that have arrived, up to 8), and torch fp32 through transformers' continuous
batching (each request joins at its arrival). Time to first token counts from each request's arrival.
Against the latency targets of operating-points.yaml (TTFT p95 <= 2 s, TPOT p95 <= 100 ms), this says which
engine can carry that rate on 2 cores. One warm-up round per engine, then rounds in an order rotated every round.
Random weights of the 135M shape: speed only. Writes online-<rate>.json and the rate's section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving import requests_for, served_rounds  # this folder is on the path when run as a script

from optimizer import write_section

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HEADING = "## Requests arriving one by one at {rate:g} a second: which engine carries it within the latency targets"
ENGINES: dict[str, list[dict[str, Any]]] = {
    "torch fp32": [],
    "ONNX Runtime int8 dynamic": [{"name": "onnx-export"}, {"name": "ort-int8-dynamic"}],
}
BATCH = 8


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1.0, help="requests per second, on average")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.WARNING)
    log = logging.getLogger("online")

    from optimizer import fingerprint, summarize_requests

    recipe, bench, mix = requests_for(args.requests, rate=args.rate)
    t0 = time.time()
    rounds, engine = served_rounds(recipe, bench, ENGINES, [BATCH], mix, args.rounds, log)
    labels = list(rounds)
    rows = {label: summarize_requests(mix, rounds[label], engine[label], args.rate) for label in labels}
    result = {
        "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f"python experiments/llm-cpu/online.py --rate {args.rate:g} --requests {args.requests} --rounds {args.rounds}",
        "machine": fingerprint(),
        "speed_model": str(Path(recipe.speed.model.source).resolve().relative_to(REPO)),
        "targets": {"ttft_p95_s": recipe.speed.ttft_p95_s, "tpot_p95_s": recipe.speed.tpot_p95_s},
        "seconds": round(time.time() - t0, 1),
        "rows": rows,
    }
    (args.out / f"online-{args.rate:g}.json").write_text(json.dumps(result, indent=2))
    write_section(args.out / "RESULTS.md", render(result))
    print(render(result))
    return 0


def render(r: dict[str, Any]) -> str:
    any_row = next(iter(r["rows"].values()))
    p, n, tg = any_row["prompt_tokens"], any_row["new_tokens"], r["targets"]
    lines = [
        HEADING.format(rate=any_row["arrival_rate"]),
        "",
        f"Recorded {r['recorded']} with `{r['command']}` ({r['seconds'] / 60:.1f} min).",
        "",
        f"- Machine: {r['machine'].get('cpu', {}).get('model', '?')}, {any_row['threads']} threads for every engine.",
        f"- Model: a random-weight Llama of SmolLM2-135M's shape ({r['speed_model']}): speed only.",
        f"- Requests: {any_row['requests']}, arriving at seeded exponential gaps, {any_row['arrival_rate']:g} a second on "
        f"average (the last at {any_row['last_arrival_s']:.1f} s); prompts of {p['min']}-{p['max']} tokens, answers of "
        f"{n['min']}-{n['max']} tokens, greedy, every answer its drawn length.",
        f"- Method: one warm-up round per engine, then {any_row['wall_s']['n']} rounds in an order rotated every round. "
        "Time to first token (TTFT) counts from each request's arrival; percentiles over every round's requests.",
        f"- Targets (operating-points.yaml): TTFT p95 <= {tg['ttft_p95_s']:g} s, time per output token (TPOT) p95 <= "
        f"{1e3 * tg['tpot_p95_s']:.0f} ms.",
        "",
        "| engine | TTFT p50 / p95 | TPOT p50 / p95 | round, first arrival to last answer (min–max) | within the targets |",
        "|---|---|---|---|---|",
    ]
    for label, row in r["rows"].items():
        ttft, tpot, w = row["time_to_first_token_s"], row["time_per_output_token_s"], row["wall_s"]
        ok = ttft["p95"] <= tg["ttft_p95_s"] and tpot["p95"] <= tg["tpot_p95_s"]
        lines.append(
            f"| {label} | {ttft['p50']:.2f} / {ttft['p95']:.2f} s | {1e3 * tpot['p50']:.0f} / {1e3 * tpot['p95']:.0f} ms | "
            f"{w['median']:.1f} s ({w['min']:.1f}–{w['max']:.1f}) | {'yes' if ok else 'no'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
