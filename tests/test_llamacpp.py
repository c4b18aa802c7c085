"""The llama.cpp runtime on tiny fixtures: GGUF as a model source, gguf-export (checked against torch,
reloaded, served), gguf-quantize with the importance matrix and kept tensors, llama.cpp's serving knobs,
the threads it runs on, the llama-server command a deployment prints, and the one-line refusal when the
extra is not installed. Skips where llama-cpp-python is not installed (CI installs it: `.[test]`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from optimizer import tasks
from optimizer.errors import UserError
from optimizer.passes import PassContext, build_pass, check_chain
from optimizer.recipe import ModelSpec
from optimizer.runtimes import Candidate, load_candidate, reload_saved
from optimizer.runtimes.threads import set_threads, threads
from tests.conftest import STORIES, needs_stories

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gguf") is None,
    reason="llama-cpp-python or gguf is not installed (pip install 'costopt[llamacpp]')",
)
TEXTS = ["Return the sum of the two numbers.", "Open a file and return a stream.", "def f(x):\n    return x + 1"]


def _load(source: Path | str) -> Candidate:
    return load_candidate(ModelSpec(source=str(source)), "causal-lm", "cpu")


def _ctx(tmp_path: Path) -> PassContext:
    return PassContext(task="causal-lm", device="cpu", threads=threads(), seed=0, work_dir=tmp_path / "work")


def _apply(cand: Candidate, tmp_path: Path, *steps: tuple[str, dict]) -> Candidate:
    for name, params in steps:
        cand = build_pass(name, params).apply(cand, _ctx(tmp_path))
        cand.applied.append({"name": name, "params": params})
    return cand


def _logits(cand: Candidate) -> list[torch.Tensor]:
    """Every real token's next-token logits, per text (padded batches of mixed lengths)."""
    rows = []
    for b in tasks.make_batches(cand, TEXTS, 4, sort=False):
        y = cand.forward(b.input_ids, b.attention_mask)
        rows += [y[i][b.attention_mask[i].bool()] for i in range(len(y))]
    return rows


def _greedy(cand: Candidate, prompt: str, n: int) -> list[int]:
    ids = cand.tokenizer(prompt, return_tensors="pt")["input_ids"]
    logits, state = cand.prefill(ids, torch.ones_like(ids))
    out = []
    for _ in range(n):
        nxt = logits.argmax(-1, keepdim=True)
        out.append(int(nxt))
        logits, state = cand.decode(nxt, state)
    return out


def _torch_greedy(cand: Candidate, prompt: str, n: int) -> list[int]:
    ids = cand.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return cand.module.generate(ids, max_new_tokens=n, do_sample=False, min_new_tokens=n)[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_gguf_export_matches_torch_and_reloads(dtype, wide_llama_dir, tmp_path):
    """The exported file's logits stay within the pass's parity tolerance of torch on every real token,
    greedy decoding through the KV cache follows torch's tokens, and the saved artifact reloads as served."""
    base = _load(wide_llama_dir)
    cand = _apply(_load(wide_llama_dir), tmp_path, ("gguf-export", {"dtype": dtype}))
    assert cand.runtime == "llamacpp" and any("gguf-export parity" in n for n in cand.notes)
    assert cand.gguf_info["file_type"] == {"f32": "F32", "f16": "F16"}[dtype]
    for ref, got in zip(_logits(base), _logits(cand), strict=True):
        assert float((ref - got).abs().max() / ref.abs().max()) < (1e-3 if dtype == "f32" else 2e-2)
    if dtype == "f32":
        assert _greedy(cand, TEXTS[0], 12) == _torch_greedy(base, TEXTS[0], 12)
    again = reload_saved(cand.save(tmp_path / "artifact"))
    assert again.runtime == "llamacpp" and again.applied == cand.applied
    assert all(torch.equal(a, b) for a, b in zip(_logits(cand), _logits(again), strict=True))


@needs_stories
def test_a_sentencepiece_model_exports_and_generates_as_torch(tmp_path):
    """stories260K (byte-fallback BPE, tied embeddings, 8-dim heads): llama.cpp's greedy story is torch's."""
    base = _load(STORIES)
    cand = _apply(_load(STORIES), tmp_path, ("gguf-export", {"dtype": "f32", "imatrix_texts": 0}))
    assert _greedy(cand, "Once upon a time", 24) == _torch_greedy(base, "Once upon a time", 24)


def test_prefill_of_a_padded_batch_equals_each_prompt_alone(wide_llama_dir, tmp_path):
    """Parallel sequences in one llama.cpp batch (left- or right-padded prompts) give each sequence the
    logits it gets alone: the slots do not see each other."""
    cand = _apply(_load(wide_llama_dir), tmp_path, ("gguf-export", {"dtype": "f32", "imatrix_texts": 0}))
    tok = cand.tokenizer
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    width = max(map(len, prompts))
    for left in (True, False):
        ids = torch.tensor([([0] * (width - len(p)) + p) if left else (p + [0] * (width - len(p))) for p in prompts])
        mask = torch.tensor(
            [([0] * (width - len(p)) + [1] * len(p)) if left else ([1] * len(p) + [0] * (width - len(p))) for p in prompts]
        )
        together, state = cand.prefill(ids, mask)
        nxt = together.argmax(-1, keepdim=True)
        step, _ = cand.decode(nxt, state)
        for i, p in enumerate(prompts):
            alone, st = cand.prefill(torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long))
            assert torch.allclose(together[i], alone[0], atol=1e-4)
            one, _ = cand.decode(nxt[i : i + 1], st)
            assert torch.allclose(step[i], one[0], atol=1e-4)


def test_gguf_quantize_with_imatrix_and_kept_tensors(wide_llama_dir, tmp_path):
    """Q8_0 stays close to the f16 export and shrinks the file; the importance matrix changes the rounding
    (so it is used), also after the export was saved and reloaded; `keep: F16` keeps the output tensor at f16; an IQ type without the matrix is refused."""
    from optimizer import gguf_file

    exported = _apply(_load(wide_llama_dir), tmp_path / "a", ("gguf-export", {"dtype": "f32"}))
    ref = _logits(exported)
    q8 = _apply(exported, tmp_path / "a", ("gguf-quantize", {"type": "Q8_0"}))
    assert q8.gguf_info["file_type"] == "Q8_0" and q8.gguf_info["tensor_types"].get("Q8_0", 0) > 0
    assert q8.gguf.stat().st_size < 0.45 * exported.gguf.stat().st_size
    for r, g in zip(ref, _logits(q8), strict=True):
        assert float(torch.nn.functional.cosine_similarity(r, g, dim=-1).min()) > 0.99
    assert any("with the importance matrix" in n for n in q8.notes)

    plain = _apply(
        _apply(_load(wide_llama_dir), tmp_path / "b", ("gguf-export", {"dtype": "f32"})),
        tmp_path / "b",
        ("gguf-quantize", {"type": "Q4_0", "imatrix": False}),
    )
    # the export saved and reloaded first, as a search's artifact cache serves a chain's shared prefix:
    # the importance matrix travels with the file
    cached = reload_saved(
        _apply(_load(wide_llama_dir), tmp_path / "c", ("gguf-export", {"dtype": "f32"})).save(tmp_path / "kept")
    )
    weighted = _apply(cached, tmp_path / "c", ("gguf-quantize", {"type": "Q4_0", "imatrix": True, "keep": "F16"}))
    assert plain.gguf.read_bytes() != weighted.gguf.read_bytes()
    reader = gguf_file._reader(weighted.gguf)
    assert {t.name: t.tensor_type.name for t in reader.tensors}["output.weight"] == "F16"
    with pytest.raises(UserError, match="needs the importance matrix gguf-export computes"):
        _apply(
            _apply(_load(wide_llama_dir), tmp_path / "d", ("gguf-export", {"dtype": "f32", "imatrix_texts": 0})),
            tmp_path / "d",
            ("gguf-quantize", {"type": "Q4_K_M"}),
        )


