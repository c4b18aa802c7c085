"""Task adapters: texts in, task outputs out, through a Candidate's uniform calls.

Batches are formed from length-sorted texts (less padding, same results) and padded per batch;
every count of tokens uses the attention mask, never the padded shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from optimizer.data import Dataset
from optimizer.runtimes import Candidate


@dataclass
class Batch:
    index: list[int]  # positions of these rows in the caller's list
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum().item())


def make_batches(
    candidate: Candidate, texts: list[str], batch_size: int, max_length: int | None = None, sort: bool = True
) -> list[Batch]:
    tok = candidate.tokenizer
    max_length = max_length or candidate.info.limit
    # tokenized once (it is on every request's path); each batch is padded from these, on the tokenizer's side
    ids = tok(texts, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: -len(ids[i])) if sort else list(range(len(texts)))
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        out.append(Batch(idx, *pad_rows(tok, [ids[i] for i in idx])))
    return out


def pad_rows(tok: Any, rows: list[list[int]], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one batch (input_ids, attention_mask), padded to `width` (default: the longest row) on
    the tokenizer's own side."""
    width = width or max(len(r) for r in rows)
    left = tok.padding_side == "left"
    input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, r in enumerate(rows):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        input_ids[row, cols] = torch.tensor(r, dtype=torch.long)
        mask[row, cols] = 1
    return input_ids, mask


def request_tokens(candidate: Candidate, texts: list[str]) -> int:
    """The texts' tokens as requests carry them: up to the model's own limit, whatever cap it serves with."""
    return sum(len(ids) for ids in candidate.tokenizer(texts, truncation=True, max_length=candidate.info.max_length)["input_ids"])


