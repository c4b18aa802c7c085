"""Why torch-static-cache checks a compiled decode step: Inductor's step against the eager one, same weights.

    python experiments/llm-cpu/compiled_step.py [--shape smollm2-135m|llama-3.2-1b] [--fp32]

Builds the shape with seeded random weights (speed only), applies torchao int8 (or nothing with --fp32),
prefills a 64-token prompt into a static KV cache, then decodes 32 greedy steps twice from the same
prefill: with the step compiled for fixed shapes (torch.compile fullgraph, dynamic=False, as the pass
does) and eagerly. Prints each one's median step time, its logits' spread and first tokens, and the
largest difference between the two steps' first logits.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="smollm2-135m", choices=["smollm2-135m", "llama-3.2-1b"])
    ap.add_argument("--fp32", action="store_true", help="no int8: the control")
    args = ap.parse_args(argv)

    import torch
    from transformers import StaticCache

    from optimizer import apply_chain, load_recipe, set_threads, timed_recipe

    recipe = timed_recipe(load_recipe(HERE / "operating-points.yaml", [f"speed.model.source=../../models/shapes/{args.shape}"]))
    set_threads(2)
    passes = [] if args.fp32 else [{"name": "torch-dynamic-int8", "params": {"compile": False}}]
    from optimizer import Bench, resolve_device

    bench = Bench.load_data(recipe, resolve_device("cpu"))
    module = apply_chain(recipe, passes, bench.context(Path("/tmp/costopt-compiled-step")), {}).module
    ids = torch.randint(5, 1000, (1, 64), generator=torch.Generator().manual_seed(0))
    cache = StaticCache(config=module.config, max_cache_len=128)
    with torch.inference_mode():
        out = module(input_ids=ids, past_key_values=cache, use_cache=True, cache_position=torch.arange(64))
        first = out.logits[:, -1:].argmax(-1)
        steps = {"compiled": torch.compile(module, fullgraph=True, dynamic=False), "eager": module}
        logits0 = {}
        for name, step in steps.items():
            state, nxt, times, tokens = copy.deepcopy(cache), first, [], []
            for i in range(32):
                t = time.perf_counter()
                out = step(input_ids=nxt, past_key_values=state, use_cache=True, cache_position=torch.tensor([64 + i]))
                logits = out.logits[:, -1].float()
                nxt = logits.argmax(-1, keepdim=True)
                times.append(time.perf_counter() - t)
                tokens.append(int(nxt))
                logits0.setdefault(name, logits)
            print(
                f"{name}: median step {1e3 * statistics.median(times[2:]):.1f} ms (after 2 warm-up steps), "
                f"logits' standard deviation {float(logits.std()):.3g}, first tokens {tokens[:8]}"
            )
    off = float((logits0["compiled"] - logits0["eager"]).abs().max() / logits0["eager"].abs().max())
    print(f"largest difference of the first step's logits: {off:.3g} of the eager logits' range")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
