"""The import graph goes one way: each module imports only from its own layer or the ones below.

Every import counts, the ones inside functions and under TYPE_CHECKING too: a lazy import that
goes upward is still a back edge (it is how the old recipe <-> passes loop hid).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Lowest first. A module may import from its own layer or any layer before it, never after.
LAYERS: list[tuple[str, ...]] = [
    ("cost",),
    (
        "optimizer.errors",
        "optimizer.stdlib_walk",
        "optimizer.ranges",
        "optimizer.results",
        "optimizer.cli_format",
        "optimizer.measure.stored",
        "optimizer.measure.stats",
        "optimizer.measure.width_check",
        "optimizer.measure.price",
        "optimizer.measure.footprint",
        "optimizer.objectives",
        "optimizer.formatting",
        "optimizer.budget",
        "optimizer.measurement",
        "optimizer.metrics",
        "optimizer.signals",
        "optimizer.storage",
        "optimizer.tracking",
        "optimizer.time_budget",
    ),
    ("optimizer.model", "optimizer.gguf_file", "optimizer.data", "optimizer.sentence_head"),
    ("optimizer.runtimes",),
    (
        "optimizer.tasks",
        "optimizer.onnx_export",
        "optimizer.ov_export",
        "optimizer.gguf_export",
        "optimizer.surgery",
        "optimizer.measure",
    ),
    ("optimizer.passes",),
    ("optimizer.recipe",),
    ("optimizer.cache", "optimizer.chain", "optimizer.serving", "optimizer.search_space", "optimizer.trials"),
    ("optimizer.bench",),
    ("optimizer.run_record", "optimizer.sensitivity"),
    ("optimizer.trial_runner",),
    ("optimizer.study", "optimizer.deploy"),
    ("optimizer.confirm", "optimizer.confirm_time", "optimizer.outcome"),
    ("optimizer.report", "optimizer.result_text"),
    ("optimizer.cli", "optimizer.cost_cli", "optimizer.api", "optimizer"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in tests/test_layers.py"
    return best


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every optimizer/cost import in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in ("optimizer", "cost"):
                continue
            names = [a.name for a in node.names]
            # `from optimizer import tasks` imports the module optimizer.tasks
            for n in names:
                sub = f"{node.module}.{n}"
                if (REPO / Path(*sub.split("."))).with_suffix(".py").is_file() or (REPO / Path(*sub.split("."))).is_dir():
                    out.append((sub, [], node.lineno))
                    names = [x for x in names if x != n]
            if names:
                out.append((node.module, names, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] in ("optimizer", "cost")]
    return out


SOURCES = sorted(p for d in ("optimizer", "cost") for p in (REPO / d).rglob("*.py"))
EXPERIMENTS = sorted(p for p in (REPO / "experiments").rglob("*.py") if not any(s.startswith(".venv") for s in p.parts))


def test_every_import_goes_down_or_sideways():
    upward = []
    for path in SOURCES:
        me = module_name(path)
        for target, _, line in imports(path):
            if layer_of(target) > layer_of(me):
                upward.append(f"{path.relative_to(REPO)}:{line} {me} -> {target}")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_no_import_cycle_within_a_layer():
    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        me = module_name(path)
        graph.setdefault(me, set()).update(t for t, _, _ in imports(path) if t != me and not me.startswith(t + "."))
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt) :] + [node, nxt]))
            if nxt in graph and not state.get(nxt):
                visit(nxt, stack + [node])
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node, [])


def test_no_private_name_crosses_a_module():
    private = [
        f"{p.relative_to(REPO)}:{line} {', '.join(n for n in names if n.startswith('_'))} from {mod}"
        for p in SOURCES + EXPERIMENTS
        for mod, names, line in imports(p)
        if any(n.startswith("_") for n in names)
    ]
    assert not private, "private names imported from another module:\n" + "\n".join(private)


def test_cost_imports_nothing_from_optimizer():
    assert not [t for p in (REPO / "cost").rglob("*.py") for t, _, _ in imports(p) if t.startswith("optimizer")]


def test_experiments_use_only_the_public_api():
    """Measurement scripts import `optimizer`'s public names (optimizer.PUBLIC), never its modules."""
    import optimizer

    inside = [
        f"{p.relative_to(REPO)}:{line} {mod}" + (f" ({', '.join(sorted(set(names) - set(optimizer.PUBLIC)))})" if names else "")
        for p in EXPERIMENTS
        for mod, names, line in imports(p)
        if mod.startswith("optimizer") and (mod != "optimizer" or not set(names) <= set(optimizer.PUBLIC))
    ]
    assert not inside, "experiments reaching past the public API:\n" + "\n".join(inside)


def test_every_public_name_resolves_without_loading_a_framework():
    import subprocess
    import sys

    code = (
        "import sys, optimizer\n"
        "assert not {'torch', 'transformers', 'onnxruntime', 'openvino'} & set(sys.modules)\n"
        "missing = [n for n in optimizer.__all__ if getattr(optimizer, n, None) is None]\n"
        "assert not missing, missing\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
