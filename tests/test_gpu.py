"""GPU paths (skipped without CUDA; CI has none): half precision and bitsandbytes on the GPU run, stay close
to fp32, and the speed benchmark reports GPU memory."""

from __future__ import annotations

import pytest
import torch

from optimizer.measure import speed as speed_mod
from optimizer.passes import PassContext, build_pass
from optimizer.recipe import ModelSpec
from optimizer.runtimes import load_candidate
from tests.test_passes import TEXTS, outputs, similarity

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize(
    "name,params,tolerance",
    [
        ("cast", {"dtype": "float16"}, 0.99),
        ("cast", {"dtype": "bfloat16"}, 0.99),
        ("bnb-int8", {}, 0.97),
        ("bnb-4bit", {"quant_type": "nf4", "compute_dtype": "bfloat16"}, 0.85),
    ],
)
def test_gpu_pass_runs_on_cuda_and_stays_close(name, params, tolerance, wide_llama_dir, tmp_path):
    spec = ModelSpec(source=str(wide_llama_dir))
    ref = outputs(load_candidate(spec, "causal-lm", "cuda")).float().cpu()
    ctx = PassContext(
        task="causal-lm",
        device="cuda",
        threads=1,
        seed=0,
        work_dir=tmp_path,
        baseline=lambda: load_candidate(spec, "causal-lm", "cuda"),
    )
    cand = build_pass(name, params).apply(load_candidate(spec, "causal-lm", "cuda"), ctx)
    assert cand.device == "cuda"
    assert similarity(ref, outputs(cand).float().cpu()) >= tolerance
    res = speed_mod.bench_causal_lm(cand, TEXTS * 4, 2, 16, 4, 1, 2)
    assert res["peak_cuda_bytes"] > 0 and res["output_tokens_per_s"]["median"] > 0
