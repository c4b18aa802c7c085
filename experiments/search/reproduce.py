"""Re-measure a search's chosen configuration against the torch fp32 baseline, alternating runs.

    python experiments/search/reproduce.py runs/minilm-cpu-search/deploy.yaml [--rounds 3]

Builds (or reloads from the search's cache) the deployment's artifact, then measures encode tokens/s
of the baseline at the recipe's batch size and at the deployment's, and of the deployment, in
alternating rounds on the same texts and threads; prints medians per round and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from optimizer import Bench, Recipe, build_deployment, read_deployment, reload_saved, set_threads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("deploy_file")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    config = read_deployment(Path(args.deploy_file))
    recipe = Recipe.model_validate(config["recipe"])
    set_threads(config["threads"])
    bench = Bench.load_data(recipe, "cpu")
    baseline = bench.load_baseline()
    with tempfile.TemporaryDirectory() as tmp:
        cand = reload_saved(build_deployment(Path(args.deploy_file), Path(tmp) / "artifact"))
        rows: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for label, c, b in (
                (f"torch fp32, batch {recipe.speed.batch_size}", baseline, recipe.speed.batch_size),
                (f"torch fp32, batch {config['batch_size']}", baseline, config["batch_size"]),
                (f"chosen ({cand.runtime}), batch {config['batch_size']}", cand, config["batch_size"]),
            ):
                rows.setdefault(label, []).append(bench.speed_and_cost(c, b)[0]["input_tokens_per_s"]["median"])
    base = statistics.median(next(iter(rows.values())))
    for label, v in rows.items():
        print(
            f"{label:40s} tokens/s per round: {', '.join(f'{x:,.0f}' for x in v)}; median {statistics.median(v):,.0f} "
            f"({statistics.median(v) / base:.2f}x the first row)"
        )


if __name__ == "__main__":
    main()
