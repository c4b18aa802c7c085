"""Hardware as a search dimension: each worker prices its own machine (from the catalog, by fingerprint
or named on the command line) against its own baseline; the report compares the machines."""

from __future__ import annotations

import optuna
import pytest

import cost
from optimizer.errors import UserError
from optimizer.measurement import Measurement
from optimizer.recipe import load_recipe

XEON_AMX = {"model": "Intel(R) Xeon(R) Processor", "arch": "x86_64", "logical_cores": 2, "isa": ["AMX-INT8", "AVX-512"]}


@pytest.mark.parametrize(
    "cpu, gpus, entry",
    [
        (XEON_AMX, [], "aws-c7i.large"),
        (XEON_AMX | {"logical_cores": 4}, [], "aws-c7i.xlarge"),  # cheaper than gcp-c3-standard-4, which also fits
        (
            {"model": "AMD EPYC 9R14 96-Core Processor", "arch": "x86_64", "logical_cores": 2, "isa": ["AVX-512"]},
            [],
            "aws-c7a.large",
        ),
        ({"model": "AMD EPYC 7B13", "arch": "x86_64", "logical_cores": 2, "isa": ["AVX2"]}, [], "gcp-n2d-standard-2"),
        ({}, ["NVIDIA H100 80GB HBM3"], "lambda-h100-sxm"),  # one GPU: not the 8-GPU instance
        ({}, ["NVIDIA A100-SXM4-40GB"], "gcp-a2-highgpu-1g"),
        ({}, ["NVIDIA L4"], "gcp-g2-standard-4"),
    ],
)
def test_the_catalog_entry_of_a_machine_comes_from_its_fingerprint(cpu, gpus, entry):
    found, others = cost.load_catalog().for_machine(cpu, gpus)
    assert found is not None and found.name == entry
    assert all(cost.load_catalog().get(o).hourly_usd() >= found.hourly_usd() for o in others)


def test_auto_catalog_resolves_where_the_command_runs_and_refuses_an_unknown_machine(write_recipe, tiny_bert_dir, monkeypatch):
    from optimizer import chain

    recipe = load_recipe(
        write_recipe(
            {
                "name": "auto",
                "model": {"source": str(tiny_bert_dir)},
                "task": "embedding",
                "data": {"eval": {"source": "stdlib-docs"}},
                "hardware": {"catalog": "auto"},
            }
        )
    )
    monkeypatch.setattr(chain, "fingerprint", lambda: {"cpu": XEON_AMX, "gpus": []})
    assert chain.priced_here(recipe).hardware.catalog == "aws-c7i.large"
    monkeypatch.setattr(chain, "fingerprint", lambda: {"cpu": {"model": "Mystery CPU", "logical_cores": 3}, "gpus": []})
    with pytest.raises(UserError, match="auto found no catalog entry for this machine") as e:
        chain.priced_here(recipe)
    assert "--set hardware.catalog=" in e.value.fix
    # an AVX2 EPYC with a core count no entry has: the one-line error names the nearest entries, its family's first
    avx2_epyc = {"model": "AMD EPYC", "arch": "x86_64", "logical_cores": 6, "isa": ["AVX2", "FMA"]}
    monkeypatch.setattr(chain, "fingerprint", lambda: {"cpu": avx2_epyc, "gpus": []})
    with pytest.raises(UserError, match=r"AMD EPYC, Milan, 6 logical cores\); nearest: azure-d4as-v5 \(Milan, 4 vCPU\), gcp-n2d"):
        chain.priced_here(recipe)


def test_every_packaged_cpu_entry_declares_its_family_and_an_isa_the_fingerprint_names():
    from cost.catalog import CPU_FAMILIES
    from optimizer.measure.system import ISA_FLAGS

    cpus = [e for e in cost.load_catalog().entries.values() if e.kind == "cpu"]
    assert cpus and all(e.family in {f for _, f, _ in CPU_FAMILIES} for e in cpus)
    assert all(e.isa and set(e.isa) <= set(ISA_FLAGS.values()) for e in cpus)


def test_two_workers_on_different_machines_each_price_their_own_trials(search_recipe, tiny_bert_dir, tmp_path, monkeypatch):
    """One study, two workers declaring different catalog entries (as `costopt search --set
    hardware.catalog=...` on two machines does): each trial is priced on its worker's entry against
    that worker's baseline, and the report has one row per machine."""
    from optimizer import study as study_mod
    from optimizer.cli import main
    from optimizer.study import WORKER_PREFIX, machines, run_search

    path = search_recipe(
        tiny_bert_dir,
        [{"name": "prune-magnitude", "sparsity": {"choice": [0.02, 0.05, 0.1, 0.2]}}],
        name="machines",
        confirm={"share": 0},
        trials=2,
    )
    catalog = cost.load_catalog()
    entries = {name: catalog.get(name).hourly_usd() for name in ("aws-c7a.large", "aws-c7i.large")}
    for i, entry in enumerate(entries):
        monkeypatch.setattr(study_mod, "worker_id", lambda i=i: f"machine-{i}:1")  # two hosts, one process here
        run_search(load_recipe(path, [f"hardware.catalog={entry}"]), trials=2 * (i + 1))
    study = optuna.load_study(study_name="machines", storage=f"sqlite:///{tmp_path / 'runs' / 'machines' / 'study.db'}")
    assert machines(study) == sorted(entries)
    workers = [v for k, v in study.user_attrs.items() if k.startswith(WORKER_PREFIX)]
    base = {w["catalog"]: w["baseline_objective"] for w in workers}
    assert sorted(base) == sorted(entries)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4
    for t in done:
        m = Measurement.of(t)
        entry = m.hardware["catalog"]
        assert m.cost.hardware == entry
        assert m.cost.hourly_usd == pytest.approx(entries[entry])
        assert m.baseline_objective == base[entry]  # its own worker's baseline
    assert main(["report", str(tmp_path / "runs" / "machines"), "--format", "md,json", "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## By machine" in md
    rows = [line for line in md.splitlines() if line.startswith("| aws-c7")]
    assert {r.split("|")[1].strip() for r in rows} == set(entries)
