"""Where one encode() round of costopt's deployed choice goes: tokenizing, the model, the rest; and how many of
the tokens the model runs are padding.

    python experiments/minilm-cpu/round.py [--deploy minilm-deploy] [--rounds 12]

The deployed artifact (`costopt deploy ... --out minilm-deploy`) encodes the 256 benchmark texts as run.py
times them (its batch size and streams, 2 threads). Each round times, in rotating order: the whole
encode(), the tokenizing and batching alone, and the model alone on the prepared batches; the first two
rounds are warm-up. What encode() does beyond the other two (pooling, normalizing, copies) is within the
rounds' spread here, so it is not given as a difference. Padding is counted from the batches: real tokens (after the choice's cap), tokens of
the length-sorted batches, and tokens of the shapes the model is compiled for (width buckets, rows to a
power of two). Writes the "One encode() round" section of PROFILE.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HEADING = "## One encode() round of costopt's choice"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deploy", default=str(REPO / "minilm-deploy"), help="a built deployment (costopt deploy --out)")
    ap.add_argument("--recipe", default=str(REPO / "recipes/minilm-cpu-search.yaml"))
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args()

    from optimizer import (
        chain_text,
        fingerprint,
        load_dataset,
        load_deployment,
        load_recipe,
        make_batches,
        set_threads,
        write_section,
    )

    set_threads(2)
    recipe = load_recipe(args.recipe)
    texts = load_dataset(recipe.data.eval, "eval", recipe.task, recipe.data.seed).interleaved()[: recipe.speed.texts]
    dep = load_deployment(args.deploy)
    cand = dep.candidate
    batches = make_batches(cand, texts, dep.batch_size)
    feeds = [{"input_ids": b.input_ids.numpy(), "attention_mask": b.attention_mask.numpy()} for b in batches]

    def shape_tokens(f: dict) -> int:
        rows, width = f["input_ids"].shape
        rows = 1 << (rows - 1).bit_length() if cand.compiled_per_shape else rows
        return rows * cand.served_width(width)

    real = sum(int(f["attention_mask"].sum()) for f in feeds)
    batched = sum(f["input_ids"].size for f in feeds)
    compiled = sum(shape_tokens(f) for f in feeds)

    def encode() -> None:
        dep.encode(texts)

    def tokenize() -> None:
        make_batches(cand, texts, dep.batch_size)

    def model() -> None:
        for f in feeds:
            cand.infer(f)

    parts = {"encode()": encode, "tokenizing and batching": tokenize, "the model": model}
    times: dict[str, list[float]] = {k: [] for k in parts}
    names = list(parts)
    for r in range(args.rounds):
        for k in names[r % 3 :] + names[: r % 3]:  # none always first
            t = time.perf_counter()
            parts[k]()
            times[k].append(time.perf_counter() - t)
    kept = {k: v[2:] for k, v in times.items()}
    share = {k: [a / b for a, b in zip(kept[k], kept["encode()"], strict=True)] for k in names}
    fp = fingerprint()
    lines = [
        HEADING,
        "",
        f"Recorded {datetime.now(UTC).isoformat(timespec='seconds')} with `python experiments/minilm-cpu/round.py` on "
        f"{fp['cpu']['model']}, 2 threads: the deployed `{chain_text(dep.config['passes'])}` at batch {dep.batch_size}, "
        f"{dep.streams} stream(s), over the {len(texts)} benchmark texts; {args.rounds - 2} rounds after 2 warm-up rounds, the parts in rotating order.",
        "",
        "| part of the round | ms, median (min–max) | of the same round's encode(), median (min–max) |",
        "|---|---|---|",
    ]
    for k in names:
        v, sh = kept[k], share[k]
        lines.append(
            f"| {k} | {statistics.median(v) * 1000:.1f} ({min(v) * 1000:.1f}–{max(v) * 1000:.1f}) | "
            f"{statistics.median(sh):.0%} ({min(sh):.0%}–{max(sh):.0%}) |"
        )
    lines += [
        "",
        f"Tokens: {real:,} real (after the cap), {batched:,} in the length-sorted batches (+{batched / real - 1:.0%}), "
        f"{compiled:,} in the shapes the model runs (+{compiled / real - 1:.0%}).",
        "",
    ]
    write_section(HERE / "PROFILE.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
