"""What every pass is: a name, a pydantic Config, and apply(candidate, ctx) -> candidate.

A concrete subclass registers itself by defining `name` (no list to keep in step). It declares
what it takes and gives (`runtimes_in`, `runtime_out`), where it runs (`devices`), and a `VERSION`
that is part of the artifact cache key: bump it when the pass produces something different for the
same configuration, and cached artifacts of the old version are no longer reused.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from optimizer.data import Dataset
    from optimizer.runtimes import Candidate, TorchCandidate

REGISTRY: dict[str, type[Pass]] = {}
ALL_TASKS = frozenset({"embedding", "causal-lm", "classification"})


class PassConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class PassContext:
    """What a pass may use besides the candidate: data, seed, device, where to write artifacts."""

    task: str
    device: str
    threads: int
    seed: int
    work_dir: Any  # pathlib.Path
    calibration: Dataset | None = None
    train: Dataset | None = None
    baseline: Callable[[], TorchCandidate] | None = None  # a fresh copy of the uncompressed model (the teacher)
    extra: dict[str, Any] = field(default_factory=dict)


class Pass(ABC):
    name: ClassVar[str]
    family: ClassVar[str]  # quantization | pruning | distillation | export | input
    VERSION: ClassVar[int] = 1
    tasks: ClassVar[frozenset[str]] = ALL_TASKS
    runtimes_in: ClassVar[frozenset[str]] = frozenset({"torch"})  # runtimes it can take as input
    runtime_out: ClassVar[str | None] = None  # the runtime it hands on; None: the one it was given
    devices: ClassVar[frozenset[str]] = frozenset({"cpu", "cuda"})
    requires: ClassVar[tuple[str, ...]] = ()  # modules it imports that are not core dependencies
    extra: ClassVar[str | None] = None  # the pip extra that installs them
    # CPU capabilities its speed-up needs (measure.system.cpu_capabilities: "int8-dot", "bf16"); on a CPU
    # without them a search does not try it alone first (the sampler may still draw it)
    pays_on: ClassVar[frozenset[str]] = frozenset()
    # Its outputs for one input depend on the other inputs of the batch (activation scales computed
    # per batch at run time): quality is then measured in the batches serving forms.
    batch_dependent: ClassVar[bool] = False
    Config: ClassVar[type[PassConfig]] = PassConfig

    @classmethod
    def compute_dtype(cls, params: dict[str, Any]) -> str | None:
        """The arithmetic the pass makes the model's matmuls run in (fp32 / bf16 / fp16 / int8), for the
        roofline's compute bound; None: it leaves it as it was (weight-only formats dequantize to it)."""
        return None

    @classmethod
    def depends_on_batch(cls, chain: list[dict[str, Any]]) -> bool:
        """Whether, in this chain, the pass makes one input's outputs depend on the rest of its batch."""
        return cls.batch_dependent

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return  # an intermediate base class
        if cls.name in REGISTRY:
            raise RuntimeError(f"pass {cls.name!r} registered twice ({REGISTRY[cls.name].__module__} and {cls.__module__})")
        REGISTRY[cls.name] = cls

    def __init__(self, config: PassConfig) -> None:
        self.config = config

    @abstractmethod
    def apply(self, candidate: Candidate, ctx: PassContext) -> Candidate:
        """Return the transformed candidate (may modify the input in place)."""


def no_grad(fn: Callable[..., Any]) -> Callable[..., Any]:
    """torch.no_grad() as a decorator that imports torch when called, not when the pass module is
    imported: reading the registry (costopt validate, costopt schema) must not load torch."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper
