"""cost/: formulas against hand-computed values, units, catalog validation, overrides, bad inputs."""

from __future__ import annotations

import math

import pytest
import yaml

import cost
from cost.catalog import HOURS_PER_YEAR
from cost.errors import CostInputError
from optimizer.cli import main


@pytest.fixture(scope="module")
def cat():
    return cost.load_catalog()


def test_every_price_has_source_and_date(cat):
    kinds = {e.kind for e in cat.entries.values()}
    providers = {e.provider for e in cat.entries.values() if e.kind == "cpu"}
    assert kinds == {"cpu", "gpu"} and len(providers) >= 2
    for e in cat.entries.values():
        assert e.price.source.startswith("https://") and e.price.as_of[:4].isdigit(), e.name
        assert e.peak_tflops and e.peak_source and e.watts > 0
    gpus = {e.gpu for e in cat.entries.values() if e.gpu}
    assert {"T4", "L4", "A10G", "L40S", "A100-40GB", "A100-80GB", "H100", "H200", "RTX4090"} <= gpus


def test_usd_and_energy_per_million():
    assert cost.usd_per_million(1000, 3.6) == pytest.approx(1.0)  # 3.6 $/h / 3.6M tokens/h
    assert cost.usd_per_million(1000, 3.6, utilization=0.5) == pytest.approx(2.0)
    assert cost.kwh_per_million(1000, 360) == pytest.approx(0.1)  # 0.36 kW x 0.2778 h


def test_token_price_blended_and_co2(cat):
    e = cat.get("lambda-h100-sxm")  # $2.99/h, 700 W
    p = cost.token_price(e, input_tps=10_000, output_tps=1_000, utilization=1.0, grid_kg_per_kwh=0.5)
    assert p.input_usd_per_m == pytest.approx(2.99 / 36)
    assert p.output_usd_per_m == pytest.approx(2.99 / 3.6)
    assert p.blended_usd_per_m(0.75) == pytest.approx(0.75 * 2.99 / 36 + 0.25 * 2.99 / 3.6)
    assert p.co2_kg_per_m("output") == pytest.approx(0.7 / 3.6 * 0.5)
    with pytest.raises(CostInputError):
        p.blended_usd_per_m(1.5)


def test_workload_monthly_saving_break_even(cat):
    w = cost.Workload(requests_per_day=1000, input_tokens_per_request=500, output_tokens_per_request=100)
    assert w.per_day() == (500_000, 100_000) and w.input_share == pytest.approx(5 / 6)
    days = 365.25 / 12
    assert w.per_month()[0] == pytest.approx(500_000 * days)
    e = cat.get("aws-g6.xlarge")
    # tokens/s chosen so prices are round: $0.8048/h / (x * 3600) * 1e6
    base = cost.token_price(e, 0.8048e6 / 3600 / 2, 0.8048e6 / 3600 / 4)  # $2/M in, $4/M out
    fast = cost.token_price(e, 0.8048e6 / 3600, 0.8048e6 / 3600 / 2)  # $1/M in, $2/M out
    assert base.input_usd_per_m == pytest.approx(2) and fast.output_usd_per_m == pytest.approx(2)
    assert cost.monthly_cost(base, w) == pytest.approx(days * (0.5 * 2 + 0.1 * 4))
    s = cost.saving(base, fast, w, optimization_hours=10, optimization_hourly_usd=0.7)
    per_day = 0.5 * 1 + 0.1 * 2
    assert s.monthly_usd == pytest.approx(per_day * days) and s.yearly_usd == pytest.approx(12 * per_day * days)
    assert s.break_even_days == pytest.approx(7.0 / per_day) and s.ratio == pytest.approx(2.0)
    assert cost.saving(fast, base, w).break_even_days is None  # slower never pays back
    assert cost.Workload(input_tokens_per_month=days * 10).per_day() == pytest.approx((10, 0))
    with pytest.raises(ValueError):
        cost.Workload(input_tokens_per_day=1, requests_per_day=2, input_tokens_per_request=1)


def test_whole_instances_round_the_busy_machine_time_up(cat):
    e = cat.get("aws-g6.xlarge")  # $0.8048/h
    hours = 24 * 365.25 / 12
    p = cost.token_price(e, input_tps=1000, output_tps=100, utilization=0.5)
    # 1000 in + 100 out tokens/s at 50% utilization: 1 s + 1 s of machine time per (1000 in, 100 out) at 50%
    w = cost.Workload(input_tokens_per_day=1000 * 86400 * 0.6, output_tokens_per_day=100 * 86400 * 0.6)
    busy = cost.monthly_cost(p, w) / 0.8048  # machine-hours the prices pay for
    assert busy == pytest.approx(hours * (0.6 + 0.6) / 0.5)  # 2.4 machines' worth
    n, usd = cost.whole_instances(p, w)
    assert n == 3 and usd == pytest.approx(3 * 0.8048 * hours)
    assert usd > cost.monthly_cost(p, w)  # whole machines cost more than the fraction the prices assume
    assert cost.whole_instances(p, cost.Workload(input_tokens_per_day=1))[0] == 1  # any traffic needs one
    exact = cost.Workload(input_tokens_per_day=1000 * 86400 * 0.5)  # exactly one machine busy 50% of the time
    assert cost.whole_instances(p, exact)[0] == 1


def test_training_plan_gpt3_on_a100(cat):
    p = cost.accelerators_to_train(175e9, 300e9, 30, cat.get("lambda-a100-80gb"), 0.462)
    assert p.flops == pytest.approx(3.15e23)
    assert p.exact_devices == pytest.approx(3.15e23 / (312e12 * 0.462 * 30 * 86400))
    assert p.devices == 844
    node = cost.accelerators_to_train(175e9, 300e9, 30, cat.get("aws-p5.48xlarge"), 0.4)
    assert node.instances == math.ceil(node.devices / 8)


def test_flops_per_token_and_serving(cat):
    assert cost.serve_flops_per_token(7e9) == 14e9 and cost.train_flops_per_token(7e9) == 42e9
    assert cost.serve_flops_per_token(1e9, layers=10, context=1000, d_model=100) == 2e9 + 2e6
    p = cost.accelerators_to_serve(1e9, 14e9, cat.get("gcp-g2-standard-4"), 0.3)
    assert p.exact_devices == pytest.approx(1e9 * 14e9 / 86400 / (121e12 * 0.3)) and p.devices == 5


def test_roofline_kv_and_fit(cat):
    h100 = cat.get("lambda-h100-sxm")
    r = cost.roofline(7e9, h100, "bf16", "bf16")
    assert r.decode_tokens_per_s_batch1 == pytest.approx(3350e9 / 14e9)
    assert r.prefill_tokens_per_s == pytest.approx(989e12 / 14e9)
    assert cost.roofline(7e9, h100, "int4").decode_tokens_per_s_batch1 == pytest.approx(4 * r.decode_tokens_per_s_batch1)
    kv = cost.kv_cache_bytes(32, 8, 128, 4096, 1, "bf16")
    assert kv == 2 * 32 * 8 * 128 * 4096 * 2
    f = cost.memory_fit(8e9, cat.get("aws-g6.xlarge"), "bf16", kv)
    assert f.fits and f.weights_bytes == 16e9 and f.total_bytes == pytest.approx((16e9 + kv + 1.6e9) * 1.1)
    assert not cost.memory_fit(70e9, cat.get("aws-g6.xlarge"), "bf16").fits
    assert cost.memory_fit(70e9, cat.get("runpod-h200-sxm"), "int8").fits


