"""The Python entry points: `optimizer.run` and `optimizer.search`, as the CLI's `run` and `search`.

    import optimizer
    result = optimizer.run("sentence-transformers/all-MiniLM-L6-v2", "recipes/quickstart.yaml")
    outcome = optimizer.search(my_module, {"name": "mine", "task": "embedding", ...}, tokenizer=my_tokenizer)

`model` is a hub id, a local folder, an installed model package, or an in-memory transformers model
(with its tokenizer: it is saved to a folder under the recipe's output_dir, and that folder is what
every pass and measurement loads); None keeps the recipe's own `model.source`. `recipe` is a YAML
path or a dict with the same sections.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import yaml

from optimizer.errors import UserError
from optimizer.recipe import Recipe, recipe_from_dict


def _recipe(model: Any, recipe: str | Path | dict[str, Any], tokenizer: Any) -> Recipe:
    if isinstance(recipe, dict):
        raw, base, origin = copy.deepcopy(recipe), Path.cwd(), "recipe"
    else:
        path = Path(recipe)
        if not path.is_file():
            raise UserError(f"recipe file {str(path)!r} does not exist", "give a recipe YAML path or a dict")
        raw, base, origin = yaml.safe_load(path.read_text()), path.resolve().parent, str(path)
    if not isinstance(raw, dict):
        raise UserError(f"{origin}: the top level must be a mapping of sections", "start from recipes/quickstart.yaml")
    if model is not None:
        if not isinstance(model, (str, Path)):
            model = _save_module(model, tokenizer, Path(raw.get("output_dir") or "runs"))
        raw.setdefault("model", {})
        if not isinstance(raw["model"], dict):
            raise UserError(f"{origin}: model must be a mapping", "write model: {source: ...}")
        raw["model"]["source"] = str(model)
    return recipe_from_dict(raw, base, origin)


def _save_module(module: Any, tokenizer: Any, output_dir: Path) -> Path:
    """An in-memory transformers model and its tokenizer, saved where passes can reload them."""
    if not hasattr(module, "save_pretrained"):
        raise UserError(
            f"a {type(module).__name__} cannot be saved for the passes to reload",
            "give a transformers model (PreTrainedModel), a folder, or a hub id",
        )
    if tokenizer is None:
        raise UserError("an in-memory model needs its tokenizer", "pass tokenizer=... (the one it was trained with)")
    state = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        state.update(name.encode())
        state.update(t.detach().float().cpu().numpy().tobytes()[:4096])  # enough to tell models apart
    folder = output_dir / "models" / f"{type(module).__name__}-{state.hexdigest()[:12]}"
    if not (folder / "config.json").is_file():
        module.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def run(
    model: Any,
    recipe: str | Path | dict[str, Any],
    *,
    tokenizer: Any = None,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Measure the baseline and the recipe's passes (as `costopt run`); returns the result, with `result_file`."""
    from optimizer.run_record import run_recipe

    result, path = run_recipe(_recipe(model, recipe, tokenizer), Path(out_dir) if out_dir else None, progress=progress)
    return result | {"result_file": str(path)}


def search(
    model: Any,
    recipe: str | Path | dict[str, Any],
    *,
    tokenizer: Any = None,
    trials: int | None = None,
    storage: str | None = None,
    deploy_file: str | Path | None = None,
    progress: bool = False,
) -> Any:
    """Search the recipe's space, confirm the choice, write deploy.yaml (as `costopt search`).

    Returns an `optimizer.outcome.SearchOutcome`: `chosen`, `config` (deploy.yaml's content), `deploy_file`,
    `confirmation`, `study`; `exit_code` 0 when something was chosen, 3 when nothing met the budget."""
    from optimizer.outcome import conclude, time_budget
    from optimizer.study import run_search

    r = _recipe(model, recipe, tokenizer)
    budget = time_budget(r)
    study = run_search(r, storage, trials, progress=progress, budget=budget)
    return conclude(r, study, Path(deploy_file) if deploy_file else None, budget)
