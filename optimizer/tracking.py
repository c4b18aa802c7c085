"""Experiment tracking: each search trial, or a run, logged to MLflow (the `mlflow` extra).

Optuna keeps the study; MLflow is where many teams look at experiments side by side. A trial becomes
one MLflow run: its chosen parameters, its figures (quality drops, tokens/s, $ per 1M tokens,
footprint) as metrics, and its whole record as a JSON artifact. Repeats (a configuration measured
before, answered from its figures) are not logged twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from optimizer.errors import UserError
from optimizer.measure.footprint import Footprint
from optimizer.measure.price import Price
from optimizer.measurement import Measurement, run_candidate

log = logging.getLogger(__name__)
DEFAULT_URI = "sqlite:///mlflow.db"  # MLflow 3 refuses its old ./mlruns file store by default


def _numbers(prefix: str, d: dict[str, Any] | None) -> dict[str, float]:
    """The finite numbers of a (nested) dict, as flat MLflow metric names."""
    out: dict[str, float] = {}
    for k, v in (d or {}).items():
        name = f"{prefix}{k}".replace("@", "_at_")
        if isinstance(v, dict):
            out |= _numbers(f"{name}.", v)
        elif isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out[name] = float(v)
    return out


def trial_metrics(m: Measurement, values: list[float] | None) -> dict[str, float]:
    """What a trial measured, as metrics: objective value(s), quality drops, speed medians, cost, footprint."""
    out = {f"objective_{i}": float(v) for i, v in enumerate(values or []) if math.isfinite(v)}
    for metric, d in m.drops.items():  # the relative drop and its interval (a loss is positive), where defined
        out |= _numbers(f"drop.{metric}", {"": d.relative, ".low": d.relative_low, ".high": d.relative_high})
    out |= _numbers("quality.", m.quality)
    out |= _numbers("speed.", m.tokens_per_s())
    price = m.cost.to_json() if m.cost else {}
    out |= _numbers("cost.", {k: v for k, v in price.items() if k.endswith(("_per_m", "monthly_usd"))})
    out |= _numbers("footprint.", m.footprint.to_json() if m.footprint else None)
    if m.seconds is not None:
        out["seconds"] = float(m.seconds)
    return out


class MlflowTracker:
    """Logs to one MLflow experiment (named after the recipe) at `uri`."""

    def __init__(self, uri: str | None, experiment: str) -> None:
        try:
            import mlflow
        except ImportError:
            raise UserError("--mlflow needs MLflow, which is not installed", "pip install 'costopt[mlflow]'") from None
        self.mlflow = mlflow
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
        try:
            self.client = mlflow.MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        except Exception as e:  # an unreachable server, a bad URI: name it before any work is done
            raise UserError(
                f"MLflow tracking at {uri} is not usable: {str(e).splitlines()[0][:200]}",
                "give a reachable tracking URI (http://host:5000, sqlite:///mlflow.db), or drop --mlflow",
            ) from None

    def _log(self, name: str, params: dict[str, Any], metrics: dict[str, float], tags: dict[str, str], record: Any) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        rid = run.info.run_id
        for k, v in params.items():
            self.client.log_param(rid, k, str(v)[:6000])
        for k, v in metrics.items():
            self.client.log_metric(rid, k, v)
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "record.json"
            f.write_text(json.dumps(record, indent=2, default=str))
            self.client.log_artifact(rid, str(f))
        self.client.set_terminated(rid, "FINISHED" if tags.get("costopt.state", "COMPLETE") == "COMPLETE" else "FAILED")
        return rid

    def __call__(self, study: Any, trial: Any) -> None:
        """Optuna callback: log the trial that just finished. Tracking that fails (a server gone) is a
        warning: the study, not MLflow, holds the search's results."""
        try:
            self._log_trial(study, trial)
        except Exception as e:
            log.warning("trial %d was not logged to MLflow: %s", trial.number, str(e).splitlines()[0][:200])

    def _log_trial(self, study: Any, trial: Any) -> None:
        m = Measurement.of(trial)
        if m.repeat:
            return
        chain = " -> ".join(p["name"] for p in m.passes) or "baseline"
        tags = {
            "costopt.study": study.study_name,
            "costopt.trial": str(trial.number),
            "costopt.state": trial.state.name,
            "costopt.chain": chain,
        }
        if m.pruned or m.error:
            tags["costopt.reason"] = str(m.pruned or m.error)[:4000]
        params = dict(trial.params) | {"chain": chain}
        values = list(trial.values) if trial.values is not None else None
        record = {
            "number": trial.number,
            "state": trial.state.name,
            "params": trial.params,
            "values": values,
            "measurement": m.to_json(),
        }
        self._log(f"{study.study_name}/trial-{trial.number}", params, trial_metrics(m, values), tags, record)

    def log_result(self, result: dict[str, Any]) -> str:
        """Log a `costopt run` result: the candidate's figures (or the baseline's, without passes)."""
        b = result.get("baseline") or {}
        shown = run_candidate(result) or Measurement(
            quality=b.get("quality") or {},
            speed=b.get("speed"),
            cost=Price.maybe(b.get("cost")),
            footprint=Footprint.maybe(b.get("footprint")),
        )
        chain = " -> ".join(p["name"] for p in result.get("passes", [])) or "baseline"
        params = {"chain": chain} | {
            f"{i}.{p['name']}.{k}": v for i, p in enumerate(result.get("passes", [])) for k, v in p.get("params", {}).items()
        }
        tags = {
            "costopt.run": str(result.get("recipe")),
            "costopt.state": "COMPLETE" if result.get("status") == "ok" else "FAILED",
        }
        return self._log(str(result.get("recipe")), params, trial_metrics(shown, None), tags, result)
