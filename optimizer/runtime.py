"""Candidate: one runnable model in its runtime, with one uniform call per task.

Measurement code calls `forward`, `prefill` and `decode` and never branches on the runtime.
Outputs come back as float32 torch tensors on the CPU.
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


QUANTIZED_STATE = "quantized_state.pt"
DynamicQLinear = torch.ao.nn.quantized.dynamic.Linear


def folder_size(directory: Path) -> int:
    return sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file())


@dataclass
class TorchCandidate(Candidate):
    module: torch.nn.Module | None = None
    runtime: str = "torch"

    def _to(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.module(input_ids=self._to(input_ids), attention_mask=self._to(attention_mask))
        y = out.last_hidden_state if self.task == "embedding" else out.logits
        return y.float().cpu()

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
        mask = self._to(attention_mask)
        out = self.module(input_ids=self._to(input_ids), attention_mask=mask, use_cache=True)
        return out.logits[:, -1, :].float().cpu(), {"cache": out.past_key_values, "mask": mask}

    @torch.inference_mode()
    def decode(self, next_ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        mask = torch.cat([state["mask"], state["mask"].new_ones((state["mask"].shape[0], 1))], dim=1)
        out = self.module(input_ids=self._to(next_ids), attention_mask=mask,
                          past_key_values=state["cache"], use_cache=True)
        return out.logits[:, -1, :].float().cpu(), {"cache": out.past_key_values, "mask": mask}

    @property
    def dynamic_int8(self) -> bool:
        """True after torch-dynamic-int8: packed int8 Linear layers that save_pretrained cannot write."""
        return any(isinstance(m, DynamicQLinear) for m in self.module.modules())

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        fmt = "hf"
        if self.dynamic_int8:  # config + the quantized state dict; reload rebuilds, quantizes, then loads it
            fmt = "torch-dynamic-int8"
            self.module.config.save_pretrained(directory)
            torch.save(self.module.state_dict(), directory / QUANTIZED_STATE)
        else:
            self.module.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        self.info.write_sidecars(directory)
        meta = {"task": self.task, "runtime": self.runtime, "format": fmt, "applied": self.applied}
        (directory / "costopt.json").write_text(json.dumps(meta, indent=2))
        return directory

    def parameter_counts(self) -> tuple[int, int]:
        seen: set[int] = set()
        total = nonzero = 0
        for m in self.module.modules():
            if isinstance(m, DynamicQLinear):  # packed int8 weight, invisible to parameters()
                w = m.weight().int_repr()
                total += w.numel()
                nonzero += int(torch.count_nonzero(w).item())
        for p in self.module.parameters():
            if p.data_ptr() in seen:  # tied weights count once
                continue
            seen.add(p.data_ptr())
            if type(p).__name__ == "Params4bit":  # two 4-bit codes per byte; zero weights are not zero codes
                total += p.numel() * 2
                nonzero += p.numel() * 2
                continue
            total += p.numel()
            nonzero += int(torch.count_nonzero(p).item())
        return total, nonzero
