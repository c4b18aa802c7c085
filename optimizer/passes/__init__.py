"""Registry of passes: name -> Pass class. Adding a technique is one class in one file: defining
`name` on a Pass subclass registers it (see base.py)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from optimizer.passes.base import REGISTRY, Pass, PassConfig, PassContext


def chain_of(passes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Passes written as in a recipe ({name, param: value, ...}) in the form apply_chain takes."""
    return [{"name": p["name"], "params": {k: v for k, v in p.items() if k != "name"}, "save": False} for p in passes]


def validate_pass_params(spec: Any, task: str) -> tuple[str, str, str] | None:
    """Check a PassSpec's parameters (values or search ranges) against its pass's Config.

    Returns (field path, problem, fix) for the first mistake, or None.
    """
    from optimizer.ranges import parse_range, probes

    cls = REGISTRY[spec.name]
    if task not in cls.tasks:
        return (
            "name",
            f"pass {spec.name!r} does not apply to task {task!r}",
            f"use it with {', '.join(sorted(cls.tasks))}, or remove it",
        )
    fields = cls.Config.model_fields
    fixed: dict[str, Any] = {}
    sampled: dict[str, Any] = {}  # one value of each searched parameter: a required one may be searched
    for key, value in spec.params.items():
        if key not in fields:
            from optimizer.errors import nearest

            return (key, f"unknown parameter of pass {spec.name!r}", f"remove it ({nearest(key, list(fields))})")
        try:
            rng = parse_range(value)
        except ValidationError as e:
            return (
                key,
                e.errors()[0]["msg"].removeprefix("Value error, "),
                "write {choice: [...]}, {int: [lo, hi]} or {float: [lo, hi], log: true}",
            )
        if rng is None:
            fixed[key] = value
            continue
        sampled[key] = probes(rng)[0]
        for probe in probes(rng):
            try:
                cls.Config.model_validate({key: probe} | {k: v for k, v in fixed.items()})
            except ValidationError as e:
                err = next((x for x in e.errors() if x["loc"] and x["loc"][0] == key), None)
                if err:
                    return (key, f"search value {probe!r}: {err['msg']}", "give only values the pass accepts")
    try:
        cls.Config.model_validate(sampled | fixed)
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


def check_pass_can_run(name: str, device: str | None = None) -> None:
    """Refuse a pass whose library is not installed or that cannot run on `device`."""
    import importlib.util

    from optimizer.errors import UserError

    cls = REGISTRY[name]
    missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(
            f"pass {name!r} needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed",
            f"pip install 'costopt[{cls.extra}]'" if cls.extra else f"pip install {' '.join(missing)}",
        )
    if device is not None and device not in cls.devices:
        raise UserError(
            f"pass {name!r} runs on {' or '.join(sorted(cls.devices))}, not on {device}",
            f"set hardware.device: {sorted(cls.devices)[0]}, or remove the pass",
        )


def check_chain(passes: list[dict[str, Any]], device: str | None = None) -> str:
    """Refuse, before any work, a chain whose runtimes do not connect or a pass that cannot run (not
    installed, or not on `device`); returns the runtime the chain ends in."""
    from optimizer.errors import UserError

    runtime = "torch"
    for i, p in enumerate(passes):
        cls = REGISTRY[p["name"]]
        check_pass_can_run(p["name"], device)
        if runtime not in cls.runtimes_in:
            raise UserError(
                f"pass {p['name']!r} (position {i + 1}) needs a {' or '.join(sorted(cls.runtimes_in))} "
                f"model but the passes before it produce {runtime}",
                "reorder the passes: torch passes (distill, prune, cast) before export, runtime passes after it",
            )
        runtime = cls.runtime_out or runtime
    return runtime


def check_space(passes: list[tuple[str, bool]], device: str | None = None) -> None:
    """Validate a search space given as (name, optional) per pass.

    A trial drops the passes whose input runtime the passes before it do not produce (as the search
    does), so each pass must run in at least one choice of the optional passes."""
    import itertools

    from optimizer.errors import UserError

    for name, _ in passes:
        check_pass_can_run(name, device)
    optional = [i for i, (_, opt) in enumerate(passes) if opt]
    reachable: set[int] = set()
    for on in itertools.product((True, False), repeat=len(optional)):
        chosen = dict(zip(optional, on, strict=True))
        runtime = "torch"
        for i, (name, _) in enumerate(passes):
            cls = REGISTRY[name]
            if chosen.get(i, True) and runtime in cls.runtimes_in:
                reachable.add(i)
                runtime = cls.runtime_out or runtime
    for i, (name, _) in enumerate(passes):
        if i not in reachable:
            cls = REGISTRY[name]
            raise UserError(
                f"pass {name!r} (position {i + 1}) can never run: it needs a "
                f"{' or '.join(sorted(cls.runtimes_in))} model and no choice of the optional passes "
                "before it produces one",
                "reorder the passes (torch passes, an export, then that runtime's passes), or make the export before it optional",
            )


def batch_dependent(passes: list[dict[str, Any]]) -> bool:
    """Whether the chain's outputs for one input depend on the rest of its batch."""
    return any(REGISTRY[p["name"]].depends_on_batch(passes) for p in passes if p["name"] in REGISTRY)


def compute_dtype_of(passes: list[dict[str, Any]]) -> str:
    """The arithmetic a chain's matmuls run in: the last pass that sets it, else fp32."""
    dtype = "fp32"
    for p in passes:
        cls = REGISTRY.get(p["name"])
        dtype = (cls.compute_dtype(p.get("params", {})) if cls else None) or dtype
    return dtype


def runtime_of(passes: list[dict[str, Any]]) -> str:
    """The runtime a chain ends in: torch unless a pass hands the model to another runtime."""
    runtime = "torch"
    for p in passes:
        cls = REGISTRY.get(p["name"])
        runtime = (cls.runtime_out if cls else None) or runtime
    return runtime


# Modules of this package that define no pass: helpers the passes import when they run.
HELPERS = frozenset({"base", "calibration", "parity"})


def _import_techniques() -> None:
    """Import every pass module of this package: defining a Pass subclass registers it. Pass modules
    import torch and the runtimes inside their functions, so reading the registry stays fast."""
    import importlib
    import pkgutil

    for m in pkgutil.iter_modules(__path__):
        if m.name not in HELPERS:
            importlib.import_module(f"{__name__}.{m.name}")


_import_techniques()

__all__ = [
    "REGISTRY",
    "Pass",
    "PassConfig",
    "PassContext",
    "build_pass",
    "check_chain",
    "check_pass_can_run",
    "check_space",
    "compute_dtype_of",
    "runtime_of",
    "validate_pass_params",
]
