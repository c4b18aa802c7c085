"""What the exported-graph runtimes (ONNX Runtime, OpenVINO) share: a model file in a folder, fed
NumPy arrays, with the KV cache of causal LMs as explicit past.{i}.key -> present.{i}.key tensors.

A runtime supplies `infer(feeds) -> outputs` (in the graph's output order); prefill, decode and the
batch forward are written once here.

`pad_widths` serves an encoder's inputs of some padded widths wider (right padding, masked out, so every
real token keeps its position and its output): the way around a runtime defect at one input shape that the
width check (measure.widths) found. Outputs come back at the width the caller gave.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from optimizer.runtimes.base import WEIGHT_SUFFIXES, Candidate, Pair


@dataclass
class GraphCandidate(Candidate):
    MODEL_FILE: ClassVar[str]
    folder: Path | None = None  # holds the model file (+ its weights)
    io: dict[str, Any] = field(default_factory=dict)  # input/output names and KV shape, from the export
    pad_widths: dict[int, int] = field(default_factory=dict)  # encoders: inputs this wide are served this much wider

    @property
    def model_path(self) -> Path:
        assert self.folder is not None
        return self.folder / self.MODEL_FILE

    def weight_bytes(self) -> int | None:
        if self.folder is None:
            return None
        files = self.model_path.parent.rglob("*")
        return sum(f.stat().st_size for f in files if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))

    @abstractmethod
    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the graph; outputs in the graph's order, owned by the caller."""

    @abstractmethod
    def infer_streams(
        self, feeds: Sequence[dict[str, np.ndarray]], streams: int, latencies: list[float] | None
    ) -> list[list[np.ndarray]]:
        """`infer` over many inputs on `streams` concurrent streams, each with its own share of the threads."""

    def concurrent(self, batches: Sequence[Pair], streams: int, latencies: list[float] | None) -> list[torch.Tensor]:
        feeds = [self._feeds(ids.numpy(), mask.numpy(), None) for ids, mask in batches]
        outs = self.infer_streams(feeds, streams, latencies)
        return [torch.from_numpy(_unpad(out[0], ids.shape[1])).float() for out, (ids, _) in zip(outs, batches, strict=True)]

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        shape = (batch, self.io["kv_heads"], 0, self.io["head_dim"])
        return {n: np.zeros(shape, np.float32) for n in self.io["inputs"][2:]}

    def served_width(self, width: int) -> int:
        return self.pad_widths.get(width, width)

    def _feeds(self, ids: np.ndarray, mask: np.ndarray, past: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        wider = self.served_width(ids.shape[1]) if self.task != "causal-lm" else ids.shape[1]
        if wider > ids.shape[1]:
            extra = ((0, 0), (0, wider - ids.shape[1]))
            ids, mask = np.pad(ids, extra, constant_values=self.tokenizer.pad_token_id or 0), np.pad(mask, extra)
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
        if self.task == "causal-lm":
            feeds |= past if past is not None else self.empty_past(ids.shape[0])
        return feeds

    def _run(self, ids: np.ndarray, mask: np.ndarray, past: dict[str, np.ndarray] | None) -> list[np.ndarray]:
        return self.infer(self._feeds(ids, mask, past))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self._run(input_ids.numpy(), attention_mask.numpy(), None)[0]
        return torch.from_numpy(_unpad(out, input_ids.shape[1])).float()

    def write_common(self, directory: Path, **meta: Any) -> None:
        if self.pad_widths:
            meta["pad_widths"] = self.pad_widths
        super().write_common(directory, **meta)

    def _step(self, ids: np.ndarray, mask: np.ndarray, past: dict[str, np.ndarray] | None) -> tuple[torch.Tensor, Any]:
        out = self._run(ids, mask, past)
        present = dict(zip(self.io["inputs"][2:], out[1:], strict=True))
        return torch.from_numpy(out[0][:, -1, :]).float(), {"past": present, "mask": mask}

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return self._step(input_ids.numpy(), attention_mask.numpy(), None)

    def decode(self, next_ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        mask = np.concatenate([state["mask"], np.ones((state["mask"].shape[0], 1), state["mask"].dtype)], axis=1)
        return self._step(next_ids.numpy(), mask, state["past"])


def _unpad(out: np.ndarray, width: int) -> np.ndarray:
    """Per-token outputs cut back to the width the caller gave (after `pad_widths`)."""
    return out[:, :width] if out.ndim == 3 and out.shape[1] > width else out