def test_owned_machine_and_user_catalog(tmp_path):
    user = {
        "entries": [
            {
                "name": "my-4090-box",
                "kind": "gpu",
                "provider": "owned",
                "gpu": "RTX4090",
                "gpus": 1,
                "memory_gb": 24,
                "memory_bandwidth_gbs": 1008,
                "watts": 450,
                "peak_tflops": {"bf16": 165},
                "owned": {"purchase_usd": 2000, "lifetime_years": 3, "electricity_usd_per_kwh": 0.30, "utilization": 0.5},
            },
            {
                "name": "aws-c7a.large",
                "kind": "cpu",
                "provider": "aws",
                "memory_gb": 4,
                "memory_bandwidth_gbs": 12,
                "watts": 20,
                "peak_tflops": {"fp32": 0.23},
                "price": {"on_demand": 0.05, "source": "https://example.com/negotiated", "as_of": "2026-11"},
            },
        ]
    }
    f = tmp_path / "mine.yaml"
    f.write_text(yaml.safe_dump(user))
    cat = cost.load_catalog(f)
    own = cat.get("my-4090-box")
    assert own.hourly_usd() == pytest.approx((2000 / (3 * HOURS_PER_YEAR) + 0.45 * 0.30) / 0.5)
    assert cat.get("aws-c7a.large").hourly_usd() == 0.05  # user entry replaces the packaged one
    assert "lambda-h100-sxm" in cat.entries  # the rest stays


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"price": None}, "exactly one of price"),
        ({"price": {"on_demand": 1, "source": "https://x", "as_of": "last year"}}, "as_of"),
        ({"price": {"on_demand": -1, "source": "https://x", "as_of": "2025-01"}}, "on_demand"),
        ({"watts": 0}, "watts"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_catalog_validation(tmp_path, bad, message):
    entry = {
        "name": "x",
        "kind": "cpu",
        "provider": "p",
        "memory_gb": 1,
        "memory_bandwidth_gbs": 1,
        "watts": 1,
        "peak_tflops": {"fp32": 1},
        "price": {"on_demand": 1, "source": "https://x", "as_of": "2025-01"},
    }
    entry.update(bad)
    entry = {k: v for k, v in entry.items() if v is not None}
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"entries": [entry]}))
    with pytest.raises(CostInputError, match=message):
        cost.load_catalog(f)


def test_bad_inputs_are_one_line_errors(cat):
    e = cat.get("aws-c7a.large")
    for tps in (0, -5):
        with pytest.raises(CostInputError, match="must be positive"):
            cost.token_price(e, tps)
    for u in (0, 1.5, -0.1):
        with pytest.raises(CostInputError, match=r"utilization must be in \(0, 1\]"):
            cost.token_price(e, 100, utilization=u)
    with pytest.raises(CostInputError, match="did you mean"):
        cat.get("c7a.large")
    with pytest.raises(CostInputError, match="MFU"):
        cost.accelerators_to_train(1e9, 1e9, 1, e, 1.2)
    with pytest.raises(CostInputError, match="no spot price"):
        e.hourly_usd("spot")


def test_cost_cli(capsys):
    assert (
        main(
            [
                "cost",
                "plan",
                "--hardware",
                "lambda-a100-80gb",
                "--params",
                "175e9",
                "--train-tokens",
                "300e9",
                "--days",
                "30",
                "--mfu",
                "0.462",
            ]
        )
        == 0
    )
    assert "844 GPUs" in capsys.readouterr().out
    assert main(["cost", "price", "--hardware", "aws-c7a.large", "--input-tps", "5000", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["input_usd_per_m"] == pytest.approx(0.10264 / (5000 * 3600) * 1e6)
    assert main(["cost", "fit", "--hardware", "aws-g6.xlarge", "--params", "70e9"]) == 2
    err = capsys.readouterr().err
    assert "does not" not in err and "needs" in err and len(err.strip().splitlines()) == 1
    assert main(["cost", "price", "--hardware", "nope", "--input-tps", "1"]) == 2
    assert main(["cost", "price", "--hardware", "aws-c7a.large", "--input-tps", "0"]) == 2
    assert main(["hardware", "list"]) == 0
    assert "lambda-h100-sxm" in capsys.readouterr().out


def test_cost_package_imports_nothing_from_optimizer():
    import ast
    import pathlib

    for f in pathlib.Path(cost.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.startswith("optimizer") for n in names), f.name
