"""The typed measurement record: what it derives, its JSON round trip, and reading what older versions stored."""

from __future__ import annotations

import json

import optuna
import pytest

from optimizer.budget import Budget
from optimizer.measure.stats import Drop
from optimizer.measurement import ATTR, Measurement, run_candidate

STORED = {"metric": "mrr", "baseline": 0.5, "candidate": 0.496, "drop": 0.004, "low": -0.002, "high": 0.009}
STORED |= {"relative": 0.008, "relative_low": -0.004, "relative_high": 0.018, "confidence": 0.95, "n": 100}
STORED_OTHER = STORED | {"relative": 0.001, "relative_high": 0.006}
DROP, OTHER = Drop.from_json(STORED), Drop.from_json(STORED_OTHER)


def test_a_drop_reads_what_every_version_stored():
    assert DROP.to_json() == STORED and Drop.from_json(DROP) is DROP
    older = {k: v for k, v in STORED.items() if k not in ("confidence", "n")}  # kept before power was reported
    assert Drop.from_json(older) == Drop.from_json(STORED | {"n": 0})
    assert DROP.end("high", relative=True) == 0.018 and DROP.end("high", relative=False) == 0.009
    kl = Drop.from_json(STORED | {"baseline": 0.0, "relative": None, "relative_low": None, "relative_high": None})
    assert kl.end("high", relative=True) == 0.009 and not kl.shown_relative(True) and DROP.shown_relative(True)


def test_derived_figures_follow_the_budget_metric():
    m = Measurement(metric="mrr", drops={"mrr": DROP, "recall@1": OTHER}, violation=Budget("mrr", 0.01).violation(DROP))
    assert m.drop == DROP and m.violation == pytest.approx(0.008) and m.feasible is False and m.measured
    m.drops_by_set = {"eval": {"mrr": DROP}, "extra": {"mrr": OTHER}}
    assert m.budget_drops() == {"eval": DROP, "extra": OTHER}
    assert Measurement(same_as=3).reason == "same configuration as trial 3: its figures"
    assert Measurement(error="boom", same_as=3).reason == "boom" and Measurement().feasible is None
    m.speed = {"input_tokens_per_s": {"median": 10.0, "min": 9.0}, "batch_size": 8}
    assert m.tokens_per_s() == {"input_tokens_per_s": 10.0}
    assert Measurement.from_json(m.to_json() | {"a key from a newer version": 1}) == m


def test_a_trial_stores_one_attribute_and_older_loose_attributes_read_the_same():
    study = optuna.create_study()
    new, old = study.ask(), study.ask()
    m = Measurement(
        passes=[{"name": "cast", "params": {"dtype": "bfloat16"}}],
        deployment={"runtime": "torch", "batch_size": 8},
        metric="mrr",
        drops={"mrr": DROP},
        drops_by_set={"eval": {"mrr": DROP}, "extra": {"mrr": OTHER}},
        violation=0.008,
        speed={"batch_size": 8},
        same_as=None,
    )
    m.save(new)
    assert set(new.user_attrs) == {ATTR} and Measurement.of(new) == m
    # what costopt stored before the record: one user attribute per part
    for k, v in {
        "passes": m.passes,
        "deployment": m.deployment,
        "drop": STORED,
        "drops": {"mrr": STORED},
        "drops_by_set": {"eval": STORED, "extra": STORED_OTHER},
        "constraint": [0.008],
        "speed": {"input_tokens_per_s": 1.0},
        "speed_detail": {"batch_size": 8},
        "repeat": True,
    }.items():
        old.set_user_attr(k, v)
    legacy = Measurement.of(old)
    assert legacy.metric == "mrr" and legacy.violation == 0.008 and legacy.speed == {"batch_size": 8} and legacy.repeat
    assert legacy.drops_by_set == m.drops_by_set and legacy.passes == m.passes


def test_a_run_result_of_either_schema_gives_its_candidate():
    c = Measurement(passes=[{"name": "cast", "params": {}}], deployment={"runtime": "torch"}, metric="mrr", drops={"mrr": DROP})
    assert run_candidate({"schema": "costopt.trial/2", "candidate": c.to_json()}) == c
    v1 = {
        "schema": "costopt.trial/1",
        "passes": c.passes,
        "primary_metric": "mrr",
        "candidate": {"runtime": "torch", "quality": {"mrr": 0.5}, "speed": {"batch_size": 8}},
        "drops": {"mrr": STORED},
    }
    got = run_candidate(v1)
    assert got.runtime == "torch" and got.drop == DROP and got.quality == {"mrr": 0.5} and got.speed == {"batch_size": 8}
    assert run_candidate({"schema": "costopt.trial/2", "candidate": None}) is None


def test_a_price_is_typed_in_the_record_and_read_back_from_its_stored_dict():
    from optimizer.measure.price import Price

    stored = {
        "hardware": "aws-c7a.large",
        "hourly_usd": 0.1,
        "utilization": 0.5,
        "input_usd_per_m": 0.02,
        "output_usd_per_m": None,
        "input_kwh_per_m": 0.001,
        "output_kwh_per_m": None,
        "grid_kg_per_kwh": 0.4,
        "input_share": 1.0,
        "blended_usd_per_m": 0.02,
    }  # as records written before replicas and the note were kept
    m = Measurement.from_json({"cost": stored, "metric": "mrr"})
    assert isinstance(m.cost, Price) and m.cost.blended_usd_per_m == 0.02 and m.cost.replicas == 1
    again = Measurement.from_json(json.loads(json.dumps(m.to_json())))
    assert again.cost == m.cost
    assert Measurement.from_json({"metric": "mrr"}).cost is None


def test_a_footprint_is_typed_in_the_record_and_read_back_from_its_stored_dict():
    from optimizer.formatting import speed_rows
    from optimizer.measure.footprint import Footprint

    stored = {"parameters": 1000, "nonzero_parameters": 900, "disk_bytes": 4096, "weight_bytes": 4000, "artifact": None}
    m = Measurement.from_json({"footprint": stored, "metric": "mrr"})  # as records written before memory_alone
    assert isinstance(m.footprint, Footprint) and m.footprint.memory_alone is None
    assert Measurement.from_json(json.loads(json.dumps(m.to_json()))).footprint == m.footprint
    speed = {"kind": "encoder", "batch_size": 8, "threads": 2, "streams": 1}
    rows = speed_rows({"speed": speed, "footprint": m.footprint})
    assert rows["parameters"] == "1,000" and rows["non-zero parameters"] == "900"
    assert speed_rows({"speed": speed, "footprint": stored}) == rows  # a stored result's dict reads the same
    assert speed_rows({"speed": speed})["parameters"] == "–"
