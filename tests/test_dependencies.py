"""Every library the package imports is declared in pyproject.toml: a core dependency, or an extra whose
passes refuse to run (with the pip line) when it is missing."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# a module whose distribution is not installed here, so the installed mapping cannot name it
DISTRIBUTION_OF = {"pynvml": "nvidia-ml-py", "llama_cpp": "llama-cpp-python"}


def _imported_top_level_modules() -> set[str]:
    names: set[str] = set()
    for root in ("optimizer", "cost"):
        for path in (REPO / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("optimizer", "cost")}


def _declared() -> dict[str, str]:
    """Normalized distribution name -> where it is declared ('core' or the extra's name)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    out = {}
    for where, specs in [("core", project["dependencies"])] + list(project["optional-dependencies"].items()):
        for spec in specs:
            dist = re.split(r"[\[<>=!~ ;]", spec, maxsplit=1)[0]
            out.setdefault(dist.lower().replace("_", "-"), where)
    return out


def test_every_imported_library_is_declared():
    distributions = importlib.metadata.packages_distributions()
    declared = _declared()
    undeclared = []
    for module in sorted(_imported_top_level_modules()):
        known = distributions.get(module, []) + [DISTRIBUTION_OF.get(module, module)]
        dists = [d.lower().replace("_", "-") for d in known]
        if not any(d in declared for d in dists):
            undeclared.append(f"{module} ({', '.join(dists)})")
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_transformers_is_held_below_the_next_major_version():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    [spec] = [d for d in project["dependencies"] if d.startswith("transformers")]
    assert "<6" in spec


def test_the_fingerprint_names_every_runtime_and_every_library_a_pass_imports():
    """An upgrade of any of them changes figures, so provenance and baseline reuse must see it."""
    from optimizer.measure.system import KEY_LIBRARIES
    from optimizer.passes.base import REGISTRY

    distributions = importlib.metadata.packages_distributions()
    missing = []
    for name, cls in sorted(REGISTRY.items()):
        for module in cls.requires:
            known = distributions.get(module, []) + [DISTRIBUTION_OF.get(module, module).replace("_", "-")]
            if not any(d.lower().replace("_", "-") in KEY_LIBRARIES for d in known):
                missing.append(f"{module} (required by {name})")
    runtimes = {"torch", "torchao", "onnxruntime", "openvino", "nncf"}
    missing += sorted(runtimes - set(KEY_LIBRARIES))
    assert not missing, f"not in measure/system.KEY_LIBRARIES: {missing}"
