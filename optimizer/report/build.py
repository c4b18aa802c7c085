"""A run or a search -> the report's content as plain JSON (schema costopt.report/1).

Everything here is read from what the run or the search measured and stored; nothing is measured
again. The Markdown, HTML and plots are renderings of this dict.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from cost.workload import Workload
from optimizer.budget import Budget
from optimizer.cli_format import chain_text
from optimizer.measure.footprint import Footprint
from optimizer.measure.price import Price
from optimizer.measure.stats import Drop
from optimizer.measurement import Measurement, run_candidate
from optimizer.recipe import MAIN_EVAL, Recipe, speed_model_note
from optimizer.report import money
from optimizer.report.advice import suggestions
from optimizer.report.entries import family_best, make_entry, mark_pareto
from optimizer.report.sources import RunSource, StudySource
from optimizer.trials import WORKER_PREFIX, baseline_best_batch, counted, objective_sign

SCHEMA = "costopt.report/1"
VERSION = 1


def _baseline_entry(b: dict[str, Any], budget: dict[str, Any]) -> dict[str, Any]:
    """The uncompressed model, placed at zero drop (it is its own reference)."""
    m = budget["metric"]
    value = (b.get("quality") or {}).get(m, 0.0)
    zero = Drop(m, value, value, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, budget["confidence"], 0)
    cost = Price.maybe(b.get("cost"))
    record = Measurement(
        metric=m,
        quality=b.get("quality") or {},
        drops={m: zero},
        violation=-budget["max_drop"],
        cost=cost,
        speed=b.get("speed"),
        footprint=Footprint.maybe(b.get("footprint")),
    )
    return make_entry("baseline", record, objective=b.get("objective", cost.blended_usd_per_m if cost else None))


def _run_seconds(r: dict[str, Any]) -> float | None:
    """The run's measured stage times; per-pass entries are parts of the 'apply passes' stage."""
    stages = [v for k, v in r.get("timings", {}).items() if not k.startswith("pass ") and k != "cache hit"]
    if stages:
        return float(sum(stages))
    if r.get("started") and r.get("finished"):
        return (datetime.fromisoformat(r["finished"]) - datetime.fromisoformat(r["started"])).total_seconds()
    return None


# ----------------------------------------------------------------------------- runs
def _from_run(src: RunSource, budget: dict[str, Any]) -> dict[str, Any]:
    r = src.result
    b = r["baseline"]
    base = _baseline_entry(b, budget)
    entries = []
    c = run_candidate(r)
    if r.get("passes"):
        if c is not None and c.speed:
            c.metric = budget["metric"]  # judged on the report's budget, on the worst eval set when there are several
            rule = Budget(budget["metric"], budget["max_drop"], budget["relative"], budget["confidence"])
            c.violation = rule.worst(c.drops_by_set or {MAIN_EVAL: c.drops})[1] if c.drop else None
            entries.append(make_entry("candidate", c, objective=c.cost.blended_usd_per_m if c.cost else None))
        else:
            failed = Measurement(passes=r["passes"], error=r.get("error") or "did not finish")
            entries.append(make_entry("candidate", failed, state="failed"))
    return {
        "kind": "run",
        "name": r["recipe"],
        "source": str(src.path),
        "baseline": base,
        "entries": entries,
        "system": [r.get("system")],
        "job_seconds": _run_seconds(r),
        "job_note": "the run's stages: loading, measuring the baseline and the candidate, applying the passes, saving",
        "eval": r.get("data", {}).get("eval", {}),
        "notes": list(r.get("notes", [])),
        "objective_kind": "cost",
        "by_batch": {},
        "sign": 1,
        "started": r.get("started"),
        "finished": r.get("finished"),
    }


