"""Candidate: one runnable model in its runtime, with one uniform call per task.

Measurement code calls `forward`, `prefill` and `decode` and never branches on the runtime.
Outputs come back as float32 torch tensors on the CPU. Every runtime saves an artifact folder with
`costopt.json` (task, runtime, the passes applied) that `optimizer.runtimes.reload_saved` reads back.
"""

from __future__ import annotations

import json
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from optimizer.model import META_FILE, ModelInfo

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".onnx_data", ".data", ".pt", ".gguf")  # an artifact's weight files
Pair = tuple[torch.Tensor, torch.Tensor]  # (input_ids, attention_mask) of one batch


@dataclass
class Candidate(ABC):
    info: ModelInfo  # task, tokenizer, pooling, source, ...
    runtime: str
    device: str = "cpu"
    applied: list[dict[str, Any]] = field(default_factory=list)  # resolved passes, in order
    notes: list[str] = field(default_factory=list)  # e.g. "zeros only: no speedup from dense kernels"

    @property
    def task(self) -> str:
        return self.info.task

    @property
    def tokenizer(self) -> Any:
        return self.info.tokenizer

    @property
    def compiled_per_shape(self) -> bool:
        """True when each input shape (rows and width) runs its own compiled model, so a shape's outputs
        can only be checked at that shape."""
        return False

    def served_width(self, width: int) -> int:
        """The width an input `width` tokens wide is run at (wider: padded, masked out)."""
        return width

    def serving_copy(self) -> Candidate:
        """The candidate to serve another setting (streams, batch size) with, timed beside this one. Candidates
        compiled per shape keep a bounded cache of compiled shapes; two settings sharing one would evict each
        other's shapes every round and time compilation: those get their own copy."""
        return self

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token states [B, T, H] for embedding models; logits [B, T, V] or [B, C] otherwise."""

    def forward_batches(
        self, batches: Sequence[Pair], streams: int = 1, latencies: list[float] | None = None
    ) -> list[torch.Tensor]:
        """`forward` over many batches. With streams > 1, that many batches run at once, each on
        threads() // streams threads: how a server fills a machine with concurrent requests (one
        2-thread stream and two 1-thread streams differ in speed, measured, never assumed).

        `latencies` gets each batch's own run time."""
        if streams <= 1:
            out = []
            for ids, mask in batches:
                t0 = time.perf_counter()
                out.append(self.forward(ids, mask))
                if latencies is not None:
                    latencies.append(time.perf_counter() - t0)
            return out
        return self.concurrent(batches, streams, latencies)

    @abstractmethod
    def concurrent(self, batches: Sequence[Pair], streams: int, latencies: list[float] | None) -> list[torch.Tensor]:
        """forward_batches for streams > 1; each runtime gives every stream its own share of the threads."""

    @abstractmethod
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Causal LM: run the prompt, return (last-position logits [B, V], decode state)."""

    @abstractmethod
    def decode(self, next_ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Causal LM: one step for next_ids [B, 1] with the KV cache in `state`."""

    @abstractmethod
    def save(self, directory: Path) -> Path:
        """Write a reloadable artifact; returns the folder."""

    @abstractmethod
    def parameter_counts(self) -> tuple[int, int]:
        """(parameters, non-zero parameters)."""

    def weight_bytes(self) -> int | None:
        """Bytes of the weights as this candidate serves them, without saving it; None where only a saved
        artifact tells (the roofline then scales the quality model's artifact)."""
        return None

    def serve_command(self, folder: Path, parallel: int, context_per_slot: int) -> str | None:
        """The command line of the runtime's own server that serves this candidate's artifact, saved in
        `folder`, as it was measured (`parallel` sequences of `context_per_slot` positions each); None where
        `load_deployment` is how it is served."""
        return None

    def write_common(self, directory: Path, **meta: Any) -> None:
        """Tokenizer, sentence-transformers sidecars and costopt.json: what every runtime's artifact holds."""
        self.tokenizer.save_pretrained(directory)
        self.info.write_sidecars(directory)
        # the token limit it was measured at, which the saved tokenizer alone would not restore
        meta = {"task": self.task, "runtime": self.runtime, "max_length": self.info.max_length, **meta, "applied": self.applied}
        if self.info.input_cap is not None:
            meta["input_cap"] = self.info.input_cap
        (Path(directory) / META_FILE).write_text(json.dumps(meta, indent=2))


def run_streams(
    jobs: Sequence[Callable[[], Any]], streams: int, latencies: list[float] | None, initializer: Callable[[], None] | None = None
) -> list[Any]:
    """Run jobs on `streams` worker threads (the runtimes release the GIL while they compute); results
    in job order; each job's own run time (while the other streams run theirs) appended to `latencies`."""

    def timed(job: Callable[[], Any]) -> tuple[Any, float]:
        t0 = time.perf_counter()
        out = job()
        return out, time.perf_counter() - t0

    with ThreadPoolExecutor(streams, initializer=initializer) as pool:
        futures = [pool.submit(timed, job) for job in jobs]
        done = [f.result() for f in futures]
    if latencies is not None:
        latencies.extend(lat for _, lat in done)
    return [out for out, _ in done]


def fresh_folder(directory: Path) -> Path:
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return directory


def copy_files(source: Path, directory: Path) -> None:
    for f in Path(source).iterdir():
        if f.is_file():
            shutil.copy2(f, Path(directory) / f.name)


def folder_size(directory: Path) -> int:
    return sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file())
