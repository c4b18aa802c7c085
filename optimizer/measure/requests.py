"""A causal LM serving a burst of real requests, as a server does: prompts and answers of mixed lengths.

The fixed-shape benchmark (`speed.bench_causal_lm`) times prefill and decode of equal sequences. A
server's requests differ: prompts are as long as their text, answers stop at different lengths. How an
engine copes with that is its batching:

- static batches (any runtime): `batch_size` requests at a time in arrival order, left-padded to the
  longest prompt; the batch decodes until its longest answer is done, so a short answer's slot idles;
- continuous batching (torch, after `torch-continuous-batching`): transformers' engine, which admits a
  request as soon as another one leaves and runs prefill and decode together in paged attention.

By default all requests arrive at once (an offline burst). With an arrival rate they arrive one by one,
at seeded exponential gaps (a Poisson process, as independent users send them): a static server takes
the requests that have arrived, up to its batch size, whenever it is free; the continuous engine gets each
at its arrival. A request's time to first token counts from its arrival, so it includes its wait in the
queue. Every answer runs exactly its drawn length (end-of-sequence does not stop it), so both engines do
the same work.
"""

from __future__ import annotations

import functools
import itertools
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

from optimizer.errors import UserError
from optimizer.measure.speed import PERCENTILES, Stat, check_context, percentile, sync_device
from optimizer.runtimes import Candidate
from optimizer.runtimes.threads import threads

MIN_PROMPT = 8  # shorter texts (one-word docstrings) are not requests anyone sends


@dataclass(frozen=True)
class Request:
    prompt: list[int]
    new_tokens: int
    arrival_s: float = 0.0  # from the start of the round


@dataclass(frozen=True)
class Served:
    """One request's answer and its times from the round's start (seconds)."""

    first_token_s: float
    finished_s: float
    prompt_tokens: int
    tokens: tuple[int, ...]
    arrival_s: float = 0.0

    @property
    def waited_for_first_token_s(self) -> float:
        """Time to first token as its sender sees it: from its arrival."""
        return self.first_token_s - self.arrival_s

    @property
    def new_tokens(self) -> int:
        return len(self.tokens)

    @property
    def per_output_token_s(self) -> float | None:
        """Time per output token after the first (None for a one-token answer)."""
        return None if self.new_tokens < 2 else (self.finished_s - self.first_token_s) / (self.new_tokens - 1)


def request_mix(
    cand: Candidate,
    texts: list[str],
    n: int,
    prompt_tokens: int,
    new_tokens: int,
    seed: int = 0,
    rate: float | None = None,
) -> list[Request]:
    """`n` requests, one per text in order: the text's first tokens up to `prompt_tokens` (texts under
    MIN_PROMPT tokens skipped), answering a seeded draw of new_tokens/4 to new_tokens tokens; with `rate`
    (requests per second) arriving at seeded exponential gaps, the first at 0, else all at 0."""
    check_context(cand, prompt_tokens, new_tokens)
    ids = cand.tokenizer(texts, add_special_tokens=False)["input_ids"]
    prompts = [seq[:prompt_tokens] for seq in ids if len(seq) >= MIN_PROMPT][:n]
    if len(prompts) < n:
        raise UserError(
            f"speed.requests = {n}, but the eval texts hold only {len(prompts)} of at least {MIN_PROMPT} tokens",
            "lower speed.requests or give more eval text",
        )
    rng = random.Random(seed)
    lengths = [rng.randint(max(1, new_tokens // 4), new_tokens) for _ in prompts]
    gaps = random.Random(f"{seed}-arrivals")  # its own stream: a rate does not change the answers' lengths
    arrivals = list(itertools.accumulate((gaps.expovariate(rate) for _ in range(n - 1)), initial=0.0)) if rate else [0.0] * n
    return [Request(p, k, a) for p, k, a in zip(prompts, lengths, arrivals, strict=True)]


def serve_static(cand: Candidate, mix: list[Request], batch_size: int) -> list[Served]:
    """The mix in arrival-order batches, each left-padded and decoded greedily until its longest answer
    ends: whenever the server is free it takes the requests that have arrived, up to `batch_size` (waiting
    for the next one when none has)."""
    pad = cand.tokenizer.pad_token_id if cand.tokenizer.pad_token_id is not None else 0
    served: list[Served] = []
    sync_device(cand.device)
    t0 = time.perf_counter()
    g = 0
    while g < len(mix):
        if (wait := mix[g].arrival_s - (time.perf_counter() - t0)) > 0:
            time.sleep(wait)
        now = time.perf_counter() - t0
        end = g + 1
        while end < min(g + batch_size, len(mix)) and mix[end].arrival_s <= now:
            end += 1
        group, g = mix[g:end], end
        width = max(len(r.prompt) for r in group)
        ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r in group])
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in group])
        logits, state = cand.prefill(ids, mask)
        nxt = logits.argmax(-1, keepdim=True)
        sync_device(cand.device)
        first = time.perf_counter() - t0
        done, steps = {1: first}, [nxt]  # tokens produced -> when; each step's tokens
        for step in range(2, max(r.new_tokens for r in group) + 1):
            logits, state = cand.decode(nxt, state)
            nxt = logits.argmax(-1, keepdim=True)
            sync_device(cand.device)
            done[step] = time.perf_counter() - t0
            steps.append(nxt)
        answers = torch.cat(steps, 1).tolist()
        served += [
            Served(first, done[r.new_tokens], len(r.prompt), tuple(a[: r.new_tokens]), r.arrival_s)
            for r, a in zip(group, answers, strict=True)
        ]
    return served


