"""Runtimes: where a model runs (torch, ONNX Runtime, OpenVINO, llama.cpp), each as a Candidate.

This layer sits below passes and measurement and imports nothing above it. Each runtime module
owns its Candidate, how its artifact is saved, and `load_artifact` to read one back;
`reload_saved` picks the module from the artifact's costopt.json.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from optimizer.errors import UserError
from optimizer.runtimes.base import META_FILE, Candidate, folder_size
from optimizer.runtimes.pytorch import TorchCandidate, load_candidate

# runtime name -> module holding its Candidate and load_artifact (imported when an artifact needs it)
MODULES = {
    "torch": "optimizer.runtimes.pytorch",
    "onnxruntime": "optimizer.runtimes.ort",
    "openvino": "optimizer.runtimes.ov",
    "llamacpp": "optimizer.runtimes.llamacpp",
}


def reload_saved(directory: Path, device: str = "cpu") -> Candidate:
    """Load an artifact written by Candidate.save (any runtime), with its task and pass history."""
    directory = Path(directory)
    meta_file = directory / META_FILE
    if not meta_file.is_file():
        raise UserError(
            f"{directory} is not a costopt artifact (no {META_FILE})",
            "give a folder written by `costopt run` (runs/<name>-<time>/artifact)",
        )
    meta = json.loads(meta_file.read_text())
    runtime = meta.get("runtime", "torch")
    if runtime not in MODULES:
        raise UserError(
            f"{directory} holds a {runtime!r} artifact, which this costopt does not know",
            f"rebuild it with this version (runtimes: {', '.join(MODULES)})",
        )
    cand = importlib.import_module(MODULES[runtime]).load_artifact(directory, meta, device)
    cand.applied = meta.get("applied", [])
    cand.info.input_cap = meta.get("input_cap")
    if meta.get("pad_widths"):  # JSON keys are strings
        cand.pad_widths = {int(w): int(to) for w, to in meta["pad_widths"].items()}
    return cand


__all__ = ["Candidate", "TorchCandidate", "MODULES", "folder_size", "load_candidate", "reload_saved"]
