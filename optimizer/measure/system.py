"""Hardware and software fingerprint recorded in every result: speed figures mean nothing without it."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from pathlib import Path
from typing import Any

import psutil

# Distributions whose version changes a figure: every runtime, every library a pass imports (its `requires`,
# pinned by tests/test_dependencies.py), and what reads the data. Provenance and baseline reuse key on these.
KEY_LIBRARIES = (
    "costopt",
    "torch",
    "torchao",
    "transformers",
    "tokenizers",
    "safetensors",
    "onnx",
    "onnxruntime",
    "onnx-ir",
    "openvino",
    "nncf",
    "bitsandbytes",
    "accelerate",
    "llama-cpp-python",
    "gguf",
    "optuna",
    "numpy",
    "pydantic",
    "sentence-transformers",
    "datasets",
)
# cpuinfo flag -> what we call it; these decide which int8/bf16 kernels a runtime can use.
ISA_FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
    "fma": "FMA",
    "asimd": "NEON",
    "sve": "SVE",
    "i8mm": "I8MM",
    "bf16": "BF16",
}


def _cpuinfo() -> tuple[str, set[str]]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(iter(re.findall(r"^model name\s*:\s*(.+)$", text, re.M)), "") or platform.processor() or platform.machine()
    flags_line = next(iter(re.findall(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)), "")
    return model.strip(), set(flags_line.split())


def int8_dot_saturates() -> bool:
    """Whether this CPU's int8 dot products sum pairs of uint8 x int8 products in int16 and saturate there:
    an x86 CPU without VNNI (AVX2's vpmaddubsw). ONNX Runtime's dynamic int8 then needs 7-bit weights
    (reduce_range): with full-range per-channel int8 weights, SmolLM2-135M's KL to its baseline was 12.5 nats
    per token on an AVX2 AMD EPYC (destroyed), and 0.72 with 7-bit weights (measured)."""
    import platform

    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
    return x86 and not (_cpuinfo()[1] & {"avx512_vnni", "avx_vnni", "amx_int8"})


def native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX-512 BF16, AMX, or Arm's BF16). Elsewhere torch
    emulates them: on an AVX2 AMD EPYC its bf16 matmuls ran at 0.0014 TFLOP/s against fp32's 0.15 (measured)."""
    return bool(_cpuinfo()[1] & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_capabilities() -> frozenset[str]:
    """What this CPU's kernels can make pay: "int8-dot" (int8 dot products without int16 saturation: VNNI,
    AMX or non-x86) and "bf16" (native bf16 matmuls). Passes name the ones they need (`Pass.pays_on`)."""
    return frozenset(name for name, has in (("int8-dot", not int8_dot_saturates()), ("bf16", native_bf16())) if has)


def source_version() -> str:
    """The version written in pyproject.toml, for a source tree that was never installed."""
    import re
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    found = re.search(r'^version = "([^"]+)"', pyproject.read_text(), re.M) if pyproject.is_file() else None
    return found.group(1) if found else "unknown"


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in KEY_LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    if out.get("costopt") is None:  # run from a source tree without installing it
        out["costopt"] = f"{source_version()} (source tree)"
    return out


def gpu_info() -> list[dict[str, Any]]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append(
            {
                "name": p.name,
                "memory_bytes": int(p.total_memory),
                "capability": f"{p.major}.{p.minor}",
                "cuda": torch.version.cuda,
            }
        )
    try:  # the driver version is only reachable through NVML
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        for g in gpus:
            g["driver"] = driver.decode() if isinstance(driver, bytes) else driver
    except Exception:
        pass
    return gpus


def fingerprint() -> dict[str, Any]:
    model, flags = _cpuinfo()
    try:
        import torch

        torch_isa = torch.backends.cpu.get_cpu_capability()
    except Exception:
        torch_isa = None
    return {
        "cpu": {
            "model": model,
            "arch": platform.machine(),
            "logical_cores": os.cpu_count(),
            "physical_cores": psutil.cpu_count(logical=False),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "isa": sorted({v for k, v in ISA_FLAGS.items() if k in flags}),
            "torch_cpu_capability": torch_isa,
        },
        "memory_bytes": psutil.virtual_memory().total,
        "gpus": gpu_info(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "libraries": library_versions(),
    }


def describe(fp: dict[str, Any]) -> str:
    """Human-readable fingerprint for `costopt hardware`."""
    cpu = fp["cpu"]
    lines = [
        f"CPU       {cpu['model']} ({cpu['arch']}), {cpu['logical_cores']} logical / "
        f"{cpu['physical_cores']} physical cores, {cpu['usable_cores']} usable",
        f"ISA       {', '.join(cpu['isa']) or 'baseline only'} (torch kernels: {cpu['torch_cpu_capability']})",
        f"Memory    {fp['memory_bytes'] / 2**30:.1f} GiB",
    ]
    if fp["gpus"]:
        for g in fp["gpus"]:
            lines.append(
                f"GPU       {g['name']}, {g['memory_bytes'] / 2**30:.1f} GiB, compute {g['capability']}, "
                f"CUDA {g['cuda']}, driver {g.get('driver', 'unknown')}"
            )
    else:
        lines.append("GPU       none visible")
    lines.append(f"OS        {fp['os']}, Python {fp['python']}")
    lines.append("Libraries " + ", ".join(f"{k} {v}" for k, v in fp["libraries"].items() if v))
    return "\n".join(lines)