# ----------------------------------------------------------------------------- searches
def _from_study(src: StudySource, budget: dict[str, Any]) -> dict[str, Any]:
    import optuna

    study = src.study
    States = optuna.trial.TrialState
    attrs = study.user_attrs
    b = attrs.get("baseline", {})
    base = _baseline_entry(b, budget)
    state_names = {States.COMPLETE: "ok", States.PRUNED: "pruned", States.FAIL: "failed"}
    entries, job = [], 0.0
    # Counted trials, and repeats (answered from an earlier trial's figures; they show as such)
    trials = [t for t in study.get_trials(deepcopy=False) if counted(t) or Measurement.of(t).repeat]
    for t in trials:
        m = Measurement.of(t)
        m.metric = budget["metric"]
        wall = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_start and t.datetime_complete else None
        job += wall or 0.0
        ok = t.state == States.COMPLETE
        entries.append(
            make_entry(
                f"trial {t.number}",
                m,
                trial=t.number,
                state=state_names[t.state],
                objective=t.values[0] if ok and t.values else None,
                seconds=wall,
            )
        )
    workers = {k[len(WORKER_PREFIX) :]: v for k, v in attrs.items() if k.startswith(WORKER_PREFIX)}
    baseline_seconds = sum(w.get("baseline_seconds", 0.0) for w in workers.values()) or b.get("seconds")
    note = f"{len(trials)} trials' wall time"
    if baseline_seconds:
        job += baseline_seconds
        note += f" plus {len(workers) or 1} baseline measurement(s)"
    else:
        note += " (the baseline's measurement time was not recorded by this study's costopt version)"
    systems = [w["system"] for w in workers.values() if w.get("system")]
    if not systems and trials:  # older studies: what each trial recorded about its machine
        hw = Measurement.of(trials[0]).hardware
        systems = [{"cpu": {"model": hw.get("cpu")}, "gpus": hw.get("gpus")}]
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    return {
        "kind": "search",
        "name": study.study_name,
        "source": src.location,
        "baseline": base,
        "entries": entries,
        "system": systems,
        "job_seconds": job or None,
        "job_note": note,
        "eval": {},
        "notes": [n for n in [speed_model_note(src.recipe)] if n],
        "objective_kind": src.recipe.search.objective,
        "by_batch": b.get("by_batch") or {},
        "late_batches": b.get("late_batches") or {},
        "sign": objective_sign(study),
        "workers": sorted(workers),
        "machines": _by_machine(entries, workers.values(), objective_sign(study)),
        "confirmation": _confirmation(attrs.get("confirmation")),  # written by `costopt search` after its trials
        "started": min(starts).isoformat(timespec="seconds") if starts else None,
        "finished": max(ends).isoformat(timespec="seconds") if ends else None,
    }


