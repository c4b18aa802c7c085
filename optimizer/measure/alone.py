"""Memory of one model served alone: a fresh process loads it and serves the benchmark's batches once.

The speed benchmark's process also holds the baseline (and, in a search, the data and the study), so
its peak RSS says little about what a replica serving the candidate needs. Here a child process
loads only that model (an artifact folder, or the recipe's model for the baseline), serves the
same requests in the same batches, and reports its peak RSS (sampled every 5 ms, loading included), its RSS
before the model was loaded (interpreter and libraries), and, on CUDA, the peak allocated bytes.

    python -m optimizer.measure.alone < job.json   (what `serving_memory` runs)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from optimizer.errors import UserError

TIMEOUT_S = 900


def serving_memory(
    task: str,
    texts: list[str],
    speed: dict[str, Any],
    threads: int,
    device: str = "cpu",
    artifact: Path | None = None,
    model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the child on `artifact` (a saved candidate) or `model` (a ModelSpec as a dict: the baseline).

    `speed` holds the benchmark's shape: batch_size and streams (encoders), or batch_size, prompt_tokens
    and new_tokens (causal LMs). Returns {peak_rss_bytes, libraries_rss_bytes, model_rss_bytes, peak_cuda_bytes}.
    """
    job = {
        "task": task,
        "texts": texts,
        "speed": speed,
        "threads": threads,
        "device": device,
        "artifact": str(artifact) if artifact else None,
        "model": model,
    }
    try:
        out = subprocess.run(
            [sys.executable, "-m", "optimizer.measure.alone"],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise UserError(f"serving the model alone to measure its memory took over {TIMEOUT_S} s", "lower speed.texts") from None
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the memory probe failed: {tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _serve(job: dict[str, Any]) -> dict[str, Any]:
    import psutil

    from optimizer.measure import speed as speed_mod
    from optimizer.model import ModelSpec
    from optimizer.runtimes import load_candidate, reload_saved

    speed_mod.set_threads(job["threads"])
    libraries = psutil.Process().memory_info().rss
    # sampled, not the kernel's ru_maxrss: a forked child starts with its parent's high-water mark
    with speed_mod.PeakMemory(job["device"]) as mem:
        if job["artifact"]:
            cand = reload_saved(Path(job["artifact"]), job["device"])
        else:
            cand = load_candidate(ModelSpec.model_validate(job["model"]), job["task"], job["device"])
        s = job["speed"]
        if job["task"] == "causal-lm":
            speed_mod.bench_causal_lm(cand, job["texts"], s["batch_size"], s["prompt_tokens"], s["new_tokens"], 0, 1)
        else:
            speed_mod.bench_encoder(cand, job["texts"], s["batch_size"], 0, 1, s.get("streams", 1))
    return {
        "peak_rss_bytes": mem.peak_rss,
        "libraries_rss_bytes": libraries,
        "model_rss_bytes": mem.peak_rss - libraries,
        "peak_cuda_bytes": mem.peak_cuda,
    }


if __name__ == "__main__":
    print(json.dumps(_serve(json.loads(sys.stdin.read()))))
