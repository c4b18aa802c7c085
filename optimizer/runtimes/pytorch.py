"""The torch runtime: a transformers module (eager, bf16/fp16, bitsandbytes, torch dynamic int8).

Saved artifacts are Hugging Face folders; torch dynamic int8, which save_pretrained cannot write,
is saved as the config plus the quantized state dict and rebuilt on reload.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from optimizer.model import ModelSpec, auto_class, load_model_info, load_module, saved_spec
from optimizer.runtimes.base import Candidate, Pair, fresh_folder, run_streams
from optimizer.runtimes.threads import threads

QUANTIZED_STATE = "quantized_state.pt"
DynamicQLinear = torch.ao.nn.quantized.dynamic.Linear


def dynamic_int8(module: torch.nn.Module, per_channel: bool) -> torch.nn.Module:
    """Linear layers -> int8 weights (per output channel or per tensor), activations quantized per batch."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        return quantize_dynamic(module.float(), {torch.nn.Linear: qconfig}, dtype=torch.qint8)


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
        out = self.module(input_ids=self._to(next_ids), attention_mask=mask, past_key_values=state["cache"], use_cache=True)
        return out.logits[:, -1, :].float().cpu(), {"cache": out.past_key_values, "mask": mask}

    def concurrent(self, batches: Sequence[Pair], streams: int, latencies: list[float] | None) -> list[torch.Tensor]:
        # torch has one intra-op pool per process: each stream thread sets its own share, and the
        # process's count comes back afterwards
        n = threads()
        per = max(1, n // streams)
        try:
            return run_streams(
                [lambda b=b: self.forward(*b) for b in batches], streams, latencies, lambda: torch.set_num_threads(per)
            )
        finally:
            torch.set_num_threads(n)

    @property
    def dynamic_int8(self) -> bool:
        """True after torch-dynamic-int8: packed int8 Linear layers that save_pretrained cannot write."""
        return any(isinstance(m, DynamicQLinear) for m in self.module.modules())

    def save(self, directory: Path) -> Path:
        directory = fresh_folder(directory)
        fmt = "hf"
        if self.dynamic_int8:  # config + the quantized state dict; reload rebuilds, quantizes, then loads it
            fmt = "torch-dynamic-int8"
            self.module.config.save_pretrained(directory)
            torch.save(self.module.state_dict(), directory / QUANTIZED_STATE)
        else:
            self.module.save_pretrained(directory, safe_serialization=True)
        self.write_common(directory, format=fmt)
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


def load_candidate(spec: ModelSpec, task: str, device: str) -> TorchCandidate:
    """The uncompressed baseline as a torch candidate on `device`."""
    info = load_model_info(spec, task)
    return TorchCandidate(info=info, module=load_module(info, spec, task, device), device=device)


def load_artifact(directory: Path, meta: dict[str, Any], device: str) -> TorchCandidate:
    spec = saved_spec(directory)
    if meta.get("format") != "torch-dynamic-int8":
        return load_candidate(spec, meta["task"], device)
    from transformers import AutoConfig

    module = auto_class(meta["task"]).from_config(AutoConfig.from_pretrained(directory))
    params = next((a["params"] for a in meta.get("applied", []) if a["name"] == "torch-dynamic-int8"), {})
    module = dynamic_int8(module.eval(), per_channel=params.get("per_channel", True))
    module.load_state_dict(torch.load(directory / QUANTIZED_STATE, weights_only=False))
    return TorchCandidate(info=load_model_info(spec, meta["task"]), module=module, device="cpu")