def _confirmation(stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """The study's confirmation as stored, its candidates' drops read as typed figures."""
    if not stored:
        return stored
    typed = {"drop": Drop.maybe, "selection_drop": Drop.maybe}
    attempts = [
        a
        | {k: read(a.get(k)) for k, read in typed.items()}
        | {"drops_by_set": {n: Drop.from_json(d) for n, d in (a.get("drops_by_set") or {}).items()}}
        for a in stored.get("attempts", [])
    ]
    return stored | {"attempts": attempts}


def _by_machine(entries: list[dict[str, Any]], workers: Any, sign: int) -> list[dict[str, Any]]:
    """With workers on several machines (catalog entries): per machine, its own baseline and its cheapest
    within-budget trial, each priced on that machine's entry; cheapest machine first. [] for one machine."""
    ok = [e for e in entries if e["state"] == "ok" and e["same_as"] is None and e["cost"] is not None]
    names = sorted({e["cost"].hardware for e in ok})
    if len(names) < 2:
        return []
    rows = []
    for name in names:
        mine = [e for e in ok if e["cost"].hardware == name]
        feasible = [e for e in mine if e["feasible"] and e["objective"] is not None]
        best = min(feasible, key=lambda e: sign * e["objective"]) if feasible else None
        bases = [w["baseline_objective"] for w in workers if w.get("catalog") == name and w.get("baseline_objective")]
        base = bases[0] if bases else None
        rows.append(
            {
                "machine": name,
                "trials": len(mine),
                "baseline_objective": base,
                "best": None
                if best is None
                else {k: best[k] for k in ("label", "trial", "chain", "objective", "usd_per_m", "drop")},
                "times_better": (base / best["objective"] if sign > 0 else best["objective"] / base) if best and base else None,
            }
        )
    return sorted(rows, key=lambda r: sign * r["best"]["objective"] if r["best"] else math.inf)


# ----------------------------------------------------------------------------- the report
def _choose(d: dict[str, Any]) -> dict[str, Any] | None:
    ok = [e for e in d["entries"] if e["state"] == "ok" and e["feasible"] and e["objective"] is not None]
    if d["kind"] == "run":  # a run has one candidate: it is the answer, whether or not it met the budget
        return next((e for e in d["entries"] if e["state"] == "ok"), None)
    conf = d.get("confirmation")
    if conf is not None:  # the answer is the configuration confirmed on held-out data, if any
        return next((e for e in ok if e["trial"] == conf["chosen"]), None)
    return min(ok, key=lambda e: d["sign"] * e["objective"]) if ok else None


def _deployed(chosen: dict[str, Any] | None, confirmation: dict[str, Any] | None) -> dict[str, Any] | None:
    """The chosen entry as the confirmation deployed it: its chain (it may add pad-widths to the trial's) and
    its serving setting (the paired rounds may have chosen another batch size or number of streams)."""
    if chosen is None or not confirmation:
        return chosen
    attempt = next((a for a in confirmation.get("attempts", []) if a["trial"] == chosen["trial"]), None)
    if attempt is not None and attempt["passes"] != chosen["passes"]:
        chosen = chosen | {"passes": attempt["passes"], "chain": chain_text(attempt["passes"])}
    served = (confirmation.get("serving") or {}).get("served") or {}
    if served.get("trial", chosen["trial"]) == chosen["trial"]:
        chosen = chosen | {k: served[k] for k in ("batch_size", "threads", "streams") if k in served}
    return chosen


def _deployment(chosen: dict[str, Any] | None, recipe: Recipe, d: dict[str, Any], src: Any) -> dict[str, Any] | None:
    if chosen is None:
        return None
    out = {
        "runtime": chosen["runtime"],
        "batch_size": chosen["batch_size"],
        "threads": chosen["threads"],
        "streams": chosen.get("streams", 1),
        "device": recipe.hardware.device,
        "passes": chosen["passes"],
    }
    if d["kind"] == "search":
        folder = getattr(src, "folder", None)
        out["deploy_file"] = str(folder / "deploy.yaml") if folder and (folder / "deploy.yaml").is_file() else None
        out["rebuild"] = (
            f"costopt deploy {out['deploy_file']} --out DIR"
            if out["deploy_file"]
            else f"costopt search {recipe.name}.yaml writes deploy.yaml; then costopt deploy deploy.yaml --out DIR"
        )
    else:
        out["artifact"] = chosen["footprint"].artifact if chosen.get("footprint") else None
    return out


def _money(
    base: dict[str, Any],
    chosen: dict[str, Any] | None,
    closest: dict[str, Any] | None,
    recipe: Recipe,
    d: dict[str, Any],
    workload: Workload | None,
    grid: float | None,
    job_usd_per_hour: float | None,
) -> dict[str, Any] | None:
    if not base.get("cost"):
        return None
    encoder = recipe.task != "causal-lm"
    wl, origin, notes = money.resolve_workload(recipe.workload, workload, base["cost"].input_share, encoder)
    out: dict[str, Any] = {
        "workload": money.workload_summary(wl, origin),
        "notes": notes,
        "baseline": money.monthly(base["cost"], wl, grid),
    }
    other = chosen if chosen is not None else closest
    if other is not None and other.get("cost"):
        out["chosen" if chosen is not None else "closest"] = money.monthly(other["cost"], wl, grid)
    best_b = baseline_best_batch(d)
    if chosen is not None and best_b is not None and d["objective_kind"] == "cost" and chosen.get("usd_per_m"):
        usd = d["by_batch"][str(best_b)]
        out["baseline_best_batch"] = {"batch_size": best_b, "usd_per_m": usd, "cheaper_x": usd / chosen["usd_per_m"]}
    if chosen is not None and chosen.get("cost"):
        hours = (d["job_seconds"] or 0.0) / 3600
        rate = job_usd_per_hour if job_usd_per_hour is not None else base["cost"].hourly_usd
        ratio, against, confirmed = _headline_ratio(d, out)
        out["saving"] = money.saving_at_ratio(out["chosen"]["monthly_usd"], ratio, against, confirmed, hours, rate)
        out["saving"]["job_note"] = d["job_note"] + (
            f", priced at ${rate:g}/hour"
            + (
                ""
                if job_usd_per_hour is not None
                else f" ({base['cost'].hardware}'s rate, the machine the figures were priced on)"
            )
        )
    return out


def _headline_ratio(d: dict[str, Any], m: dict[str, Any]) -> tuple[dict[str, float], str, str | None]:
    """The one saving a report leads with: the confirmed one against the baseline at its own best operating
    point (timed in alternating rounds, with its interval) when the search confirmed a choice on cost; else
    the best the measurement has, said to be unconfirmed. Returns (ratio, against what, how the confirmation
    judged it; None when not confirmed)."""
    savings = [s for s in ((d.get("confirmation") or {}).get("savings") or []) if s["ratio"]]
    if savings and d["objective_kind"] == "cost":
        s = savings[-1]  # the confirmation times the baseline at its best batch last (confirm._time_saving)
        return s["ratio"], s["against"], s["why"]
    if "baseline_best_batch" in m:
        bb = m["baseline_best_batch"]
        return {"median": bb["cheaper_x"]}, f"baseline at its best batch ({bb['batch_size']})", None
    return {"median": m["baseline"]["monthly_usd"] / m["chosen"]["monthly_usd"]}, "baseline", None


def build_report(
    src: RunSource | StudySource,
    workload: Workload | None = None,
    grid: float | None = None,
    job_usd_per_hour: float | None = None,
) -> dict[str, Any]:
    from optimizer.search_space import space_size

    recipe = src.recipe
    budget = recipe.budget.as_dict()
    d = _from_run(src, budget) if isinstance(src, RunSource) else _from_study(src, budget)
    base, entries = d["baseline"], d["entries"]
    mark_pareto([base] + [e for e in entries if e["state"] == "ok" and e["same_as"] is None], budget["relative"], d["sign"])
    chosen = _deployed(_choose(d), d.get("confirmation"))
    alone = (d.get("confirmation") or {}).get("memory_alone") or {}
    for entry, key in ((base, "baseline"), (chosen, "choice")):  # a search measures it for the confirmed choice
        if entry is not None and entry["footprint"] is not None and alone.get(key):
            entry["footprint"] = replace(entry["footprint"], memory_alone=alone[key])
    met = chosen is not None and bool(chosen["feasible"])
    advice = None
    if not met:
        advice = suggestions(
            entries,
            budget,
            recipe.task,
            space_size(recipe) if d["kind"] == "search" else None,
            base["objective"],
            d["eval"].get("examples"),
            d["sign"],
        )
    closest = None
    if advice and advice["closest"]:
        closest = next(e for e in entries if e["label"] == advice["closest"]["label"])
    quality = []
    for m, v in base["quality"].items():
        shown = chosen or closest
        quality.append(
            {
                "metric": m,
                "baseline": v,
                "chosen": (shown or {}).get("quality", {}).get(m),
                "drop": (shown or {}).get("drops", {}).get(m),
                "constrained": m == budget["metric"],
            }
        )
    try:
        version = metadata.version("costopt")
    except metadata.PackageNotFoundError:
        version = None
    if chosen is None and d.get("confirmation") and d["confirmation"]["attempts"]:
        verdict = "nothing was confirmed on held-out data"
    elif chosen is None:
        verdict = "nothing met the budget" if entries else "no configuration was measured"
    elif met:
        verdict = "met the budget"
    else:
        verdict = "over the budget"
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "costopt_version": version,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "kind": d["kind"],
        "name": d["name"],
        "source": d["source"],
        "started": d["started"],
        "finished": d["finished"],
        "model": recipe.model.source,
        "task": recipe.task,
        "eval": d["eval"] or {"source": recipe.data.eval.source},
        "objective": d["objective_kind"],
        "budget": budget,
        "verdict": verdict,
        "met": met,
        "baseline": base,
        "chosen": chosen,
        "closest": closest,
        "money": _money(base, chosen, closest, recipe, d, workload, grid, job_usd_per_hour),
        "quality": quality,
        "trials": entries,
        "families": family_best(entries, d["sign"]),
        "deployment": _deployment(chosen, recipe, d, src),
        "advice": advice,
        "system": d["system"],
        "workers": d.get("workers", []),
        "machines": d.get("machines", []),
        "confirmation": d.get("confirmation"),
        "pricing": None
        if not base.get("cost")
        else {k: getattr(base["cost"], k) for k in ("hardware", "hourly_usd", "utilization", "input_share", "replicas", "note")}
        | {"pricing": recipe.hardware.pricing},
        "provenance": _provenance(src, recipe),
        "sensitivity": _sensitivity(src, chosen),
        "notes": d["notes"],
    }


