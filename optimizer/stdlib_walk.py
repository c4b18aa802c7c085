"""The standard library's docstrings, read in a clean interpreter: the text behind the stdlib-docs data source.

Run as a script, `python -I -S stdlib_walk.py`, it prints [[qualname, summary, body], ...] as JSON, sorted
by qualified name and deduplicated by text. Only the standard library is imported, so no third-party
package has patched it first. optimizer.data.stdlib_docs runs it.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import pkgutil
import re
import sys
import warnings
from typing import Any

# Every standard-library module importable here, with its public submodules, except those that open windows
# or browsers or print on import, the test suite, packages that write files or are replaced by third-party
# shims on import (lib2to3, distutils), and pydoc_data and pdb: the language reference, stdlib-reference's text
# (pdb's command help is its debugger section), kept disjoint from these pairs. About 4,400 docstrings, 1,900 retrieval pairs in eval+train: twice the 110
# hand-picked modules of earlier versions, so a drop's interval is about 1.4x narrower.
STDLIB_SKIP = frozenset(
    {
        "antigravity",
        "this",
        "idlelib",
        "tkinter",
        "turtle",
        "turtledemo",
        "ensurepip",
        "venv",
        "lib2to3",
        "distutils",
        "pydoc_data",
        "pdb",
        "readline",
        "test",
    }
)


def _quiet_import(name: str) -> Any:
    """The module, or None where this build lacks it (sqlite3, lzma, a platform's own modules)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated modules (cgi, telnetlib, ...) still have their docs
            return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any import failure means: not available here
        return None


def _public(name: str) -> bool:
    return not any(part.startswith(("_", "test")) for part in name.split(".")[1:])


def stdlib_modules() -> tuple[str, ...]:
    """The standard library's importable public modules, sorted."""
    out = []
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in STDLIB_SKIP or (module := _quiet_import(name)) is None:
            continue
        out.append(name)
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), name + ".", onerror=lambda _: None):
            if _public(info.name) and _quiet_import(info.name) is not None:
                out.append(info.name)
    return tuple(sorted(out))


_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$")


def _members(module: Any) -> list[tuple[str, Any]]:
    out = [(module.__name__, module)]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj):
            out.append((f"{module.__name__}.{name}", obj))
            for mname, meth in sorted(vars(obj).items()):
                if not mname.startswith("_") and (inspect.isfunction(meth) or inspect.ismethoddescriptor(meth)):
                    out.append((f"{module.__name__}.{name}.{mname}", meth))
        elif inspect.isfunction(obj):
            out.append((f"{module.__name__}.{name}", obj))
    return out


def _split_doc(doc: str) -> tuple[str, str]:
    lines = doc.strip().splitlines()
    while lines and _SIGNATURE.match(lines[0].strip()):  # C functions start with their signature
        lines = lines[1:]
        while lines and not lines[0].strip():
            lines = lines[1:]
    if not lines:
        return "", ""
    summary = lines[0].strip()
    body = "\n".join(lines[1:]).strip()
    return summary, body


def docstrings(modules: list[str] | tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(qualname, summary, body) of every usable docstring of `modules`, sorted, deduplicated by text (inherited
    or aliased docstrings keep the smallest qualname, whatever the order the modules come in)."""
    by_text: dict[str, tuple[str, str, str]] = {}
    for modname in modules:
        if (module := _quiet_import(modname)) is None:
            continue
        for qualname, obj in _members(module):
            doc = inspect.getdoc(obj)
            if not doc:
                continue
            summary, body = _split_doc(doc)
            if len(summary.split()) < 3 or not summary.isascii():
                continue
            key = " ".join((summary + " " + body).split())
            if key not in by_text or qualname < by_text[key][0]:
                by_text[key] = (qualname, summary, body)
    return sorted(by_text.values())


if __name__ == "__main__":
    json.dump(docstrings(stdlib_modules()), sys.stdout)
