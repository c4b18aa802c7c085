"""Search ranges: the values a recipe may give instead of a fixed parameter.

`{choice: [...]}`, `{int: [lo, hi]}` (optionally `step`, `log`) and `{float: [lo, hi]}` (optionally
`log`). This module is the only place that knows their shapes; the recipe, the passes' validation,
the search space and the report all read ranges through it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Choice(_Strict):
    choice: list[Any] = Field(min_length=1)


class IntRange(_Strict):
    int: tuple[int, int]
    step: int = 1
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.int[0] > self.int[1]:
            raise ValueError(f"range {list(self.int)} is reversed: write [low, high]")
        return self


class FloatRange(_Strict):
    float: tuple[float, float]
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        lo, hi = self.float
        if lo > hi:
            raise ValueError(f"range {list(self.float)} is reversed: write [low, high]")
        if self.log and lo <= 0:
            raise ValueError("a log range needs a positive lower bound")
        return self


Range = Choice | IntRange | FloatRange
RANGE_KEYS = {"choice", "int", "float"}


def parse_range(value: Any) -> Range | None:
    """A dict with one of choice/int/float is a search range; anything else is a plain value."""
    if isinstance(value, Choice | IntRange | FloatRange):
        return value
    if isinstance(value, dict) and RANGE_KEYS & set(value):
        kind = (RANGE_KEYS & set(value)).pop()
        cls = {"choice": Choice, "int": IntRange, "float": FloatRange}[kind]
        return cls.model_validate(value)
    return None


def values(rng: Range) -> list[Any] | None:
    """Every value a discrete range can take, in order; None for a float range (continuous)."""
    if isinstance(rng, Choice):
        return list(rng.choice)
    if isinstance(rng, IntRange):
        return list(range(rng.int[0], rng.int[1] + 1, rng.step))
    return None


def probes(rng: Range) -> list[Any]:
    """Values that stand for the range when checking it against a parameter's type: all of a
    discrete range, the two ends of a float range."""
    listed = values(rng)
    return listed if listed is not None else list(rng.float)  # type: ignore[union-attr]


def size(value: Any) -> int | None:
    """How many values a knob can take: 1 for a fixed value, None when continuous."""
    rng = parse_range(value)
    if rng is None:
        return 1
    listed = values(rng)
    return None if listed is None else len(listed)
