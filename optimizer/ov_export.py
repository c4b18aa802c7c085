"""torch -> OpenVINO IR through `openvino.convert_model`, with the same graph wrappers as the ONNX export.

The wrappers (onnx_export.EncoderGraph / CausalGraph) build the 4-D attention mask from the 2-D padding
mask, so padded batches come out right, and give causal LMs explicit KV-cache inputs and outputs.
OpenVINO's PyTorch frontend turns the model's scaled-dot-product attention into its own fused op.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from optimizer.onnx_export import CausalGraph, EncoderGraph, kv_shape, past_names
from optimizer.runtimes.ov import MODEL_FILE, require_openvino


def _counts(module: torch.nn.Module) -> tuple[int, int]:
    seen: set[int] = set()
    total = nonzero = 0
    for p in module.parameters():
        if p.data_ptr() in seen:  # tied weights count once
            continue
        seen.add(p.data_ptr())
        total += p.numel()
        nonzero += int(torch.count_nonzero(p).item())
    return total, nonzero


def convert(module: torch.nn.Module, task: str, folder: Path) -> dict[str, Any]:
    """Write `module` (fp32, CPU) as IR into `folder`; returns the model's I/O description."""
    ov = require_openvino()
    module = module.float().cpu().eval()
    ids = torch.randint(5, 100, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    if task == "causal-lm":
        layers = module.config.num_hidden_layers
        kv, hd = kv_shape(module.config)
        past = [torch.randn(2, kv, 3, hd) for _ in range(2 * layers)]
        ins, outs = past_names(layers)
        graph: torch.nn.Module = CausalGraph(module)
        example: tuple[torch.Tensor, ...] = (ids, torch.ones(2, 3 + 6, dtype=torch.long), *past)
        inputs, outputs = ["input_ids", "attention_mask", *ins], ["logits", *outs]
    else:
        out_name = "last_hidden_state" if task == "embedding" else "logits"
        graph, example = EncoderGraph(module, out_name), (ids, mask)
        inputs, outputs = ["input_ids", "attention_mask"], [out_name]
    graph.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow the wrappers replaced
        model = ov.convert_model(graph, example_input=example)
    for port, name in zip(model.inputs, inputs, strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, outputs, strict=True):
        port.get_tensor().set_names({name})
    shape = ov.PartialShape([-1, -1])  # any batch, any length (the example's shapes are not baked in)
    model.reshape(
        {"input_ids": shape, "attention_mask": shape}
        | ({n: ov.PartialShape([-1, kv, -1, hd]) for n in ins} if task == "causal-lm" else {})
    )
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(folder / MODEL_FILE), compress_to_fp16=False)  # weights stay f32; precision is a compile choice
    params, nonzero = _counts(module)
    io: dict[str, Any] = {"inputs": inputs, "outputs": outputs, "parameters": params, "nonzero_parameters": nonzero}
    if task == "causal-lm":
        io |= {"layers": layers, "kv_heads": kv, "head_dim": hd}
    return io
