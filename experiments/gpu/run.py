"""The small-Llama comparison of experiments/llm-cpu/run.py on a CUDA GPU (bf16/fp16 casts and bitsandbytes).

    python experiments/gpu/run.py [--rounds N] [--runs DIR]

Same script, same measurements: recipes/llm-gpu-search.yaml, results in this folder.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("llm_compare", HERE.parent / "llm-cpu" / "run.py")
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)

if __name__ == "__main__":
    raise SystemExit(compare.main(["--device", "cuda", "--out", str(HERE), *sys.argv[1:]]))
