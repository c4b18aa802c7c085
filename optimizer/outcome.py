"""What a finished search concludes: the confirmed choice and its deploy.yaml, or why there is none.

One function for the CLI and the Python API alike; printing is the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from optimizer import confirm
from optimizer.chain import priced_here
from optimizer.confirm import STUDY_ATTR, Confirmation
from optimizer.confirm_time import expected_seconds, timing_seconds
from optimizer.deploy import deployment_config, write_deployment
from optimizer.errors import EXIT_NOTHING_MET, EXIT_OK
from optimizer.recipe import Recipe
from optimizer.time_budget import TimeBudget
from optimizer.trials import best_feasible, closest, machines, search_dir


@dataclass
class SearchOutcome:
    study: optuna.Study
    chosen: optuna.trial.FrozenTrial | None  # the deployed trial (confirmed on held-out data when confirmation is on)
    closest: optuna.trial.FrozenTrial | None  # when nothing met the budget: the trial nearest to it
    confirmation: Confirmation | None
    config: dict[str, Any] | None  # deploy.yaml's content
    deploy_file: Path | None

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.chosen is not None else EXIT_NOTHING_MET


def time_budget(recipe: Recipe) -> TimeBudget | None:
    """The whole search's time budget (search.time_budget_minutes), started now, with the confirmation's
    expected time as the reserve trials must leave it, and its timing's as the reserve a near-tie's test must."""
    return TimeBudget.minutes(
        recipe.search.time_budget_minutes,
        lambda study: expected_seconds(recipe, study),
        lambda study: timing_seconds(recipe, study),
    )


def conclude(
    recipe: Recipe, study: optuna.Study, deploy_file: Path | None = None, budget: TimeBudget | None = None
) -> SearchOutcome:
    """Confirm the search's cheapest within-budget trials on held-out data (unless confirmation is off)
    and write the first that holds to deploy.yaml; nothing is written when none met or held."""
    recipe = priced_here(recipe)
    # with workers on several machines, this one deploys what was measured on its own machine
    best = best_feasible(study, recipe.hardware.catalog if len(machines(study)) > 1 else None)
    if best is None:
        return SearchOutcome(study, None, closest(study), None, None, None)
    confirmation = None
    if recipe.search.confirm.share > 0:
        confirmation = confirm.confirm_search(recipe, study, budget)  # looked up at call time: tests replace it
        study.set_user_attr(STUDY_ATTR, confirmation.as_dict())
        if confirmation.chosen is None:
            return SearchOutcome(study, None, None, confirmation, None, None)
        best = study.trials[confirmation.chosen]
    baseline = study.user_attrs.get("baseline", {})
    config = deployment_config(recipe, study.study_name, best, baseline, confirmation)
    path = write_deployment(deploy_file or search_dir(recipe.output_dir, study.study_name) / "deploy.yaml", config)
    return SearchOutcome(study, best, None, confirmation, config, path)
