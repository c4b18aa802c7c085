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


def _bf16(folder, ctx):
    cand = load_candidate(ModelSpec(source=str(folder)), "causal-lm", "cuda")
    return build_pass("cast", {"dtype": "bfloat16"}).apply(cand, ctx)


@pytest.mark.parametrize(
    "name,params",
    [
        ("torch-weight-only", {"bits": 4, "group_size": 32}),
        ("torch-weight-only", {"bits": 4, "group_size": 32, "algorithm": "hqq"}),
        ("torch-weight-only", {"bits": 8}),
        ("torch-float8", {}),
    ],
)
def test_torchao_gpu_passes_need_bf16_then_run_close_and_reload(name, params, wide_llama_dir, tmp_path):
    """tinygemm int4 (round to nearest or HQQ), int8 weight-only and float8 on the GPU: a fp32 model is
    refused in one line, a bf16 one runs close to bf16 and reloads from its saved state dict."""
    from optimizer.errors import UserError
    from optimizer.runtimes import reload_saved

    if name == "torch-float8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 needs compute capability 8.9+")
    ctx = PassContext(task="causal-lm", device="cuda", threads=1, seed=0, work_dir=tmp_path)
    if params.get("bits") != 8:
        with pytest.raises(UserError, match="cast, dtype: bfloat16"):
            build_pass(name, params).apply(load_candidate(ModelSpec(source=str(wide_llama_dir)), "causal-lm", "cuda"), ctx)
    ref = outputs(_bf16(wide_llama_dir, ctx)).float().cpu()
    cand = build_pass(name, params).apply(_bf16(wide_llama_dir, ctx), ctx)
    got = outputs(cand).float().cpu()
    assert cand.torchao_quantized and similarity(ref, got) > 0.85
    again = reload_saved(cand.save(tmp_path / "artifact"), "cuda")
    assert similarity(got, outputs(again).float().cpu()) > 0.999
