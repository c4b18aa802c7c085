"""What a sentence-transformers model does around its transformer, read from its own files.

`modules.json` lists the modules in order: the Transformer, then Pooling, optional Dense projections,
and Normalize. `config_sentence_transformers.json` may hold prompts ("query: ", "passage: ") that
sentence-transformers prepends to the texts; e5- and bge-style models are trained with them, and
scoring them without is scoring another model. Every module costopt does not know is refused, as is an
order it cannot reproduce: a model that would be silently mis-scored is an error instead.

The Dense layers run in NumPy after pooling, like the pooling itself (see tasks.pool_numpy for why).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from optimizer.errors import UserError

log = logging.getLogger(__name__)

Pooling = Literal["mean", "cls", "max", "mean_sqrt_len", "lasttoken"]
Role = Literal["query", "document", "text"]
MODULES_FILE = "modules.json"
ST_CONFIG = "config_sentence_transformers.json"
BERT_CONFIG = "sentence_bert_config.json"
POOLING_KEYS: tuple[tuple[str, Pooling], ...] = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
    ("pooling_mode_lasttoken", "lasttoken"),
    ("pooling_mode_mean_tokens", "mean"),
)
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Identity": lambda x: x,
    "Tanh": np.tanh,
    "ReLU": lambda x: np.maximum(x, 0),
    "Sigmoid": lambda x: 1 / (1 + np.exp(-x)),
}
# sentence-transformers' encode_document looks for these prompt names, in this order
DOCUMENT_PROMPTS = ("document", "passage", "corpus")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class Dense:
    """A sentence-transformers Dense module: activation(x @ W.T + b)."""

    weight: np.ndarray  # [out_features, in_features]
    bias: np.ndarray | None
    activation: str

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        return ACTIVATIONS[self.activation](y)


@dataclass
class SentenceHead:
    pooling: Pooling = "mean"
    dense: list[Dense] = field(default_factory=list)
    normalize: bool = False
    max_seq_length: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)  # relative path -> content, copied into every artifact

    def prompt(self, role: Role) -> str:
        """The text sentence-transformers puts before a query, a document, or any other text."""
        names = {"query": ("query",), "document": DOCUMENT_PROMPTS, "text": ()}[role]
        for name in names:
            if name in self.prompts:
                return self.prompts[name]
        return self.prompts.get(self.default_prompt_name or "", "")

    def project(self, pooled: np.ndarray) -> np.ndarray:
        """Dense layers, then L2 normalization, as the model's modules run after pooling."""
        for layer in self.dense:
            pooled = layer(pooled)
        if self.normalize:
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12, None)
        return pooled.astype(np.float32, copy=False)


def read_head(read: Callable[[str], bytes | None], where: str) -> SentenceHead:
    """The head of the model whose files `read(relative_path)` returns (None when absent)."""
    head = SentenceHead()

    def text(rel: str) -> str | None:
        data = read(rel)
        if data is None:
            return None
        head.files[rel] = data
        return data.decode()

    if (cfg := text(BERT_CONFIG)) is not None:
        head.max_seq_length = json.loads(cfg).get("max_seq_length")
    if (cfg := text(ST_CONFIG)) is not None:
        st = json.loads(cfg)
        head.prompts = {str(k): str(v) for k, v in (st.get("prompts") or {}).items()}
        head.default_prompt_name = st.get("default_prompt_name")
    modules_text = text(MODULES_FILE)
    if modules_text is None:
        log.warning("no sentence-transformers modules.json in %s: using mean pooling, no normalization", where)
        return head
    seen_pooling = False
    for module in sorted(json.loads(modules_text), key=lambda m: m.get("idx", 0)):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = str(module.get("path", "")).strip("/")
        if kind == "Transformer":
            continue
        if head.normalize:
            raise _refuse(where, f"a {kind} module after Normalize", "")
        if kind == "Pooling":
            cfg = json.loads(text(f"{path}/config.json") or "{}")
            active = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
            if len(active) > 1 or (active and active[0] not in dict(POOLING_KEYS)):
                raise _refuse(where, f"pooling {' + '.join(active)}", f" (known: one of {', '.join(m for _, m in POOLING_KEYS)})")
            if cfg.get("include_prompt") is False:
                raise _refuse(where, "pooling that leaves the prompt's tokens out", "")
            head.pooling = dict(POOLING_KEYS)[active[0]] if active else "mean"
            seen_pooling = True
        elif kind == "Dense" and seen_pooling:
            head.dense.append(_read_dense(path, text, read, head, where))
        elif kind == "Normalize":
            head.normalize = True
        else:
            raise _refuse(where, f"module {module.get('name', path)!r} of type {module.get('type')!r}", "")
    return head


def _read_dense(
    path: str, text: Callable[[str], str | None], read: Callable[[str], bytes | None], head: SentenceHead, where: str
) -> Dense:
    cfg = json.loads(text(f"{path}/config.json") or "{}")
    activation = str(cfg.get("activation_function", "torch.nn.modules.activation.Tanh")).rsplit(".", 1)[-1]
    if activation not in ACTIVATIONS:
        raise _refuse(where, f"Dense module {path!r} with activation {activation!r}", f" (known: {', '.join(ACTIVATIONS)})")
    for name in WEIGHT_FILES:
        data = read(f"{path}/{name}")
        if data is not None:
            head.files[f"{path}/{name}"] = data
            tensors = _tensors(data, name)
            weight = tensors["linear.weight"].astype(np.float32)
            bias = tensors.get("linear.bias")
            return Dense(weight, None if bias is None else bias.astype(np.float32), activation)
    raise UserError(
        f"{where}: Dense module {path!r} has no weights ({' or '.join(WEIGHT_FILES)})",
        "copy the whole sentence-transformers folder, module folders included",
    )


def _tensors(data: bytes, name: str) -> dict[str, np.ndarray]:
    if name.endswith(".safetensors"):
        from safetensors.numpy import load

        return load(data)
    import torch  # a pickled state dict: only torch reads it (weights only, no code)

    return {k: v.float().numpy() for k, v in torch.load(io.BytesIO(data), weights_only=True).items()}


def _refuse(where: str, what: str, known: str) -> UserError:
    return UserError(
        f"{where} has {what}, which costopt cannot reproduce{known}; scoring without it would mis-score the model",
        "use a model whose modules are Transformer, Pooling, Dense and Normalize (in that order), "
        "or remove that module from modules.json if the model does not need it",
    )