def _sensitivity(src: RunSource | StudySource, chosen: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each keep_sensitive pass's block ranking, most sensitive first, with the blocks the chosen
    configuration keeps out of the pass marked."""
    raw = src.study.user_attrs.get("sensitivity") if isinstance(src, StudySource) else None
    out = []
    for r in sorted((raw or {}).values(), key=lambda r: r["index"]):
        excluded = {
            x for p in (chosen or {}).get("passes", []) if p["name"] == r["name"] for x in p.get("params", {}).get("exclude", [])
        }
        units = [u | {"drop": Drop.maybe(u["drop"]), "kept_out": u["pattern"] in excluded} for u in r["units"]]
        out.append(
            {k: r[k] for k in ("index", "name", "examples", "seconds")}
            | {"units": units, "unchanged": r.get("unchanged", []), "ranked_by": r.get("ranked_by") or None}
        )
    return out


def _provenance(src: RunSource | StudySource, recipe: Recipe) -> dict[str, Any]:
    """The recorded command, version and hashes, and where the catalog's price came from."""
    recorded = src.result.get("provenance") if isinstance(src, RunSource) else src.study.user_attrs.get("provenance")
    out = dict(recorded or {})
    hw = recipe.hardware
    if hw.catalog:
        from cost.errors import CostInputError

        try:
            entry = hw.entry()
        except CostInputError:  # an entry renamed since: the report still renders, without the price's source
            entry = None
        price = getattr(entry, "price", None)
        out["price"] = (
            {"entry": hw.catalog, "source": getattr(price, "source", None), "as_of": getattr(price, "as_of", None)}
            if price is not None
            else {"entry": hw.catalog, "source": None, "as_of": None}
        )
    return out
