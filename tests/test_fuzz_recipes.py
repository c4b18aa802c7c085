"""Seeded mutations of every shipped recipe through `costopt validate`: each is valid (exit 0) or refused
with one line on stderr (exit 2), never a traceback."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from optimizer.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
CASES_PER_RECIPE = 50
ODD_VALUES: list[Any] = [None, -1, 0, 1.5, "", "x", "999999999999", [], {}, [1, "a"], {"choice": []}, {"int": [5, 1]},
                         {"float": ["a", 1]}, True, "${NOT_SET_ANYWHERE}", "../../etc/passwd", 1e308, {"choice": [None]}]  # fmt: skip


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path in the recipe."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: dict, rng: random.Random) -> dict:
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        paths = _paths(doc)
        path = rng.choice(paths)
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        key = path[-1]
        op = rng.random()
        if op < 0.3 and isinstance(parent, dict):
            del parent[key]
        elif op < 0.4 and isinstance(parent, dict):
            parent[key + "_typo"] = parent.pop(key)
        elif op < 0.5 and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
        else:
            parent[key] = rng.choice(ODD_VALUES)
    return doc


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_mutated_recipes_are_valid_or_refused_in_one_line(recipe, tmp_path, capsys):
    original = yaml.safe_load(recipe.read_text())
    rng = random.Random(recipe.stem)
    outcomes = {0: 0, 2: 0}
    for i in range(CASES_PER_RECIPE):
        path = tmp_path / f"case{i}.yaml"
        path.write_text(yaml.safe_dump(_mutate(original, rng)))
        code = main(["validate", str(path)])
        captured = capsys.readouterr()
        assert code in (0, 2), (code, path.read_text(), captured.err)
        if code == 2:
            lines = captured.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("costopt: error: ") and "Traceback" not in captured.err, (
                path.read_text(),
                captured.err,
            )
        outcomes[code] += 1
    assert outcomes[2] > 0  # the mutations do reach the checks
