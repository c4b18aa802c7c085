"""The process's CPU thread count, fixed once and read by every runtime.

torch takes it through `torch.set_num_threads`; runtimes with their own pools (ONNX Runtime,
OpenVINO) read `threads()` when they build a session, so every runtime in one process measures
on the same number of threads.
"""

from __future__ import annotations

import os

import torch

_THREADS: int | None = None


def set_threads(n: int | None) -> int:
    """Fix the CPU thread count for torch (and, through threads(), every other runtime)."""
    global _THREADS
    n = n or (os.cpu_count() or 1)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # can only be set before the first parallel op; harmless afterwards
        pass
    _THREADS = n
    return n


def threads() -> int:
    return _THREADS or torch.get_num_threads()