def cache_blocks(mix: list[Request], page_size: int) -> int:
    """KV cache pages that hold every request of the burst at once (transformers would otherwise size
    the cache from the whole machine's memory on a CPU)."""
    return sum(-(-(len(r.prompt) + r.new_tokens) // page_size) for r in mix)


@contextmanager
def continuous_engine(cand: Candidate, mix: list[Request]) -> Iterator[Callable[[], list[Served]]]:
    """transformers' continuous-batching engine for `cand` (`cand.continuous` holds its settings), started
    and past its first request; yields a function that serves the burst once. One engine serves every
    round, as a server keeps running."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    # eos -1: no token ends an answer, so each runs its drawn length (as in serve_static)
    gen = GenerationConfig(do_sample=False, max_new_tokens=max(r.new_tokens for r in mix), eos_token_id=-1, pad_token_id=0)
    settings = {"page_size": 256} | cand.continuous
    settings.setdefault("num_blocks", cache_blocks(mix, settings["page_size"]))
    manager = cand.module.init_continuous_batching(
        generation_config=gen, continuous_batching_config=ContinuousBatchingConfig(**settings)
    )
    manager.start()
    rounds = iter(range(1 << 30))

    def burst(requests: list[Request]) -> list[Served]:
        tag = next(rounds)
        t0 = time.perf_counter()

        def send() -> None:  # each request at its arrival, while the results are read
            for i, r in enumerate(requests):
                if (wait := r.arrival_s - (time.perf_counter() - t0)) > 0:
                    time.sleep(wait)
                manager.add_request(
                    r.prompt, request_id=f"{tag}-{i}", max_new_tokens=r.new_tokens, record_timestamps=True, eos_token_id=-1
                )

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        results: dict[str, Any] = {}
        while len(results) < len(requests):
            out = manager.get_result(timeout=1)
            if out is not None and out.is_finished():
                results[out.request_id] = out
            elif out is None and not manager.is_running():
                raise RuntimeError("transformers' continuous-batching engine stopped before every request finished")
        served = []
        for i, r in enumerate(requests):
            out = results[f"{tag}-{i}"]
            if out.error or len(out.generated_tokens) != r.new_tokens:
                raise RuntimeError(
                    f"continuous batching answered request {i} with {len(out.generated_tokens)} tokens, not "
                    f"{r.new_tokens}: {out.error or 'no error given'}"
                )
            served.append(
                Served(out.timestamps[0] - t0, out.timestamps[-1] - t0, len(r.prompt), tuple(out.generated_tokens), r.arrival_s)
            )
        sender.join()
        return served

    try:
        burst(mix[:1])  # the engine builds its cache on the first request, in its own thread: not timed
        yield lambda: burst(mix)
    finally:
        manager.stop(block=True, timeout=30)
        manager.destroy()


def engine_of(cand: Candidate, batch_size: int) -> str:
    return "continuous batching" if getattr(cand, "continuous", None) is not None else f"static batches of {batch_size}"


@contextmanager
def server(cand: Candidate, mix: list[Request], batch_size: int) -> Iterator[Callable[[], list[Served]]]:
    """A function that serves the burst once with the candidate's engine (`engine_of`)."""
    if getattr(cand, "continuous", None) is None:
        yield functools.partial(serve_static, cand, mix, batch_size)
        return
    with continuous_engine(cand, mix) as serve:
        yield serve


def bench_requests(
    cand: Candidate,
    texts: list[str],
    n: int,
    batch_size: int,
    prompt_tokens: int,
    new_tokens: int,
    warmup: int,
    repeats: int,
    seed: int = 0,
    rate: float | None = None,
) -> dict[str, Any]:
    """The requests served `warmup` + `repeats` times by the candidate's engine, all at once or arriving
    at `rate` per second; tokens/s per round (median, spread), latency percentiles over every round's requests."""
    mix = request_mix(cand, texts, n, prompt_tokens, new_tokens, seed, rate)
    with server(cand, mix, batch_size) as serve:
        for _ in range(warmup):
            serve()
        rounds = [serve() for _ in range(repeats)]
    return summarize(mix, rounds, engine_of(cand, batch_size), rate)


def summarize(mix: list[Request], rounds: list[list[Served]], engine: str, rate: float | None = None) -> dict[str, Any]:
    """Rounds of one mix: tokens/s per round (median, spread; with an arrival rate, bounded by the rate the
    requests came at), latency percentiles over every round's requests, times to first token from arrival."""
    walls = [max(s.finished_s for s in r) for r in rounds]
    inputs = sum(len(r.prompt) for r in mix)
    outputs = sum(r.new_tokens for r in mix)
    ttft = [s.waited_for_first_token_s for r in rounds for s in r]
    tpot = [t for r in rounds for s in r if (t := s.per_output_token_s) is not None]
    return {
        "engine": engine,
        "requests": len(mix),
        "arrival_rate": rate,  # requests per second; None: all at once
        "last_arrival_s": mix[-1].arrival_s,
        "threads": threads(),
        "prompt_tokens": {"total": inputs, "min": min(len(r.prompt) for r in mix), "max": max(len(r.prompt) for r in mix)},
        "new_tokens": {"total": outputs, "min": min(r.new_tokens for r in mix), "max": max(r.new_tokens for r in mix)},
        "wall_s": asdict(Stat.of(walls)),
        "requests_per_s": len(mix) / statistics.median(walls),
        "tokens_per_s": asdict(Stat.of([(inputs + outputs) / w for w in walls])),
        "output_tokens_per_s": asdict(Stat.of([outputs / w for w in walls])),
        "time_to_first_token_s": {q: percentile(ttft, v) for q, v in PERCENTILES.items()},
        "time_per_output_token_s": {q: percentile(tpot, v) for q, v in PERCENTILES.items()},
    }
