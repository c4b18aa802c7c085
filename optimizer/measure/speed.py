"""Speed on this machine: warm up, repeat, report medians with min/max and coefficient of variation.

Tokens/s counts real tokens (the attention mask), never padding. Tokenization is outside the timed
region for every runtime alike. Thread counts are fixed once per process by `set_threads`, and
runtimes that keep their own pools (ONNX Runtime) take the same number from `threads()`.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass

import psutil
import torch

from optimizer import tasks
from optimizer.errors import UserError
from optimizer.runtimes import Candidate
from optimizer.runtimes.threads import set_threads, threads  # noqa: F401 - the measurement API callers use


@dataclass
class Stat:
    median: float
    min: float
    max: float
    cv: float  # standard deviation / mean over repeats
    n: int

    @classmethod
    def of(cls, samples: list[float]) -> Stat:
        mean = statistics.fmean(samples)
        cv = statistics.pstdev(samples) / mean if len(samples) > 1 and mean else 0.0
        return cls(statistics.median(samples), min(samples), max(samples), cv, len(samples))


PERCENTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}  # latency percentiles every benchmark reports


def percentile(samples: list[float], q: float) -> float:
    s = sorted(samples)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class PeakMemory:
    """Peak process RSS (sampled every 5 ms) and, on CUDA, peak allocated bytes, inside a with-block."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_rss = 0
        self.peak_cuda: int | None = None
        self._stop = threading.Event()

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, proc.memory_info().rss)
            self._stop.wait(0.005)

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        self.peak_rss = psutil.Process().memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, psutil.Process().memory_info().rss)
        if self.device.startswith("cuda"):
            self.peak_cuda = int(torch.cuda.max_memory_allocated())


def sync_device(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_encoder(
    cand: Candidate,
    texts: list[str],
    batch_size: int,
    warmup: int,
    repeats: int,
    streams: int = 1,
    request_latency: bool = False,
) -> dict:
    """Throughput of a full pass over `texts` at `batch_size` (encoders and classifiers), on `streams`
    concurrent streams that share the process's threads. `request_latency` adds one pass in arrival
    order for the latency of requests as served (results and reports want it; timing rounds do not)."""
    # Length-sorted batches, as sentence-transformers' encode() forms them; padding is still reported.
    batches = tasks.make_batches(cand, texts, batch_size)
    pairs = [(b.input_ids, b.attention_mask) for b in batches]
    # Tokens are the requests' tokens at the model's own limit: a serving cap (the max-length pass) is
    # paid for in measured quality, never by counting fewer tokens.
    real = tasks.request_tokens(cand, texts)
    processed = sum(b.real_tokens for b in batches)
    padded = sum(b.input_ids.numel() for b in batches)
    for _ in range(warmup):
        cand.forward_batches(pairs, streams)
    tps, seq_s, batch_lat = [], [], []
    with PeakMemory(cand.device) as mem:
        for _ in range(repeats):
            sync_device(cand.device)
            t0 = time.perf_counter()
            cand.forward_batches(pairs, streams, batch_lat)
            sync_device(cand.device)
            dt = time.perf_counter() - t0
            tps.append(real / dt)
            seq_s.append(len(texts) / dt)
    out = {
        "kind": "encoder",
        "batch_size": batch_size,
        "streams": streams,
        "texts": len(texts),
        "real_tokens": real,
        "processed_tokens": processed,
        "padded_tokens": padded,
        "threads": threads(),
        "input_tokens_per_s": asdict(Stat.of(tps)),
        "sequences_per_s": asdict(Stat.of(seq_s)),
        "batch_latency_s": {q: percentile(batch_lat, v) for q, v in PERCENTILES.items()},  # length-sorted batches
        "peak_rss_bytes": mem.peak_rss,
        "peak_cuda_bytes": mem.peak_cuda,
    }
    if request_latency:  # once, after the throughput repeats
        per_request = request_latencies(cand, texts, batch_size, streams)
        out["request_latency_s"] = {q: percentile(per_request, v) for q, v in PERCENTILES.items()}
    return out


def request_latencies(cand: Candidate, texts: list[str], batch_size: int, streams: int) -> list[float]:
    """Each request's latency as served online: requests in arrival order, `batch_size` at a time, on
    `streams` concurrent streams; a request waits for its whole batch (queueing before it is not modelled)."""
    arrival = tasks.make_batches(cand, texts, batch_size, sort=False)
    lat: list[float] = []
    cand.forward_batches([(b.input_ids, b.attention_mask) for b in arrival], streams, lat)
    return [t for b, t in zip(arrival, lat, strict=True) for _ in b.index]


def check_context(cand: Candidate, prompt_tokens: int, new_tokens: int) -> None:
    """A prompt and its answer must fit the model's context."""
    if prompt_tokens + new_tokens > cand.info.max_length:
        raise UserError(
            f"speed.prompt_tokens + speed.new_tokens = {prompt_tokens + new_tokens} exceeds the model's "
            f"context of {cand.info.max_length} tokens",
            "lower them",
        )


def bench_causal_lm(
    cand: Candidate, texts: list[str], batch_size: int, prompt_tokens: int, new_tokens: int, warmup: int, repeats: int
) -> dict:
    """Prefill (input) and greedy KV-cache decode (output) speed on prompts cut from real text.

    Every prompt is exactly `prompt_tokens` real tokens (no padding); decoding runs `new_tokens` steps
    per sequence (EOS does not stop it, so every run does the same work).
    """
    stream = tasks.token_stream(cand, texts)
    chunks = list(tasks.iter_chunks(stream, batch_size, prompt_tokens))
    if not chunks:
        raise UserError(
            f"the eval texts hold {len(stream)} tokens, fewer than speed.batch_size x "
            f"speed.prompt_tokens = {batch_size * prompt_tokens}",
            "lower them or give more eval text",
        )
    check_context(cand, prompt_tokens, new_tokens)

    def one_run(prompt: torch.Tensor) -> tuple[float, list[float]]:
        mask = torch.ones_like(prompt)
        sync_device(cand.device)
        t0 = time.perf_counter()
        logits, state = cand.prefill(prompt, mask)
        nxt = logits.argmax(-1, keepdim=True)
        sync_device(cand.device)
        t_prefill = time.perf_counter() - t0
        steps = []
        for _ in range(new_tokens):
            ts = time.perf_counter()
            logits, state = cand.decode(nxt, state)
            nxt = logits.argmax(-1, keepdim=True)
            sync_device(cand.device)
            steps.append(time.perf_counter() - ts)
        return t_prefill, steps

    for i in range(warmup):
        one_run(chunks[i % len(chunks)])
    prefill_tps, decode_tps, ttft, step_lat = [], [], [], []
    with PeakMemory(cand.device) as mem:
        for i in range(repeats):
            t_prefill, steps = one_run(chunks[i % len(chunks)])
            prefill_tps.append(batch_size * prompt_tokens / t_prefill)
            decode_tps.append(batch_size * new_tokens / sum(steps))
            ttft.append(t_prefill)
            step_lat.extend(steps)
    return {
        "kind": "causal-lm",
        "batch_size": batch_size,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "threads": threads(),
        "input_tokens_per_s": asdict(Stat.of(prefill_tps)),
        "output_tokens_per_s": asdict(Stat.of(decode_tps)),
        "time_to_first_token_s": asdict(Stat.of(ttft)),
        "time_to_first_token_p95_s": percentile(ttft, 0.95),
        "token_latency_s": {q: percentile(step_lat, v) for q, v in PERCENTILES.items()},
        "peak_rss_bytes": mem.peak_rss,
        "peak_cuda_bytes": mem.peak_cuda,
    }
