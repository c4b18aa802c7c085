"""Candidate: one runnable model in its runtime, with one uniform call per task.

Measurement code calls `forward`, `prefill` and `decode` and never branches on the runtime.
Outputs come back as float32 torch tensors on the CPU. Every runtime saves an artifact folder with
`costopt.json` (task, runtime, the passes applied) that `optimizer.runtimes.reload_saved` reads back.
"""

from __future__ import annotations

import json
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from optimizer.model import ModelInfo

META_FILE = "costopt.json"


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

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token states [B, T, H] for embedding models; logits [B, T, V] or [B, C] otherwise."""

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

    def write_common(self, directory: Path, **meta: Any) -> None:
        """Tokenizer, sentence-transformers sidecars and costopt.json: what every runtime's artifact holds."""
        self.tokenizer.save_pretrained(directory)
        self.info.write_sidecars(directory)
        meta = {"task": self.task, "runtime": self.runtime, **meta, "applied": self.applied}
        (Path(directory) / META_FILE).write_text(json.dumps(meta, indent=2))


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
