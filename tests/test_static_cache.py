"""torch-static-cache: decode into a static KV cache, the step compiled; same tokens as the dynamic cache."""

from __future__ import annotations

import pytest
import torch

from optimizer.errors import UserError
from optimizer.passes import PassContext, build_pass
from optimizer.recipe import ModelSpec, load_recipe
from optimizer.runtimes import load_candidate, reload_saved


def _greedy(cand, ids: torch.Tensor, steps: int) -> tuple[torch.Tensor, list[torch.Tensor], dict]:
    logits, state = cand.prefill(ids, torch.ones_like(ids))
    tokens, all_logits = [], [logits]
    for _ in range(steps):
        nxt = logits.argmax(-1, keepdim=True)
        tokens.append(nxt)
        logits, state = cand.decode(nxt, state)
        all_logits.append(logits)
    return torch.cat(tokens, 1), all_logits, state


def _static(folder, tmp_path, **params):
    ctx = PassContext(task="causal-lm", device="cpu", threads=1, seed=0, work_dir=tmp_path)
    return build_pass("torch-static-cache", params).apply(load_candidate(ModelSpec(source=str(folder)), "causal-lm", "cpu"), ctx)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_static_cache_decodes_the_same_tokens_as_the_dynamic_cache(tiny_llama_dir, tmp_path, compiled):
    ids = torch.randint(5, 200, (2, 7))
    plain = load_candidate(ModelSpec(source=str(tiny_llama_dir)), "causal-lm", "cpu")
    want, want_logits, _ = _greedy(plain, ids, 12)
    cand = _static(tiny_llama_dir, tmp_path, new_tokens=12, compile=compiled)
    got, got_logits, state = _greedy(cand, ids, 12)
    assert torch.equal(got, want) and state["position"] == 7 + 12 and state["size"] == 64  # 7 + 12 rounded up to 64
    for a, b in zip(want_logits, got_logits, strict=True):
        assert torch.allclose(a, b, atol=1e-4)
    assert (cand._step is not None) == compiled


def test_static_cache_refuses_to_decode_past_its_room_and_pads_with_the_dynamic_cache(tiny_llama_dir, tmp_path):
    cand = _static(tiny_llama_dir, tmp_path, new_tokens=60, compile=False)
    ids = torch.randint(5, 200, (1, 4))
    _, _, state = _greedy(cand, ids, 60)  # 4 + 60 = the 64 slots
    with pytest.raises(UserError, match="decoding past the static KV cache \\(64 tokens") as e:
        cand.decode(torch.tensor([[5]]), state)
    assert "raise new_tokens on torch-static-cache" in e.value.fix
    padded = torch.tensor([[0, 1, 1, 1]])  # left padding: the static cache would need every step's mask
    _, state = cand.prefill(ids, padded)
    assert "position" not in state and "mask" in state


def test_static_cache_is_kept_in_the_artifact_and_refused_for_encoders(tiny_llama_dir, tmp_path, write_recipe, tiny_bert_dir):
    cand = _static(tiny_llama_dir, tmp_path, new_tokens=32, compile=True)
    again = reload_saved(cand.save(tmp_path / "artifact"))
    assert (again.static_cache, again.compile_decode) == (32, True)
    path = write_recipe(
        {
            "name": "enc",
            "model": {"source": str(tiny_bert_dir)},
            "task": "embedding",
            "data": {"eval": {"source": "stdlib-docs"}},
            "passes": [{"name": "torch-static-cache"}],
        }
    )
    with pytest.raises(UserError, match="'torch-static-cache' does not apply to task 'embedding'"):
        load_recipe(path)


def test_a_compiled_step_without_a_cpp_compiler_is_one_line(tiny_llama_dir, tmp_path, monkeypatch):
    import shutil

    cand = _static(tiny_llama_dir, tmp_path, new_tokens=4, compile=True)
    ids = torch.randint(5, 200, (1, 3))
    _, state = cand.prefill(ids, torch.ones_like(ids))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="torch.compile on the CPU needs a C\\+\\+ compiler") as e:
        cand.decode(torch.tensor([[5]]), state)
    assert "set compile: false on torch-static-cache" in e.value.fix


def test_a_compiled_step_that_disagrees_with_the_eager_one_is_refused(tiny_llama_dir, tmp_path, monkeypatch):
    """Inductor miscompiled torchao int8 decode on the CPU (logits 10^4 off, impossibly fast): a compiled step
    is checked against the eager step once per batch size, and refused when it disagrees."""
    from optimizer.runtimes import pytorch

    cand = _static(tiny_llama_dir, tmp_path, new_tokens=8, compile=True)
    ids = torch.randint(5, 200, (1, 4))
    _, state = cand.prefill(ids, torch.ones_like(ids))
    cand.decode(torch.tensor([[5]]), state)  # a sound compiled step passes its check
    assert cand._checked == {1}

    class Broken:
        def __call__(self, **kwargs):
            out = cand.module(**kwargs)
            out.logits = out.logits * 1e4
            return out

    monkeypatch.setattr(pytorch, "compile_decode_step", lambda module, device: Broken())
    cand = _static(tiny_llama_dir, tmp_path, new_tokens=8, compile=True)
    _, state = cand.prefill(ids, torch.ones_like(ids))
    with pytest.raises(UserError, match="the compiled decode step disagrees with the eager one at batch 1") as e:
        cand.decode(torch.tensor([[5]]), state)
    assert "set compile: false on torch-static-cache" in e.value.fix
