"""Registry of passes: name -> Pass class. Adding a technique = one class + one register() call."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from optimizer.passes.base import Pass, PassConfig, PassContext

REGISTRY: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    if cls.name in REGISTRY:
        raise RuntimeError(f"pass {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def validate_pass_params(spec: Any, task: str) -> tuple[str, str, str] | None:
    """Check a PassSpec's parameters (values or search ranges) against its pass's Config.

    Returns (field path, problem, fix) for the first mistake, or None.
    """
    from optimizer.ranges import parse_range, probes

    cls = REGISTRY[spec.name]
    if task not in cls.tasks:
        return ("name", f"pass {spec.name!r} does not apply to task {task!r}",
                f"use it with {', '.join(sorted(cls.tasks))}, or remove it")
    fields = cls.Config.model_fields
    fixed: dict[str, Any] = {}
    for key, value in spec.params.items():
        if key not in fields:
            from optimizer.errors import nearest
            return (key, f"unknown parameter of pass {spec.name!r}", f"remove it ({nearest(key, list(fields))})")
        try:
            rng = parse_range(value)
        except ValidationError as e:
            return (key, e.errors()[0]["msg"].removeprefix("Value error, "),
                    "write {choice: [...]}, {int: [lo, hi]} or {float: [lo, hi], log: true}")
        if rng is None:
            fixed[key] = value
            continue
        for probe in probes(rng):
            try:
                cls.Config.model_validate({key: probe} | {k: v for k, v in fixed.items()})
            except ValidationError as e:
                err = next((x for x in e.errors() if x["loc"] and x["loc"][0] == key), None)
                if err:
                    return (key, f"search value {probe!r}: {err['msg']}", "give only values the pass accepts")
    try:
        cls.Config.model_validate(fixed)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "missing":
            return (loc, "required parameter is missing", "add it")
        return (loc, err["msg"].removeprefix("Value error, "), f"give a valid value (got {err.get('input')!r})")
    return None


def build_pass(name: str, params: dict[str, Any]) -> Pass:
    cls = REGISTRY[name]
    return cls(cls.Config.model_validate(params))


# Importing the technique modules registers their passes.
from optimizer.passes import distill as _distill  # noqa: E402,F401
from optimizer.passes import onnx as _onnx  # noqa: E402,F401
from optimizer.passes import prune as _prune  # noqa: E402,F401
from optimizer.passes import quantize as _quantize  # noqa: E402,F401

__all__ = ["REGISTRY", "Pass", "PassConfig", "PassContext", "register", "build_pass", "validate_pass_params"]
