"""Every input width a configuration can be served at, checked against the baseline.

Quality is judged in length-sorted batches, so each configuration is measured at only the few padded
widths those batches happen to have. Runtimes choose kernels by shape, and a kernel can be wrong at one
shape and right at its neighbours: OpenVINO 2026.4's fused attention with the bf16 precision hint on an
NNCF int8 all-MiniLM-L6-v2 returns hidden states 0.48 off (relative) at exactly 32 tokens, at every batch
size, against 0.08 at 31 and 33 (measured). A search would keep such a configuration, since few
eval batches are 32 wide; deployed, every request batch padded to 32 is wrong.

So a candidate runs, at each width from 3 tokens to the widths it serves (`widths_to_check`; a causal LM's
beyond 64 tokens sampled, see CAUSAL_DENSE_UP_TO), one batch
of real text: a row exactly that wide and a shorter row padded to it. Its outputs at real tokens are
compared with the baseline's on the same batch. Compression moves the error evenly across widths;
a width whose error stands far above its neighbours' is a defect at that shape (`defects`).

Widths are compared by the shape they are served at (`Candidate.served_width`): a runtime that compiles one
model per width bucket runs every width of a bucket through the same kernels, so a defect spans the
bucket, and buckets are compared with buckets. Such a runtime also compiles per row count, so its check
runs at the serving batch's rows (the two real rows repeated); others are checked at two rows.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any

from optimizer.measure.width_check import WidthCheck

if TYPE_CHECKING:  # torch and the tasks load with the first check: the CLI reads checks without them
    import torch

    from optimizer.runtimes import Candidate

FIRST = 3  # narrower inputs are empty texts (special tokens only): no real token to compare
DENSE_UP_TO = 256  # every width up to here; beyond, each multiple of STRIDE and its two neighbours
STRIDE = 32
# A causal LM returns vocabulary-wide logits for every token and costs far more per width: every width of
# SmolLM2-135M up to 256 took 466 s on a 2-core EPYC (llama.cpp and the torch reference). Its check is dense
# where short prompts land and samples every 16th width (and both neighbours) beyond: about a fifth of the work.
CAUSAL_DENSE_UP_TO, CAUSAL_STRIDE = 64, 16
RATIO = 3.0  # a defect's error is this many times its neighbours' median ...
MARGIN = 0.05  # ... and at least this much above it (relative error), so exact runtimes never flag noise
WINDOW = 4  # neighbours on each side


def widths_to_check(limit: int, dense_up_to: int = DENSE_UP_TO, stride: int = STRIDE) -> list[int]:
    dense = list(range(FIRST, min(limit, dense_up_to) + 1))
    sparse = sorted({w for m in range(dense_up_to + stride, limit + 2, stride) for w in (m - 1, m, m + 1) if w <= limit})
    return dense + sparse


def defects(widths: list[int], errors: list[float], served: list[int] | None = None) -> list[dict[str, float]]:
    """Widths served at a shape whose error (the median over the widths served there) is far above the
    median of the WINDOW served shapes on each side; every width served at a defective shape is listed."""
    groups: dict[int, list[int]] = {}  # served width -> indices of the input widths served at it
    for i, s in enumerate(served or widths):
        groups.setdefault(s, []).append(i)
    shapes = sorted(groups)
    shape_error = [statistics.median(errors[i] for i in groups[s]) for s in shapes]
    out = []
    for j, s in enumerate(shapes):
        around = shape_error[max(0, j - WINDOW) : j] + shape_error[j + 1 : j + 1 + WINDOW]
        if not around:
            continue
        med, e = statistics.median(around), shape_error[j]
        if e > RATIO * med and e - med > MARGIN:
            out += [{"width": widths[i], "error": errors[i], "neighbours": med} for i in groups[s]]
    return out


def _source(texts: list[str], start: int, chars: int) -> str:
    """Texts joined from `start` (wrapping) until about `chars` characters: one long real text."""
    parts, n, i = [], 0, start
    while n < chars and len(parts) < len(texts):
        parts.append(texts[i % len(texts)])
        n += len(parts[-1]) + 1
        i += 1
    return " ".join(parts)


def _rows(tok: Any, texts: list[str], width: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A row `width` tokens wide and a shorter one padded to it, from different texts; None when the
    texts hold too few tokens for that width."""
    short = max(FIRST, width // 2)
    full = tok(_source(texts, width, 8 * width), truncation=True, max_length=width)["input_ids"]
    half = tok(_source(texts, width + 1, 8 * short), truncation=True, max_length=short)["input_ids"]
    if len(full) < width:
        return None
    from optimizer import tasks

    return tasks.pad_rows(tok, [full, half], width)


def _error(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over real tokens (or rows, for one output per input) of |out - ref| / |ref|."""
    if out.dim() == 3:  # per token: hidden states or logits
        out, ref = out[mask.bool()], ref[mask.bool()]
    rel = (out.float() - ref.float()).norm(dim=-1) / ref.float().norm(dim=-1).clamp(min=1e-9)
    return float(rel.mean())


def check_widths(candidate: Candidate, reference: Candidate, texts: list[str], rows: int = 2, streams: int = 1) -> WidthCheck:
    """`candidate` against `reference` (the baseline) at every width it can be served at, run as it is
    served: on `streams` streams and, for a candidate compiled per shape, in batches of `rows`."""
    import torch

    with torch.inference_mode():
        return _check(candidate, reference, texts, rows if candidate.compiled_per_shape else 2, streams)


def _check(candidate: Candidate, reference: Candidate, texts: list[str], rows: int, streams: int) -> WidthCheck:
    t0 = time.perf_counter()
    tok = candidate.tokenizer
    checked, errors = [], []
    spacing = (CAUSAL_DENSE_UP_TO, CAUSAL_STRIDE) if candidate.task == "causal-lm" else (DENSE_UP_TO, STRIDE)
    for w in widths_to_check(candidate.info.limit, *spacing):
        batch = _rows(tok, texts, w)
        if batch is None:  # all the texts together are shorter than this width: so are wider ones
            break
        ids, mask = batch
        reps = -(-rows // 2)  # the two rows repeated up to the serving batch; the first two are compared
        served = (ids.repeat(reps, 1)[:rows], mask.repeat(reps, 1)[:rows])
        out = candidate.forward_batches([served], streams)[0][:2]  # on the serving streams' models
        errors.append(_error(out, reference.forward(ids, mask), mask))
        checked.append(w)
    served = [candidate.served_width(w) for w in checked]
    return WidthCheck(checked, errors, defects(checked, errors, served), time.perf_counter() - t0)
