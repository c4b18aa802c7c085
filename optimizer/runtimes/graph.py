"""What the exported-graph runtimes (ONNX Runtime, OpenVINO) share: a model file in a folder, fed
NumPy arrays, with the KV cache of causal LMs as explicit past.{i}.key -> present.{i}.key tensors.

A runtime supplies `infer(feeds) -> outputs` (in the graph's output order); prefill, decode and the
batch forward are written once here.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from optimizer.runtimes.base import Candidate, Pair


@dataclass
class GraphCandidate(Candidate):
    MODEL_FILE: ClassVar[str]
    folder: Path | None = None  # holds the model file (+ its weights)
    io: dict[str, Any] = field(default_factory=dict)  # input/output names and KV shape, from the export

    @property
    def model_path(self) -> Path:
        assert self.folder is not None
        return self.folder / self.MODEL_FILE

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
        return [torch.from_numpy(out[0]).float() for out in self.infer_streams(feeds, streams, latencies)]

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        shape = (batch, self.io["kv_heads"], 0, self.io["head_dim"])
        return {n: np.zeros(shape, np.float32) for n in self.io["inputs"][2:]}

    def _feeds(self, ids: np.ndarray, mask: np.ndarray, past: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
        if self.task == "causal-lm":
            feeds |= past if past is not None else self.empty_past(ids.shape[0])
        return feeds

    def _run(self, ids: np.ndarray, mask: np.ndarray, past: dict[str, np.ndarray] | None) -> list[np.ndarray]:
        return self.infer(self._feeds(ids, mask, past))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run(input_ids.numpy(), attention_mask.numpy(), None)[0]).float()

    def _step(self, ids: np.ndarray, mask: np.ndarray, past: dict[str, np.ndarray] | None) -> tuple[torch.Tensor, Any]:
        out = self._run(ids, mask, past)
        present = dict(zip(self.io["inputs"][2:], out[1:], strict=True))
        return torch.from_numpy(out[0][:, -1, :]).float(), {"past": present, "mask": mask}

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return self._step(input_ids.numpy(), attention_mask.numpy(), None)

    def decode(self, next_ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        mask = np.concatenate([state["mask"], np.ones((state["mask"].shape[0], 1), state["mask"].dtype)], axis=1)
        return self._step(next_ids.numpy(), mask, state["past"])
