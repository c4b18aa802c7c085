"""Find what `costopt report` was pointed at: a run (result.json) or a search (an Optuna study)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from optimizer.errors import UserError
from optimizer.measurement import RUN_SCHEMAS
from optimizer.recipe import Recipe, load_recipe
from optimizer.trials import default_storage, search_dir

_WHAT = (
    "a run folder or its result.json (from `costopt run`), a search folder runs/<study>/ or its study.db, "
    "an Optuna storage URL with --study, or the recipe the search ran"
)


@dataclass
class RunSource:
    path: Path  # the result.json
    result: dict[str, Any]
    recipe: Recipe


@dataclass
class StudySource:
    location: str  # what the user gave
    folder: Path | None  # where the study keeps deploy.yaml; None for a remote storage
    study: Any  # optuna.Study
    recipe: Recipe


def _recipe_from(config: dict[str, Any], where: str) -> Recipe:
    try:
        return Recipe.model_validate(config)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise UserError(
            f"the recipe stored in {where} no longer validates ({field}: {err['msg']}; an older costopt wrote it)",
            "pass the recipe it ran with: --recipe FILE",
        ) from None


def _load_run(path: Path, recipe_file: str | None) -> RunSource:
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path} as JSON ({e})", "give the result.json `costopt run` wrote") from None
    if not isinstance(result, dict) or result.get("schema") not in RUN_SCHEMAS:
        raise UserError(f"{path} is not a costopt run result (schema {' or '.join(RUN_SCHEMAS)})", f"give {_WHAT}")
    if "config" not in result or not result.get("baseline"):
        raise UserError(
            f"{path} holds no finished baseline (the run stopped early: {result.get('error')})",
            "re-run the recipe with `costopt run`",
        )
    recipe = load_recipe(recipe_file) if recipe_file else _recipe_from(result["config"], str(path))
    return RunSource(path, result, recipe)


def _study_names(storage: str) -> list[str]:
    import optuna

    return optuna.study.get_all_study_names(storage)


def _load_study(storage: str, name: str | None, location: str, folder: Path | None, recipe_file: str | None) -> StudySource:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        names = _study_names(storage)
    except Exception as e:  # a wrong URL, an unreachable server, a file that is not a database
        raise UserError(
            f"cannot open the Optuna storage {location} ({type(e).__name__}: {str(e).splitlines()[0][:160]})", f"give {_WHAT}"
        ) from None
    if name is None:
        if len(names) != 1:
            raise UserError(f"{location} holds {len(names)} studies ({', '.join(names) or 'none'})", "name one with --study NAME")
        name = names[0]
    elif name not in names:
        raise UserError(f"no study named {name!r} in {location}", f"use one of: {', '.join(names) or '(none)'}")
    study = optuna.load_study(study_name=name, storage=storage)
    if recipe_file:
        recipe = load_recipe(recipe_file)
    elif "recipe" in study.user_attrs:
        recipe = _recipe_from(study.user_attrs["recipe"], f"study {name}")
    else:
        raise UserError(
            f"study {name!r} was made by an older costopt that did not store its recipe",
            "pass the recipe it ran with: --recipe FILE",
        )
    return StudySource(location, folder, study, recipe)


def open_source(target: str, study: str | None = None, recipe_file: str | None = None) -> RunSource | StudySource:
    """A run or a study from what the user typed; one-line UserErrors for everything else."""
    if "://" in target:
        return _load_study(target, study, target, None, recipe_file)
    path = Path(target)
    if not path.exists():
        raise UserError(f"{target} does not exist", f"give {_WHAT}")
    if path.is_dir():
        if (path / "result.json").is_file():
            return _load_run(path / "result.json", recipe_file)
        if (path / "study.db").is_file():
            return _load_study(f"sqlite:///{(path / 'study.db').resolve()}", study, target, path, recipe_file)
        raise UserError(f"{target} holds neither result.json nor study.db", f"give {_WHAT}")
    if path.suffix == ".json":
        return _load_run(path, recipe_file)
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        return _load_study(f"sqlite:///{path.resolve()}", study, target, path.parent, recipe_file)
    if path.suffix in (".yaml", ".yml"):
        recipe = load_recipe(path)
        name = study or recipe.search.study_name or recipe.name
        folder = search_dir(recipe.output_dir, name)
        storage = recipe.search.storage
        if storage is None:
            if not (folder / "study.db").is_file():
                raise UserError(
                    f"recipe {target} has no search results yet ({folder / 'study.db'} is missing)",
                    f"run `costopt search {target}` first",
                )
            storage = default_storage(recipe.output_dir, name)
        return _load_study(storage, name, target, folder, recipe_file or str(path))
    raise UserError(f"{target} is not something costopt can report on", f"give {_WHAT}")