def pool(states: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Sentence pooling in torch, for training (distillation needs its gradients); inference uses pool_numpy."""
    m = mask.unsqueeze(-1).to(states.dtype)
    if mode == "cls":
        return states[:, 0]
    if mode == "max":
        return states.masked_fill(m == 0, float("-inf")).amax(dim=1)
    if mode == "lasttoken":
        last = mask.sum(dim=1) - 1
        return states[torch.arange(states.shape[0]), last]
    summed = (states * m).sum(dim=1)
    counts = m.sum(dim=1).clamp(min=1)
    return summed / (counts.sqrt() if mode == "mean_sqrt_len" else counts)


def pool_numpy(states: np.ndarray, mask: np.ndarray, mode: str, normalize: bool) -> np.ndarray:
    """`pool` (and L2 normalization) for inference, in NumPy on one thread.

    Pooling in torch between ONNX Runtime calls puts two thread pools on the same cores: ORT's
    workers spin after each run while torch's OpenMP threads pool, and the other way round. On 2
    cores that cost the ORT path a third of its end-to-end speed; NumPy's reductions use no pool."""
    m = mask[..., None].astype(np.float32)
    if mode == "cls":
        e = states[:, 0]
    elif mode == "max":
        e = np.where(m > 0, states, -np.inf).max(axis=1)
    elif mode == "lasttoken":
        e = states[np.arange(states.shape[0]), mask.sum(axis=1) - 1]
    else:
        counts = np.clip(m.sum(axis=1), 1, None)
        e = (states * m).sum(axis=1) / (np.sqrt(counts) if mode == "mean_sqrt_len" else counts)
    if normalize:
        e = e / np.clip(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12, None)
    return e.astype(np.float32, copy=False)


def _outputs(candidate: Candidate, batches: list[Batch], streams: int) -> Iterator[tuple[Batch, torch.Tensor]]:
    """Each batch with its forward output, `streams` at once, a few rounds of streams at a time (the
    outputs of a whole eval set would not fit in memory together)."""
    step = 4 * streams
    for s in range(0, len(batches), step):
        part = batches[s : s + step]
        yield from zip(part, candidate.forward_batches([(b.input_ids, b.attention_mask) for b in part], streams), strict=True)


def embed(candidate: Candidate, texts: list[str], batch_size: int, sort: bool = True, streams: int = 1) -> np.ndarray:
    """Sentence embeddings with the model's own pooling and normalization.

    `sort` forms length-sorted batches (as sentence-transformers' encode does); without it, batches
    take the texts in the order given, as a server takes requests. `streams` batches run at once."""
    out: np.ndarray | None = None
    for b, st in _outputs(candidate, make_batches(candidate, texts, batch_size, sort=sort), streams):
        pooled = pool_numpy(st.float().numpy(), b.attention_mask.numpy(), candidate.info.pooling, normalize=False)
        e = candidate.info.head.project(pooled)  # Dense layers and normalization, as the model's modules run
        if out is None:
            out = np.zeros((len(texts), e.shape[-1]), dtype=np.float32)
        out[b.index] = e
    assert out is not None
    return out


def prompted(candidate: Candidate, data: Dataset) -> Dataset:
    """`data` as the model is asked: with its sentence-transformers prompts (queries and documents each
    their own for retrieval pairs; the default prompt otherwise). Models without prompts get `data`."""
    head = candidate.info.head
    if candidate.task != "embedding" or not head.prompts:
        return data
    if data.kind == "pairs":
        return data.with_prefixes(head.prompt("query"), head.prompt("document"))
    return data.with_prefixes(head.prompt("text"), head.prompt("text"))


def classify(candidate: Candidate, texts: list[str], batch_size: int, sort: bool = True, streams: int = 1) -> np.ndarray:
    """Class logits [n, C]; `sort` and `streams` as in embed."""
    rows: dict[int, np.ndarray] = {}
    for b, lg in _outputs(candidate, make_batches(candidate, texts, batch_size, sort=sort), streams):
        for i, row in zip(b.index, lg.numpy(), strict=False):
            rows[i] = row
    return np.stack([rows[i] for i in range(len(texts))])


@dataclass
class LMStats:
    """Per-text sums over predicted tokens: NLL, token count, KL to reference, top-1 agreements."""

    nll: np.ndarray
    tokens: np.ndarray
    kl: np.ndarray
    agree: np.ndarray


@torch.inference_mode()
def lm_stats(candidate: Candidate, texts: list[str], batch_size: int, reference: Candidate | None, sort: bool = True) -> LMStats:
    """Next-token statistics; with a reference, KL(reference || candidate) and top-1 agreement per token.

    The reference runs on the same batches in lockstep, so no vocabulary-sized tensors are stored.
    """
    n = len(texts)
    nll, toks, kl, agree = (np.zeros(n) for _ in range(4))
    for b in make_batches(candidate, texts, batch_size, sort=sort):
        logp = torch.log_softmax(candidate.forward(b.input_ids, b.attention_mask)[:, :-1], dim=-1)
        target = b.input_ids[:, 1:]
        valid = (b.attention_mask[:, 1:] * b.attention_mask[:, :-1]).bool()
        tok_nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        nll[b.index] = (tok_nll * valid).sum(1).double().numpy()
        toks[b.index] = valid.sum(1).numpy()
        if reference is not None:
            ref_logp = torch.log_softmax(reference.forward(b.input_ids, b.attention_mask)[:, :-1], dim=-1)
            tok_kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).clamp(min=0)
            kl[b.index] = (tok_kl * valid).sum(1).double().numpy()
            agree[b.index] = ((ref_logp.argmax(-1) == logp.argmax(-1)) & valid).sum(1).numpy()
    return LMStats(nll, toks, kl, agree)


def token_stream(candidate: Candidate, texts: list[str]) -> torch.Tensor:
    """All texts' tokens end to end (no special tokens), for building fixed-length real-token prompts."""
    ids = candidate.tokenizer(texts, add_special_tokens=False)["input_ids"]
    return torch.tensor([t for seq in ids for t in seq], dtype=torch.long)


def iter_chunks(stream: torch.Tensor, batch_size: int, length: int) -> Iterator[torch.Tensor]:
    per = batch_size * length
    for s in range(0, len(stream) - per + 1, per):
        yield stream[s : s + per].view(batch_size, length)
