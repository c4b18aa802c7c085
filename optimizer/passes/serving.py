"""Serving-grade torch decode for causal LMs: a static KV cache and a compiled decode step, or
transformers' continuous batching.

Eager decode with transformers' dynamic cache launches hundreds of small kernels per token and grows
the cache by concatenation; at small batch that overhead, not the weights' bytes, sets the speed (on a
GPU it keeps decode far below the memory-bandwidth bound). A static cache gives every step the same
shapes, so the step compiles once: CUDA graphs replay it as one launch on a GPU; on the CPU Inductor
fuses its elementwise work (measured on the 135M shape: experiments/llm-cpu/RESULTS.md).

Requests of mixed lengths waste a static batch's slots (padding, and short answers waiting for the
longest); continuous batching admits a request as another leaves. Its effect shows in `speed.requests`,
the served burst (measure/requests.py), not in the fixed-shape prefill and decode figures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from optimizer.passes.base import Pass, PassConfig, PassContext

if TYPE_CHECKING:
    from optimizer.runtimes import Candidate


class StaticCacheConfig(PassConfig):
    new_tokens: int = Field(
        256,
        ge=1,
        le=32768,
        description="room for this many generated tokens after the prompt (the cache holds the prompt plus this, "
        "rounded up to 64); decoding past it is a one-line error",
    )
    compile: bool = Field(
        True,
        description="compile the decode step (once per batch size and cache length, per process; about 30 s for "
        "a 135M model on 2 CPU cores); CUDA: with CUDA graphs",
    )


class TorchStaticCache(Pass):
    """Decode into a static KV cache (transformers' StaticCache) with the step compiled for fixed shapes;
    the prompt runs eagerly. Prompts with padding keep the dynamic cache."""

    name = "torch-static-cache"
    family = "export"  # changes how the model is served, not the model
    tasks = frozenset({"causal-lm"})
    Config = StaticCacheConfig

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        from optimizer.runtimes.pytorch import TorchCandidate

        assert isinstance(candidate, TorchCandidate)
        candidate.static_cache, candidate.compile_decode = self.config.new_tokens, self.config.compile
        return candidate


class ContinuousConfig(PassConfig):
    max_batch_tokens: int | None = Field(
        None,
        ge=16,
        description="most tokens (prompt chunks and decode steps together) in one forward; default: transformers "
        "sizes it from memory",
    )
    max_requests_per_batch: int | None = Field(None, ge=1, description="most requests in one forward; default: transformers'")
    page_size: int = Field(256, ge=16, description="KV cache tokens per page of paged attention")


class TorchContinuousBatching(Pass):
    """Serve requests through transformers' continuous-batching engine (paged attention; a request joins
    the running batch as soon as there is room, prefill and decode share forwards)."""

    name = "torch-continuous-batching"
    family = "export"  # changes how the model is served, not the model
    tasks = frozenset({"causal-lm"})
    Config = ContinuousConfig

    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        from optimizer.runtimes.pytorch import TorchCandidate

        assert isinstance(candidate, TorchCandidate)
        candidate.continuous = self.config.model_dump(exclude_none=True)
        return candidate
