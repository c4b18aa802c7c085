"""This machine's own roofline: the read bandwidth and matmul FLOP/s torch reaches where the model is timed.

A catalog entry prices a run; its bandwidth and peak are the rented machine's, which need not be the
one that measured (aws-c7i.large lists 8 GB/s for its 2 vCPUs; two cores of this Sapphire Rapids stream
29 GB/s). A decode share judged against the entry's bound then says nothing about the engine: it was
over 100% for every CPU engine. The roofline's engine check uses these figures instead, measured with the
same device and threads as the model.

They are achievable bounds, not datasheet peaks: the best of a few large reads (a sum over twice the
last-level cache, at least 512 MiB) and of a few square matmuls in the arithmetic the chain runs in. An engine can
beat torch's own matmul (a runtime's fused int8 kernel, say); the share is then reported over 100%.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
READ_MIB = 512  # at least; on a CPU twice its last-level cache (a GPU's L2 is far smaller)
MATMUL_SIDE = {"cpu": 2048, "cuda": 8192}  # large enough to reach the peak, small enough to take well under a second
# ... where the arithmetic has a kernel. Without one (bf16 or fp16 on an AVX2 CPU: emulated, 100x slower) a
# 2048-side matmul takes tens of seconds; the side grows from 256 only while one product takes under this.
MATMUL_SECONDS = 0.2


@dataclass(frozen=True)
class MachineBounds:
    device: str
    threads: int
    read_gb_s: float  # bytes read per second, in GB/s
    matmul_dtype: str
    matmul_tflops: float | None  # None: torch has no matmul in that arithmetic on this device

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _best_seconds(fn: Callable[[], object], sync: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up: allocation, kernel selection, page faults
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _sync(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def last_level_cache_bytes() -> int:
    """The CPU's largest cache, from sysfs (0 where it does not say)."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG") or 0) * scale)
    return max(sizes, default=0)


def read_bytes(device: str) -> int:
    """How much to read: past the caches, within a quarter of the free memory."""
    import psutil

    want = max(READ_MIB * 2**20, 0 if device == "cuda" else 2 * last_level_cache_bytes())
    return min(want, psutil.virtual_memory().available // 4) // 4 * 4


@lru_cache(maxsize=8)
def read_gb_s(device: str, threads: int, repeats: int = 5) -> float:
    """Best read bandwidth of a reduction over float32 (`read_bytes`; threads: torch's, part of the cache key)."""
    import torch

    x = torch.ones(read_bytes(device) // 4, dtype=torch.float32, device=device)
    seconds = _best_seconds(lambda: x.sum(), _sync(device), repeats)
    return x.numel() * 4 / seconds / 1e9


@lru_cache(maxsize=16)
def matmul_tflops(device: str, threads: int, dtype: str, repeats: int = 3) -> float | None:
    """Best FLOP/s of one square matmul in `dtype` (fp32, bf16, fp16, int8); None where torch has none."""
    import torch

    kind = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
    if kind is None and dtype != "int8":
        return None

    def product(n: int) -> Callable[[], object]:
        if dtype == "int8":
            a = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device)
            b = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device)
            return lambda: torch._int_mm(a, b)
        a, b = (torch.randn(n, n, device=device).to(kind) for _ in range(2))
        return lambda: a @ b

    largest, n, sync = MATMUL_SIDE["cuda" if device.startswith("cuda") else "cpu"], 256, _sync(device)
    try:
        while n < largest and _best_seconds(product(n), sync, 1) < MATMUL_SECONDS / 8:  # 8x the work at twice the side
            n *= 2
        seconds = _best_seconds(product(n), sync, repeats)
    except (RuntimeError, NotImplementedError) as e:  # no kernel for this dtype here: prefill is judged on the entry's bound
        log.info("no %s matmul on %s to bound prefill with (%s)", dtype, device, str(e).splitlines()[0][:120])
        return None
    return 2 * n**3 / seconds / 1e12


def machine_bounds(device: str, dtype: str) -> MachineBounds:
    """Read bandwidth and `dtype` matmul throughput here, with torch's current threads (measured once a process)."""
    import torch

    device = "cuda" if device.startswith("cuda") else "cpu"
    threads = torch.get_num_threads()
    return MachineBounds(device, threads, read_gb_s(device, threads), dtype, matmul_tflops(device, threads, dtype))
