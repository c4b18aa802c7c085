"""`costopt report` built from real small runs and searches: the figures it states, its three formats,
the 'nothing feasible' advice, and the HTML page rendered in headless Chromium."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cost.workload import DAYS_PER_MONTH
from optimizer.cli import main
from optimizer.measure.stats import Drop
from optimizer.measure.width_check import WidthCheck
from optimizer.recipe import load_recipe
from optimizer.report import build_report, open_source, write_report
from optimizer.study import run_search

WORKLOAD = {"input_tokens_per_day": 5e7, "output_tokens_per_day": 1e7}


def _run_recipe(model_dir: Path, task: str, tmp_path: Path, passes: list, **extra) -> dict:
    return {
        "name": f"rep-{task}",
        "model": {"source": str(model_dir)},
        "task": task,
        "data": {"eval": {"source": "stdlib-docs", "limit": 40}},
        "speed": {"batch_size": 4, "texts": 16, "warmup": 1, "repeats": 3, "prompt_tokens": 16, "new_tokens": 4},
        "hardware": {"threads": 1, "catalog": "aws-c7a.large"},
        "quality": {"bootstrap": 200},
        "output_dir": str(tmp_path / "runs"),
        "passes": passes,
    } | extra


def _run(write_recipe, tmp_path: Path, recipe: dict) -> Path:
    rec = write_recipe(recipe)
    assert main(["run", str(rec), "-q"]) == 0
    [result] = (tmp_path / "runs").glob(f"{recipe['name']}-*/result.json")
    return result.parent


@pytest.fixture(scope="module")
def encoder_run(tiny_bert_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("enc")
    rec = tmp / "r.yaml"
    import yaml

    rec.write_text(
        yaml.safe_dump(
            _run_recipe(
                tiny_bert_dir, "embedding", tmp, [{"name": "cast", "dtype": "bfloat16"}], workload={"input_tokens_per_day": 2e8}
            )
        )
    )
    assert main(["run", str(rec), "-q"]) == 0
    return next((tmp / "runs").glob("rep-embedding-*"))


def test_encoder_run_report_states_the_measured_money(encoder_run, tmp_path, capsys):
    report = build_report(open_source(str(encoder_run)))
    result = json.loads((encoder_run / "result.json").read_text())
    assert report["schema"] == "costopt.report/1" and report["version"] == 1 and report["kind"] == "run"
    for part in ("baseline", "candidate"):  # a run measures each served alone, in a fresh process
        alone = result[part]["footprint"]["memory_alone"]
        assert alone["peak_rss_bytes"] > alone["libraries_rss_bytes"] > 0
    assert report["chosen"]["footprint"].memory_alone == result["candidate"]["footprint"]["memory_alone"]
    base_cost, cand_cost = result["baseline"]["cost"], result["candidate"]["cost"]
    m = report["money"]
    month = 2e8 * DAYS_PER_MONTH
    assert m["workload"]["origin"] == "recipe" and m["workload"]["input_tokens_per_month"] == pytest.approx(month)
    assert m["baseline"]["monthly_usd"] == pytest.approx(month / 1e6 * base_cost["input_usd_per_m"])
    assert m["chosen"]["monthly_usd"] == pytest.approx(month / 1e6 * cand_cost["input_usd_per_m"])
    s = m["saving"]
    assert s["monthly_usd"] == pytest.approx(m["baseline"]["monthly_usd"] - m["chosen"]["monthly_usd"])
    assert s["yearly_usd"] == pytest.approx(12 * s["monthly_usd"])
    assert s["cheaper_x"] == pytest.approx(base_cost["input_usd_per_m"] / cand_cost["input_usd_per_m"])
    assert s["job_hours"] > 0 and s["job_usd"] == pytest.approx(s["job_hours"] * base_cost["hourly_usd"])
    if s["monthly_usd"] > 0:
        assert s["break_even_days"] == pytest.approx(s["job_usd"] / (s["monthly_usd"] / DAYS_PER_MONTH))
    assert m["baseline"]["monthly_kwh"] == pytest.approx(month / 1e6 * base_cost["input_kwh_per_m"])
    assert m["baseline"]["monthly_co2_kg"] == pytest.approx(0.4 * m["baseline"]["monthly_kwh"])
    for x in (m["baseline"], m["chosen"]):  # whole machines: the busy hours rounded up, at least one
        hours = 24 * DAYS_PER_MONTH
        assert x["instances"] == max(1, math.ceil(x["monthly_usd"] / base_cost["hourly_usd"] / hours - 1e-9))
        assert x["monthly_usd_whole_instances"] == pytest.approx(x["instances"] * base_cost["hourly_usd"] * hours)
    # quality: each metric before and after, with the run's own drops
    by_metric = {q["metric"]: q for q in report["quality"]}
    assert set(by_metric) == set(result["baseline"]["quality"])
    assert by_metric["mrr"]["chosen"] == pytest.approx(result["candidate"]["quality"]["mrr"])
    assert by_metric["mrr"]["drop"] == Drop.from_json(result["candidate"]["drops"]["mrr"]) and by_metric["mrr"]["constrained"]
    assert report["chosen"]["footprint"].weight_bytes < report["baseline"]["footprint"].weight_bytes

    paths = write_report(report, tmp_path)
    md = paths["md"].read_text()
    for text in (
        "## Cost",
        "## Quality",
        "## Speed and footprint",
        "## Deployment",
        "## The candidate",
        "## Hardware and software",
        "$/1M input",
        "kg CO2/month",
        "whole instances · per month",
        "encode tokens/s",
        "batch latency p50 / p95 / p99",
        "weights on disk",
        "mrr (budget)",
    ):
        assert text in md, text
    assert "![Cost against quality drop" in md and (tmp_path / "report-cost-vs-drop.svg").read_text().startswith("<svg")
    assert json.loads(paths["json"].read_text())["money"]["saving"]["monthly_usd"] == pytest.approx(s["monthly_usd"])
    # the command line: default output beside the run, a command-line workload replacing the recipe's
    assert main(["report", str(encoder_run), "--workload", "input_tokens_per_day=1e6", "--format", "json"]) == 0
    cli = json.loads((encoder_run / "report.json").read_text())
    assert cli["money"]["workload"]["origin"] == "command line"
    assert cli["money"]["baseline"]["monthly_usd"] == pytest.approx(1e6 * DAYS_PER_MONTH / 1e6 * base_cost["input_usd_per_m"])
    assert "cheaper" in capsys.readouterr().out


def test_causal_lm_run_report_prices_input_and_output_apart(tiny_llama_dir, write_recipe, tmp_path):
    run = _run(
        write_recipe,
        tmp_path,
        _run_recipe(tiny_llama_dir, "causal-lm", tmp_path, [{"name": "cast", "dtype": "bfloat16"}], workload=WORKLOAD),
    )
    report = build_report(open_source(str(run / "result.json")), grid=0.1)
    m = report["money"]
    i, o = (WORKLOAD["input_tokens_per_day"] * DAYS_PER_MONTH, WORKLOAD["output_tokens_per_day"] * DAYS_PER_MONTH)
    b = m["baseline"]
    assert b["output_usd_per_m"] is not None and b["output_usd_per_m"] > b["input_usd_per_m"]  # decode is slower
    assert b["monthly_usd"] == pytest.approx(i / 1e6 * b["input_usd_per_m"] + o / 1e6 * b["output_usd_per_m"])
    assert b["monthly_co2_kg"] == pytest.approx(0.1 * b["monthly_kwh"])
    md = write_report(report, tmp_path / "rep", ["md"])["md"].read_text()
    for text in (
        "prefill tokens/s",
        "decode tokens/s",
        "time to first token",
        "per-token latency p50 / p95 / p99",
        "perplexity",
        "$/1M output",
        "decode / memory-bandwidth bound (aws-c7a.large)",
        "prefill / compute bound (aws-c7a.large)",
    ):
        assert text in md, text
    assert not (tmp_path / "rep" / "report.html").exists()  # only the asked-for format
    # the roofline: shares of the bounds on the priced entry, at the arithmetic of each chain
    result = json.loads((run / "result.json").read_text())
    base, cand = result["baseline"]["speed"]["roofline"], result["candidate"]["speed"]["roofline"]
    assert base["compute_dtype"] == "fp32" and cand["compute_dtype"] == "bf16"
    for r, sp in ((base, result["baseline"]["speed"]), (cand, result["candidate"]["speed"])):
        assert r["decode_fraction"] == pytest.approx(sp["output_tokens_per_s"]["median"] / r["decode_bound_tokens_per_s"])
        assert 0 < r["decode_fraction"] < 1 and 0 < r["prefill_fraction"] < 1
        assert r["flags"]  # a 10k-parameter model is far from every bound: the engine's overhead dominates


def _search_recipe(write_recipe, model_dir, tmp_path, passes, constraint, trials=3, **search):
    return load_recipe(
        write_recipe(
            {
                "name": "rep-search",
                "model": {"source": str(model_dir)},
                "task": "embedding",
                "data": {"eval": {"source": "stdlib-docs", "limit": 60}},
                "quality": {"metrics": ["mrr", "fidelity"], "bootstrap": 200},
                "speed": {"memory_alone": False, "batch_size": 8, "texts": 16, "warmup": 0, "repeats": 2},
                "hardware": {"threads": 1, "catalog": "aws-c7a.large"},
                "workload": {"input_tokens_per_day": 1e8},
                "output_dir": str(tmp_path / "runs"),
                "search": {"trials": trials, "constraint": constraint, "seed": 0, "screen_examples": None} | search,
                "passes": passes,
            }
        )
    )


@pytest.fixture(scope="module")
def feasible_search(tiny_bert_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    import yaml

    def write(content):
        p = tmp / "search.yaml"
        p.write_text(yaml.safe_dump(content))
        return p

    passes = [
        {"name": "cast", "enabled": {"choice": [True, False]}, "dtype": {"choice": ["bfloat16"]}},
        {"name": "prune-magnitude", "enabled": {"choice": [True, False]}, "sparsity": {"choice": [0.2, 0.95]}},
    ]
    recipe = _search_recipe(
        write, tiny_bert_dir, tmp, passes, {"metric": "fidelity", "max_drop": 0.05}, trials=6, sampler="random"
    )
    run_search(recipe)
    return tmp, recipe


def test_search_report_chooses_the_cheapest_feasible_trial_and_lists_every_trial(feasible_search, tmp_path):
    folder, recipe = feasible_search
    from optimizer.study import best_feasible

    src = open_source(str(folder / "runs" / "rep-search"))
    report = build_report(src)
    best = best_feasible(src.study)
    assert report["kind"] == "search" and len(report["trials"]) == len(src.study.trials)
    measured = [e for e in report["trials"] if e["state"] == "ok" and e["same_as"] is None]
    assert len(measured) == 5  # every configuration of the space except the baseline itself, each measured once
    assert report["chosen"]["trial"] == best.number and report["met"]
    assert report["chosen"]["usd_per_m"] == pytest.approx(best.values[0])
    feasible = [e for e in report["trials"] if e["feasible"]]
    assert min(e["usd_per_m"] for e in feasible) == pytest.approx(report["chosen"]["usd_per_m"])
    assert report["baseline"]["footprint"].parameters > 0  # the study recorded the baseline's footprint
    assert report["system"] and report["system"][0]["libraries"]["torch"] and report["workers"]
    assert report["money"]["saving"]["job_hours"] > 0
    # the Pareto front: no flagged configuration is beaten on both drop and cost by another
    pts = [(e["drop"].relative, e["usd_per_m"]) for e in [report["baseline"], *report["trials"]] if e["pareto"]]
    assert pts and all(not (x2 <= x and y2 <= y and (x2, y2) != (x, y)) for x, y in pts for x2, y2 in pts)
    fams = {f["family"] for f in report["families"]}
    assert fams <= {"quantization", "pruning", "pruning + quantization", "baseline"} and fams
    paths = write_report(report, tmp_path)
    html = paths["html"].read_text()
    assert html.count('<figure class="chart"') == 2 and html.count("<svg") >= 2
    # self-contained: nothing is fetched (SVG namespace URIs are names, not requests)
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html) and "<link" not in html and "<script" not in html
    assert f"trial {best.number}" in html and "Every trial" in html


def test_nothing_feasible_report_names_the_closest_and_what_to_try(write_recipe, tiny_bert_dir, tmp_path, capsys):
    passes = [{"name": "prune-magnitude", "sparsity": {"choice": [0.6, 0.8, 0.95]}}]
    recipe = _search_recipe(
        write_recipe, tiny_bert_dir, tmp_path, passes, {"metric": "fidelity", "max_drop": 1e-6}, sampler="grid"
    )
    run_search(recipe)
    rec_file = tmp_path / "recipe.yaml"
    assert main(["report", str(rec_file), "--out", str(tmp_path / "rep")]) == 0  # the recipe finds its study
    out = capsys.readouterr().out
    assert "No configuration met the budget" in out
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["chosen"] is None and not report["met"] and report["verdict"] == "nothing met the budget"
    closest = min((e for e in report["trials"] if e["violation"] is not None), key=lambda e: e["violation"])
    assert report["closest"]["trial"] == closest["trial"]
    tips = report["advice"]["suggestions"]
    assert tips[0].startswith(f"Closest: trial {closest['trial']}")
    # a looser budget is offered only where it buys something cheaper than the baseline (speed decides that)
    cheaper = [e for e in report["trials"] if e["objective"] < report["baseline"]["objective"]]
    looser = [t for t in tips if t.startswith("A looser budget: max_drop")]
    assert bool(looser) == bool(cheaper)
    if cheaper:
        cheapest = min(cheaper, key=lambda e: e["objective"])
        assert any(cheapest["label"] in t for t in looser)
    assert any("All 3 configurations of the space were tried" in t for t in tips)  # grid of 3: more trials cannot help
    assert any(t.startswith("Not tried:") and "quantization" in t for t in tips)
    assert "closest" in report["money"] and "saving" not in report["money"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## What to try" in md and "**No configuration met the budget**" in md and "## Deployment" not in md


def test_report_input_mistakes_are_one_line_exit_2(tmp_path, encoder_run, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "neither result.json nor study.db" in capsys.readouterr().err
    assert main(["report", str(encoder_run), "--workload", "tokens=5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--workload" in err and "input_tokens_per_day" in err
    assert main(["report", str(encoder_run), "--format", "pdf"]) == 2
    assert "unknown report format 'pdf'" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["report", str(bad)]) == 2
    assert "not a costopt run result" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (Debian package `chromium`)")
def test_html_report_renders_its_charts_in_headless_chromium(feasible_search, tmp_path):
    from PIL import Image

    from optimizer.report import plots

    folder, _ = feasible_search
    html = write_report(build_report(open_source(str(folder / "runs" / "rep-search"))), tmp_path, ["html"])["html"]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,4000",
            f"--screenshot={shot}",
            html.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    im = Image.open(shot).convert("RGB")
    pixels = list(im.getdata())

    def count(hex_colour: str, tol: int = 12) -> int:
        r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
        return sum(1 for p in pixels if abs(p[0] - r) <= tol and abs(p[1] - g) <= tol and abs(p[2] - b) <= tol)

    # each chart drew its marks: the chosen star and budget band (chart 1), the family bars (chart 2)
    assert count(plots.CHOSEN) > 60, "the chosen point was not drawn"
    assert count(plots.BUDGET_FILL) > 2000, "the budget region was not drawn"
    assert count(plots.BAR) + count(plots.BAR_OVER) > 500, "the family bars were not drawn"


def test_reports_carry_provenance_command_version_hashes_and_price_source(encoder_run, feasible_search):
    folder, _ = feasible_search
    for report in (build_report(open_source(str(encoder_run))), build_report(open_source(str(folder / "runs" / "rep-search")))):
        p = report["provenance"]
        assert p["command"] and p["costopt"] and len(p["recipe_sha256"]) == 16 and len(p["eval_sha256"]) == 16
        assert p["eval_examples"] > 0
        assert p["price"]["entry"] == "aws-c7a.large" and p["price"]["source"].startswith("https://")
        assert p["price"]["as_of"]
        from optimizer.report.document import build_document
        from optimizer.report.render import to_markdown

        md = to_markdown(build_document(report, {}))
        assert "## Provenance" in md and p["recipe_sha256"] in md


def test_a_trial_with_a_width_defect_is_never_the_reports_winner(feasible_search):
    """One feasibility rule (the record's): the search rejects a configuration with a defect at some input
    width, so the report may not mark it within budget nor headline it, however cheap it is."""
    from optimizer.measurement import ATTR, Measurement

    folder, _ = feasible_search
    src = open_source(str(folder / "runs" / "rep-search"))
    winner = build_report(src)["chosen"]["trial"]

    def with_defect(t, attrs):
        if t.number == winner:
            m = Measurement.of(t)
            m.widths = WidthCheck([31, 32, 33], [0.01, 0.48, 0.01], [{"width": 32, "error": 0.48, "neighbours": 0.01}], 1.0)
            attrs[ATTR] = m.to_json()

    report = build_report(_edited_copy(src, with_defect))
    entry = next(e for e in report["trials"] if e["trial"] == winner)
    assert entry["feasible"] is False
    assert report["chosen"] is not None and report["chosen"]["trial"] != winner
    assert all(f["trial"] != winner for f in report["families"] if f["feasible"])


def _edited_copy(src, edit_trial=None, study_attrs=None):
    """An in-memory copy of a finished study, its trials' attributes edited by `edit_trial(trial, attrs)`."""
    import optuna

    from optimizer.report.sources import StudySource

    copy = optuna.create_study(directions=src.study.directions)
    for key, value in (src.study.user_attrs | (study_attrs or {})).items():
        copy.set_user_attr(key, value)
    for t in src.study.trials:
        attrs = dict(t.user_attrs)
        if edit_trial is not None:
            edit_trial(t, attrs)
        copy.add_trial(
            optuna.trial.create_trial(
                state=t.state,
                params=t.params,
                distributions=t.distributions,
                values=t.values,
                user_attrs=attrs,
                system_attrs=t.system_attrs,
                intermediate_values=t.intermediate_values,
            )  # fmt: skip
        )
    return StudySource(src.location, None, copy, src.recipe)


def test_the_headline_is_one_confirmed_saving_and_the_money_follows_from_it(feasible_search, tmp_path):
    """Against the baseline at its best batch, with its interval, first; the search's own figure and the
    saving against the recipe's batch below it; every dollar and the break-even from the headline's ratio."""
    folder, _ = feasible_search
    src = open_source(str(folder / "runs" / "rep-search"))
    winner = build_report(src)["chosen"]["trial"]
    confirmation = {
        "budget": {}, "objective": "cost", "selection_examples": 10, "confirmation_examples": 10,
        "confidence_each": 0.95, "chosen": winner, "rounds": [], "rounds_set_aside": 0, "serving": {},
        "memory_alone": {}, "machine": None,
        "attempts": [{"trial": winner, "passes": [], "deployment": {}, "selection_drop": {}, "drop": None,
                      "drops": {}, "quality": {}, "quality_batches": "", "widths": None, "confirmed": True}],
        "savings": [
            {"against": "baseline at batch 32", "ratio": {"median": 2.13, "low": 1.37, "high": 3.1},
             "baseline_value": 2.13, "choice_value": 1.0, "established": True, "why": "established over 7 rounds"},
            {"against": "baseline at its best batch (16)", "ratio": {"median": 1.15, "low": 1.03, "high": 1.31},
             "baseline_value": 1.15, "choice_value": 1.0, "established": True, "why": "established over 7 rounds"},
        ],
    }  # fmt: skip
    report = build_report(_edited_copy(src, None, {"confirmation": confirmation}))
    m = report["money"]
    s, chosen_month = m["saving"], m["chosen"]["monthly_usd"]
    assert s["confirmed"] and s["against"].startswith("baseline at its best batch (16)")
    assert (s["cheaper_x"], s["cheaper_low"], s["cheaper_high"]) == (1.15, 1.03, 1.31)
    assert s["monthly_usd"] == pytest.approx(0.15 * chosen_month)
    assert (s["monthly_low"], s["monthly_high"]) == (pytest.approx(0.03 * chosen_month), pytest.approx(0.31 * chosen_month))
    assert s["yearly_usd"] == pytest.approx(12 * s["monthly_usd"]) and s["yearly_low"] == pytest.approx(12 * s["monthly_low"])
    assert s["break_even_days"] == pytest.approx(s["job_usd"] / (s["monthly_usd"] / DAYS_PER_MONTH))
    assert s["break_even_low"] < s["break_even_days"] < s["break_even_high"]
    md = write_report(report, tmp_path, ["md"])["md"].read_text()
    first = next(line for line in md.splitlines() if "cheaper" in line)
    assert "**1.15x [1.03, 1.31] cheaper** than the baseline at its best batch (16)" in first and "2.13" not in first
    assert md.index("1.15x [1.03, 1.31]") < md.index("2.13x [1.37, 3.10]")  # the rest is detail, below


def test_a_search_report_is_written_without_loading_torch_or_the_measuring_side(feasible_search, tmp_path):
    """`costopt report` reads the record only: in a fresh interpreter it never imports torch, a runtime,
    the bench, the chain builder, the run or the search runner."""
    import sys

    folder, _ = feasible_search
    code = (
        "import sys; from optimizer.cli import main; rc = main(['report', sys.argv[1], '--out', sys.argv[2]]); "
        "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('optimizer.runtimes', 'optimizer.bench', "
        "'optimizer.chain', 'optimizer.serving', 'optimizer.run_record', 'optimizer.study', 'optimizer.measure.speed'))); print('loaded:', heavy); sys.exit(rc)"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(folder / "runs" / "rep-search"), str(tmp_path)], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    assert "loaded: []" in p.stdout, p.stdout
    assert (tmp_path / "report.md").is_file() and (tmp_path / "report.json").is_file()


def test_the_report_states_the_serving_setting_the_confirmation_deployed():
    """The paired rounds may serve the choice at another batch size or number of streams than its trial:
    the report's chosen configuration and deployment say what deploy.yaml serves."""
    from optimizer.report.build import _deployed

    chosen = {"trial": 1, "passes": [{"name": "ov-export"}], "chain": "ov-export()", "batch_size": 8, "threads": 2, "streams": 1}
    searched = {"batch_size": 8, "streams": 1, "threads": 2, "trial": 1}
    conf = {
        "attempts": [{"trial": 1, "passes": chosen["passes"]}],
        "serving": {"searched": searched, "served": searched | {"streams": 2}},
    }
    assert _deployed(chosen, conf) == chosen | {"streams": 2}
    # a near-tie's trial that won the rounds is another entry: its setting is not put on this one
    conf["serving"]["served"] = searched | {"trial": 5, "batch_size": 16}
    assert _deployed(chosen, conf) == chosen
    assert _deployed(chosen, None) == chosen


def test_a_confirmed_near_tie_the_time_budget_left_untimed_is_not_said_to_be_slower():
    from optimizer.report.document import _confirmation_lines

    drop = {"metric": "mrr", "baseline": 0.4, "candidate": 0.4, "drop": 0.0, "low": -0.002, "high": 0.002}
    drop |= {"relative": 0.0, "relative_low": -0.005, "relative_high": 0.005, "confidence": 0.98, "n": 838}
    tie = {"trial": 2, "passes": [], "confirmed": True, "drop": drop}
    conf = {
        "chosen": 5,
        "attempts": [tie],
        "savings": [],
        "serving": {"options": [{"batch_size": 8, "streams": 1, "threads": 2, "trial": 5}]},
    }
    r = {"budget": {"relative": True, "metric": "mrr"}, "confirmation": conf}
    assert "not timed against it: the time budget left no room" in " ".join(_confirmation_lines(r))
    conf["serving"]["options"].append({"batch_size": 8, "streams": 1, "threads": 2, "trial": 2})
    assert "timed in the same rounds (serving, above): it was not shown cheaper" in " ".join(_confirmation_lines(r))
