"""MLflow tracking: each finished search trial is one MLflow run with its parameters, figures and record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimizer.cli import main

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """MLflow puts artifacts under ./mlruns next to a sqlite tracking store: keep them out of the checkout."""
    monkeypatch.chdir(tmp_path)


def test_search_logs_each_trial_to_mlflow(search_recipe, tiny_bert_dir, tmp_path, capsys):
    recipe = search_recipe(
        tiny_bert_dir, [{"name": "prune-magnitude", "sparsity": {"choice": [0.1, 0.3]}}], name="tracked", trials=2
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["search", str(recipe), "-q", "--mlflow", uri]) in (0, 3)
    capsys.readouterr()
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tracked")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2
    for run in runs:
        assert run.data.tags["costopt.state"] == "COMPLETE"
        assert run.data.params["chain"] == "prune-magnitude"
        assert {float(run.data.params[k]) for k in run.data.params if k.endswith("sparsity")} <= {0.1, 0.3}
        m = run.data.metrics
        assert {"drop.mrr", "drop.fidelity", "speed.input_tokens_per_s", "cost.input_usd_per_m", "objective_0"} <= set(m)
        assert m["speed.input_tokens_per_s"] > 0 and m["cost.input_usd_per_m"] > 0
        record = Path(client.download_artifacts(run.info.run_id, "record.json", str(tmp_path / run.info.run_id)))
        assert json.loads(record.read_text())["measurement"]["drops"]["mrr"]["relative"] == pytest.approx(m["drop.mrr"])
    sparsities = sorted(float(v) for r in runs for k, v in r.data.params.items() if k.endswith("sparsity"))
    assert sparsities == [0.1, 0.3]


def test_run_logs_its_result_and_a_bad_tracking_uri_stops_before_any_work(search_recipe, tiny_bert_dir, tmp_path, capsys):
    recipe = search_recipe(tiny_bert_dir, [{"name": "prune-magnitude", "sparsity": 0.2}], name="tracked")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["run", str(recipe), "-q", "--mlflow", uri, "--out", str(tmp_path / "runs")]) == 0
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert run.data.params["0.prune-magnitude.sparsity"] == "0.2" and run.data.metrics["speed.input_tokens_per_s"] > 0
    capsys.readouterr()
    assert main(["run", str(recipe), "-q", "--mlflow", "nosuchscheme://x", "--out", str(tmp_path / "runs2")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "MLflow tracking at nosuchscheme://x is not usable" in err
    assert not (tmp_path / "runs2").exists()
