"""What every pass is: a name, a pydantic Config, and apply(candidate, ctx) -> candidate."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from optimizer.data import Dataset
    from optimizer.runtimes import Candidate, TorchCandidate


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
    calibration: "Dataset | None" = None
    train: "Dataset | None" = None
    baseline: "Callable[[], TorchCandidate] | None" = None  # a fresh copy of the uncompressed model (the teacher)
    extra: dict[str, Any] = field(default_factory=dict)


class Pass(ABC):
    name: ClassVar[str]
    family: ClassVar[str]  # quantization | pruning | distillation | export
    tasks: ClassVar[frozenset[str]] = frozenset({"embedding", "causal-lm", "classification"})
    runtimes_in: ClassVar[frozenset[str]] = frozenset({"torch"})  # runtimes it can take as input
    Config: ClassVar[type[PassConfig]] = PassConfig

    def __init__(self, config: PassConfig) -> None:
        self.config = config

    @abstractmethod
    def apply(self, candidate: "Candidate", ctx: PassContext) -> "Candidate":
        """Return the transformed candidate (may modify the input in place)."""