def test_a_gguf_file_is_a_model_source(wide_llama_dir, tmp_path, monkeypatch):
    """A .gguf file (or a folder holding one) loads into torch for the baseline with its tokenizer; the
    result names the file and its type; gguf-export(dtype=source) serves that file as shipped, and refuses
    after a pass that changed the weights."""
    from optimizer import gguf_file
    from optimizer.data import Dataset
    from optimizer.recipe import Recipe
    from optimizer.run_record import provenance

    monkeypatch.setenv("COSTOPT_CACHE", str(tmp_path / "cache"))
    exported = _apply(_load(wide_llama_dir), tmp_path, ("gguf-export", {"dtype": "f32", "imatrix_texts": 0}))
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "tiny.gguf").write_bytes(exported.gguf.read_bytes())
    for source in (shipped / "tiny.gguf", shipped):
        cand = _load(source)
        info = gguf_file.source_info(cand.info.source)
        assert info is not None and info["file"].endswith("tiny.gguf") and info["file_type"] == "F32"
        assert cand.info.max_length == 256  # the file's context, not transformers' 512 default
        for r, g in zip(_logits(_load(wide_llama_dir)), _logits(cand), strict=True):
            assert torch.allclose(r, g, atol=1e-4)
        recipe = Recipe.model_validate(
            {"name": "p", "model": {"source": str(source)}, "task": "causal-lm", "data": {"eval": {"source": "stdlib-docs"}}}
        )
        recorded = provenance(recipe, Dataset("text", TEXTS))["model_file"]  # what a result says it came from
        assert recorded["file"].endswith("tiny.gguf") and recorded["file_type"] == "F32"
    served = _apply(_load(shipped), tmp_path, ("gguf-export", {"dtype": "source", "imatrix_texts": 0}))
    assert served.gguf.read_bytes() == (shipped / "tiny.gguf").read_bytes()
    with pytest.raises(UserError, match=r"gguf-export\(dtype=source\) after cast"):
        _apply(_load(shipped), tmp_path, ("cast", {"dtype": "bfloat16"}), ("gguf-export", {"dtype": "source"}))
    with pytest.raises(UserError, match="not a GGUF file"):
        _apply(_load(wide_llama_dir), tmp_path, ("gguf-export", {"dtype": "source"}))
    two = tmp_path / "two"
    two.mkdir()
    for n in ("a.gguf", "b.gguf"):
        (two / n).write_bytes(b"GGUF")
    with pytest.raises(UserError, match="holds 2 GGUF files"):
        _load(two)


def test_serving_knobs_and_threads_reach_llama_cpp(wide_llama_dir, tmp_path):
    """The process's thread count is the context's (prompt and generation); llamacpp-serving's knobs
    reach the context and the llama-server command line; a q8_0 KV cache stays close to f16's, and where
    the heads are too narrow for its blocks the error says so."""
    from optimizer.runtimes.llamacpp import lib
    from tests.conftest import _tiny_llama

    ll = lib()
    before = threads()
    knobs = {"kv_cache": "q8_0", "flash_attn": "on", "ubatch": 64, "threads_batch": 2}
    narrow = _apply(
        _load(wide_llama_dir), tmp_path, ("gguf-export", {"dtype": "f32", "imatrix_texts": 0}), ("llamacpp-serving", knobs)
    )
    with pytest.raises(UserError, match="block size 32 does not divide n_embd_head_k=16"):
        _logits(narrow)
    try:
        set_threads(1)
        folder = _tiny_llama(tmp_path / "heads32", 64, heads=2)
        cand = _apply(_load(folder), tmp_path, ("gguf-export", {"dtype": "f32", "imatrix_texts": 0}))
        ref = _logits(cand)
        ctx = cand._context(1, 64)
        assert ll.llama_n_threads(ctx.ctx) == 1 and ll.llama_n_threads_batch(ctx.ctx) == 1
        cand = _apply(cand, tmp_path, ("llamacpp-serving", knobs))
        ctx = cand._context(1, 64)
        assert ll.llama_n_threads(ctx.ctx) == 1 and ll.llama_n_threads_batch(ctx.ctx) == 2
        assert ll.llama_n_ubatch(ctx.ctx) == 64
        for r, g in zip(ref, _logits(cand), strict=True):
            assert float(torch.nn.functional.cosine_similarity(r, g, dim=-1).min()) > 0.99
        line = cand.serve_command(Path("/srv/smol"), parallel=4, context_per_slot=160)
        for flag in (
            "-m /srv/smol/model.gguf",
            "-t 1",
            "-tb 2",
            "--parallel 4",
            "-c 640",
            "-ub 64",
            "-fa on",
            "-ctk q8_0 -ctv q8_0",
        ):
            assert flag in line, flag
    finally:
        set_threads(before)


def test_missing_extra_is_refused_in_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(UserError) as e:
        check_chain([{"name": "gguf-export", "params": {}}, {"name": "gguf-quantize", "params": {}}], "cpu")
    assert "llama_cpp" in str(e.value) and "pip install 'costopt[llamacpp]'" in e.value.one_line()
    monkeypatch.undo()
    with pytest.raises(UserError, match="needs a llamacpp model"):
        check_chain([{"name": "gguf-quantize", "params": {}}], "cpu")


def test_each_server_slot_holds_the_longest_input_the_deployment_was_judged_on():
    from optimizer.deploy import slot_context

    assert slot_context(prompt_tokens=128, new_tokens=32, limit=256) == 288  # SmolLM2's recipe: read up to 256
    assert slot_context(prompt_tokens=512, new_tokens=32, limit=256) == 544  # a timed prompt longer than the limit
