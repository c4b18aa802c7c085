"""Was anything else using the CPU while we timed? Timings taken while other processes (another costopt
worker, a build, a noisy neighbour's steal) used the cores are not figures of this machine.

`Watch` brackets a timing: it reads the kernel's CPU counters (/proc/stat) and this process's own CPU
time before and after, so `other_cores` is the CPU the rest of the machine used during the window,
in cores. Other costopt workers on this host announce themselves in a shared folder (`registered`).
"""

from __future__ import annotations

import contextlib
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OTHER_CORES_LIMIT = 0.25  # more than a quarter of a core used by others on average: contended
STEAL_LIMIT = 0.05  # more than 5% of the machine's CPU time taken by the hypervisor: contended
WORKERS_DIR = Path(tempfile.gettempdir()) / "costopt-workers"
_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class Contention:
    seconds: float
    other_cores: float | None  # None where /proc/stat is not available or the window was too short to judge
    steal_share: float | None
    workers: list[int] = field(default_factory=list)  # pids of other costopt workers running on this host

    @property
    def busy(self) -> bool:
        return (
            (self.other_cores is not None and self.other_cores > OTHER_CORES_LIMIT)
            or (self.steal_share is not None and self.steal_share > STEAL_LIMIT)
            or bool(self.workers)
        )

    @property
    def text(self) -> str:
        parts = []
        if self.other_cores is not None:
            parts.append(f"other processes used {self.other_cores:.2f} cores")
        if self.steal_share:
            parts.append(f"steal {100 * self.steal_share:.1f}%")
        if self.workers:
            parts.append(f"{len(self.workers)} other costopt worker(s) running (pid {', '.join(map(str, self.workers))})")
        return ("contended: " if self.busy else "quiet: ") + ("; ".join(parts) or "no counters")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"busy": self.busy}


def _cpu_counters() -> tuple[float, float, float] | None:
    """(busy, steal, total) seconds of the whole machine since boot, from /proc/stat's cpu line."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq = fields[:7]
    steal = fields[7] if len(fields) > 7 else 0.0
    busy = user + nice + system + irq + softirq  # guest time is inside user
    return busy / _HZ, steal / _HZ, (busy + idle + iowait + steal) / _HZ


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Watch:
    """with Watch() as w: <timing>; then w.result is the Contention during the block."""

    def __enter__(self) -> Watch:
        self.t0, self.own0, self.cpu0 = time.perf_counter(), _own_cpu(), _cpu_counters()
        self.workers0 = set(other_workers())
        return self

    def __exit__(self, *exc: object) -> None:
        wall, own, cpu = time.perf_counter() - self.t0, _own_cpu() - self.own0, _cpu_counters()
        other = steal = None
        # The kernel counts in ticks of 1/HZ s (10 ms): a window under 10 ticks cannot be judged, and
        # one tick of slack is granted to the rest.
        if self.cpu0 is not None and cpu is not None and wall >= 10 / _HZ:
            busy, st, total = (b - a for a, b in zip(self.cpu0, cpu, strict=True))
            other = max(0.0, busy - own - 1 / _HZ) / wall
            steal = st / total if total > 0 else 0.0
        workers = sorted(self.workers0 | set(other_workers()))
        self.result = Contention(round(wall, 3), None if other is None else round(other, 3), steal, workers)


def other_workers() -> list[int]:
    """pids of other live costopt workers on this host (they registered in WORKERS_DIR)."""
    if not WORKERS_DIR.is_dir():
        return []
    out = []
    for f in WORKERS_DIR.iterdir():
        if not f.name.isdigit() or int(f.name) == os.getpid():
            continue
        if not alive(int(f.name)):
            f.unlink(missing_ok=True)  # left by a worker that died
            continue
        out.append(int(f.name))
    return sorted(out)


def alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def registered() -> Iterator[None]:
    """Announce this process as a costopt worker for the duration (so other workers see it)."""
    try:
        WORKERS_DIR.mkdir(parents=True, exist_ok=True)
        mark = WORKERS_DIR / str(os.getpid())
        mark.write_text(str(time.time()))
    except OSError:  # a read-only or foreign /tmp: contention is then judged from CPU counters alone
        yield
        return
    try:
        yield
    finally:
        mark.unlink(missing_ok=True)
