"""A torch causal LM written as a GGUF file that llama.cpp serves (f32 / f16 / bf16 weights).

Our own writer over the `gguf` package, for the Llama architecture (Llama, SmolLM, TinyLlama, Mistral
without sliding windows): tensors renamed to llama.cpp's names, and the query / key projections permuted
from Hugging Face's rotate-half rotary layout to the interleaved pairs llama.cpp's Llama graph rotates
(the permutation llama.cpp's own converter applies). Pruned or layer-dropped models export as long as
every layer keeps one shape.

The tokenizer: copied key by key from the GGUF the model came from, when it came from one (the file's own
vocabulary, merges, special tokens and chat template); else built from the tokenizer.json (byte-level
BPE as "gpt2"; byte-fallback BPE as llama.cpp's "llama" model, merge rank as score).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from optimizer.errors import UserError

DTYPES = ("f32", "f16", "bf16")
ARCHITECTURES = ("llama", "mistral")
_PER_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _interleave_rotary(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a q / k projection from rotate-half order (first half, second half of each head) to
    adjacent pairs (0, d/2), (1, d/2 + 1), ...: the layout llama.cpp's non-NeoX rope expects."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str | None:
    """llama.cpp's tensor name for a Hugging Face Llama parameter; None for one the file does not hold."""
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    parts = hf_name.split(".")
    if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers":
        rest = ".".join(parts[3:])
        if rest in _PER_LAYER:
            return f"blk.{parts[2]}.{_PER_LAYER[rest]}"
    return None


def _check(module: Any) -> Any:
    config = module.config
    if config.model_type not in ARCHITECTURES:
        raise UserError(
            f"gguf-export writes Llama-architecture models; this one is {config.model_type!r}",
            "drop gguf-export from the chain, or start from a GGUF file llama.cpp's converter made",
        )
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise UserError(f"gguf-export does not write {kind!r} rope scaling", "drop gguf-export from the chain")
    if getattr(config, "sliding_window", None):
        raise UserError("gguf-export does not write sliding-window attention", "drop gguf-export from the chain")
    layers = module.model.layers
    shapes = {(lay.mlp.gate_proj.out_features, lay.self_attn.q_proj.out_features) for lay in layers}
    if len(shapes) > 1:
        raise UserError(
            f"the layers have {len(shapes)} different shapes after pruning; a GGUF Llama needs one",
            "prune every layer alike before gguf-export",
        )
    return config


def _tokenizer_from_gguf(writer: Any, source_gguf: Path) -> None:
    from optimizer.gguf_file import tokenizer_fields

    for name, (value, (vtype, sub)) in tokenizer_fields(source_gguf).items():
        writer.add_key_value(name, value, vtype, sub)


def _tokenizer_from_json(writer: Any, tokenizer: Any) -> None:
    import gguf

    folder_json = json.loads(tokenizer.backend_tokenizer.to_str())
    model = folder_json["model"]
    if model.get("type") != "BPE":
        raise UserError(
            f"gguf-export writes BPE tokenizers; this one is {model.get('type')!r}",
            "start from the model's GGUF file (model.source: a .gguf), whose tokenizer is copied",
        )
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in folder_json.get("added_tokens", [])}
    for content, t in added.items():
        vocab.setdefault(content, t["id"])
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    for text, i in vocab.items():
        tokens[i] = text
    types = [gguf.TokenType.NORMAL] * size
    byte_fallback = bool(model.get("byte_fallback"))
    for text, i in vocab.items():
        if text in added:
            types[i] = gguf.TokenType.CONTROL if added[text].get("special") else gguf.TokenType.USER_DEFINED
        elif byte_fallback and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types[i] = gguf.TokenType.BYTE
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if byte_fallback:  # sentencepiece-style: llama.cpp merges by score, the earliest merge first
        scores = [0.0] * size
        for rank, m in enumerate(merges):
            merged = m.replace(" ", "", 1)
            if merged in vocab:
                scores[vocab[merged]] = -float(rank + 1)
        writer.add_tokenizer_model("llama")
        writer.add_token_scores(scores)
        if tokenizer.unk_token_id is not None:
            types[tokenizer.unk_token_id] = gguf.TokenType.UNKNOWN
            writer.add_unk_token_id(tokenizer.unk_token_id)
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_merges(merges)
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    for token_id, add in ((tokenizer.bos_token_id, writer.add_bos_token_id), (tokenizer.eos_token_id, writer.add_eos_token_id)):
        if token_id is not None:
            add(token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def export(module: Any, tokenizer: Any, path: Path, dtype: str, source_gguf: Path | None, name: str) -> None:
    """Write `module` (a Llama-architecture causal LM) to `path` as GGUF with weights in `dtype`."""
    import gguf
    import torch

    if dtype not in DTYPES:
        raise UserError(f"gguf-export dtype {dtype!r} is not one of {', '.join(DTYPES)}", "pick one of them")
    config = _check(module)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layer = module.model.layers[0]
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(len(module.model.layers))
    writer.add_feed_forward_length(int(layer.mlp.gate_proj.out_features))
    writer.add_head_count(layer.self_attn.q_proj.out_features // head_dim)
    writer.add_head_count_kv(layer.self_attn.k_proj.out_features // head_dim)
    theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta") or getattr(config, "rope_theta", 10000.0)
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_file_type(ftype[dtype])
    if source_gguf is not None:
        _tokenizer_from_gguf(writer, source_gguf)
    else:
        _tokenizer_from_json(writer, tokenizer)
    heads_now = layer.self_attn.q_proj.out_features // head_dim  # after head pruning, if any
    kv_now = layer.self_attn.k_proj.out_features // head_dim
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, t in module.state_dict().items():
        target = gguf_name(hf_name)
        if target is None or (tied and target == "output.weight"):
            continue
        w = t.detach().to(torch.float32).cpu().numpy()
        if target.endswith("attn_q.weight"):
            w = _interleave_rotary(w, heads_now)
        elif target.endswith("attn_k.weight"):
            w = _interleave_rotary(w, kv_now)
        if w.ndim == 1 or dtype == "f32":  # norms stay f32, as llama.cpp's converter keeps them
            writer.add_tensor(target, np.ascontiguousarray(w, np.float32))
        elif dtype == "f16":
            writer.add_tensor(target, w.astype(np.float16))
        else:
            q = gguf.GGMLQuantizationType.BF16
            writer.add_tensor(target, gguf.quants.quantize(w, q), raw_dtype=q)  # bytes; the writer infers the shape
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
