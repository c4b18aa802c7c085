"""The report's text as a list of sections of tables, paragraphs and charts, written once and rendered
to Markdown and to HTML by `render`. Inline `code` and **bold** are the only markup in the text."""

from __future__ import annotations

from typing import Any

from optimizer.budget import power_text
from optimizer.formatting import (
    count,
    drop_text,
    money_text,
    num,
    ratio_text,
    saving_text,
    serving_text,
    usd,
)
from optimizer.measure.width_check import check_text, padded_text
from optimizer.report.blocks import Bullets, Document, Para, Section, Table, tokens_per_s
from optimizer.report.sections import (
    advice_section,
    charts_section,
    deployment_section,
    machines_section,
    provenance_section,
    sensitivity_section,
    speed_section,
    system_section,
    trials_section,
)


def _headline(r: dict[str, Any]) -> list[str]:
    b, c, m = r["baseline"], r["chosen"], r["money"] or {}
    budget = r["budget"]
    rel = budget["relative"]
    lines = []
    if c is not None:
        where = f"{c['runtime']}, {serving_text(c['batch_size'], c['threads'], c.get('streams'))}"
        status = "within" if r["met"] else "**over**"
        s = m.get("saving")
        if s:  # one figure first: the saving the money is computed from
            lines.append(f"**{c['label']}** (`{c['chain']}`; {where}): {saving_text(s)}.")
            lines.append(money_text(s, m["workload"]))
        if c["usd_per_m"] is not None and b["usd_per_m"]:
            lines.append(
                ("In" if s else f"**{c['label']}** (`{c['chain']}`; {where}) serves, in")
                + f" the search's own measurement, at {usd(c['usd_per_m'])} per 1M tokens against the baseline's "
                f"{usd(b['usd_per_m'])} at batch {b['batch_size']}: {b['usd_per_m'] / c['usd_per_m']:.2f}x."
            )
        elif c["objective"] is not None and b["objective"]:
            lines.append(
                f"**{c['label']}** (`{c['chain']}`; {where}): {r['objective']} {num(c['objective'])} "
                f"against the baseline's {num(b['objective'])}."
            )
        elif not s:  # no price and no objective (a run without hardware.catalog): speed says it
            key, what = ("output_tokens_per_s", "decodes") if r["task"] == "causal-lm" else ("input_tokens_per_s", "encodes")
            cs, bs = tokens_per_s(c, key), tokens_per_s(b, key)
            lines.append(
                f"**{c['label']}** (`{c['chain']}`; {where}) {what} {num(cs)} tokens/s against the baseline's "
                f"{num(bs)}" + (f": **{cs / bs:.2f}x**." if cs and bs else ".") + " No price: the recipe sets no "
                "`hardware.catalog`."
            )
        where = " on the examples the search selected on" if r.get("confirmation") else ""
        lines.append(
            f"Quality{where}: {budget['metric']} drop {drop_text(c['drop'], rel)}, {status} the budget ({budget['text']})."
        )
        if c.get("drops_by_set"):
            each = "; ".join(f"{n} {drop_text(d, rel)}" for n, d in c["drops_by_set"].items())
            lines.append(f"On each eval set (the budget must hold on every one): {each}.")
        lines += _confirmation_lines(r)
        if "baseline_best_batch" in m:
            bb = m["baseline_best_batch"]
            lines.append(
                f"Against the baseline at its own best batch size ({bb['batch_size']}, {usd(bb['usd_per_m'])}) in the "
                f"search's measurement: {bb['cheaper_x']:.2f}x."
            )
    elif r["closest"] is not None:
        cl = r["closest"]
        lines.append(
            f"**No configuration met the budget** ({budget['text']}). Closest: {cl['label']} (`{cl['chain']}`), "
            f"drop {drop_text(cl['drop'], rel)}. What to try is below, under *What to try*."
        )
    else:
        lines.append("**No configuration was fully measured**: every trial was pruned or failed (reasons in the trial table).")
    return lines


def _confirmation_lines(r: dict[str, Any]) -> list[str]:
    """What the held-out confirmation measured: the drop there and the saving timed in alternating rounds."""
    conf = r.get("confirmation")
    if not conf:
        if r["kind"] == "search":
            return ["Not confirmed on held-out data (search.confirm.share is 0): the drop is the search's own figure."]
        return []
    rel = r["budget"]["relative"]
    a = next((x for x in conf["attempts"] if x["trial"] == conf["chosen"]), None)
    out = []
    if a is not None:
        out.append(
            f"Confirmed on {conf['confirmation_examples']} held-out examples the search never saw: "
            f"{r['budget']['metric']} drop {drop_text(a['drop'], rel)} at {conf['confidence_each']:.1%} confidence "
            f"({a['quality_batches']}); on the {conf['selection_examples']} examples it was selected on: "
            f"{drop_text(a['selection_drop'], rel)}. {len(conf['attempts'])} candidate(s) tested in cost order."
        )
        if a.get("power"):
            out.append(power_text(a["power"], rel).replace("power: ", "Power: ", 1) + ".")
        if a.get("drops_by_set"):
            each = "; ".join(f"{n} {drop_text(d, rel)}" for n, d in a["drops_by_set"].items())
            out.append(f"Held-out drop on each eval set: {each}.")
        if a.get("padded_from"):
            out.append(f"It is {padded_text(a['passes'][-1]['params']['widths'], a['padded_from'])}.")
        if a.get("widths"):
            out.append(f"Outputs against the baseline's at every input width it can be served at: {check_text(a['widths'])}.")
    for x in conf["attempts"]:
        if x.get("widths") and x["widths"]["defects"]:
            out.append(f"Trial {x['trial']} was rejected before its held-out quality: {check_text(x['widths'])}.")
        elif x["trial"] != conf["chosen"] and x.get("confirmed"):
            timed = any(o.get("trial") == x["trial"] for o in (conf.get("serving") or {}).get("options", []))
            out.append(
                f"Trial {x['trial']}, another chain the search could not tell from the choice by its one timing, was "
                f"confirmed too (held-out drop {drop_text(x['drop'], rel)}) and "
                + (
                    "timed in the same rounds (serving, above): it was not shown cheaper."
                    if timed
                    else "not timed against it: the time budget left no room (serving, above)."
                )
            )
        elif x["trial"] != conf["chosen"] and x.get("drop") and x.get("power"):
            out.append(
                f"Trial {x['trial']} was over the budget on held-out data (drop {drop_text(x['drop'], rel)}); "
                f"its {power_text(x['power'], rel)}."
            )
    for s in conf["savings"]:
        fig = ratio_text(s["ratio"]) if s["ratio"] else "–"
        out.append(f"Saving against the {s['against']}: **{fig}**, {s['why']}.")
    return out


def _cost_section(r: dict[str, Any]) -> Section:
    sec = Section("Cost")
    m = r["money"]
    if m is None:
        sec.blocks.append(
            Para(
                "No prices: the recipe sets no `hardware.catalog`, so only speed is reported. "
                "Set one (see `costopt hardware list`) to price the measured speed."
            )
        )
        return sec
    p = r["pricing"]
    rows = []
    for key, label in (
        ("baseline", "baseline"),
        ("chosen", f"chosen ({(r['chosen'] or {}).get('label')})"),
        ("closest", f"closest, over budget ({(r['closest'] or {}).get('label')})"),
    ):
        if key in m:
            x = m[key]
            rows.append(
                [
                    label,
                    usd(x["input_usd_per_m"]),
                    usd(x["output_usd_per_m"]),
                    usd(x["blended_usd_per_m"]),
                    usd(x["monthly_usd"]),
                    f"{x['instances']} · {usd(x['monthly_usd_whole_instances'])}" if "instances" in x else "–",
                    f"{x['monthly_kwh']:,.2f}",
                    f"{x['monthly_co2_kg']:,.2f}",
                ]
            )
    sec.blocks.append(
        Table(
            [
                "configuration",
                "$/1M input",
                "$/1M output",
                "$/1M blended",
                "per month",
                "whole instances · per month",
                "kWh/month",
                "kg CO2/month",
            ],
            rows,
        )
    )
    wl = m["workload"]
    items = [
        f"Workload ({wl['origin']}): {count(wl['input_tokens_per_month'])} input and "
        f"{count(wl['output_tokens_per_month'])} output tokens a month.",
        f"Prices: this machine's measured tokens/s at {p['hardware']}'s {p['pricing'].replace('_', '-')} rate of "
        f"${p['hourly_usd']:g}/hour, busy {p['utilization']:.0%} of paid hours; blended at "
        f"{p['input_share']:.0%} input tokens" + (f" ({p['note'].split('; ', 1)[1]})" if "; " in p["note"] else "") + ".",
        f"Energy: the catalog entry's power while busy; CO2 at {m['baseline']['grid_kg_per_kwh']:g} kg/kWh "
        "(set --grid-kg-per-kwh for your region).",
        "Per month prices the busy machine-time only, as if a fraction of a machine could be rented; whole "
        "instances are the machines this workload needs at that utilization (at least one) and what renting "
        "them for a month costs.",
    ]
    s = m.get("saving")
    if s:
        items.insert(0, money_text(s, wl))
        items.insert(1, f"The job: {s['job_note']}.")
    items += m["notes"]
    sec.blocks.append(Bullets(items))
    return sec


def _quality_section(r: dict[str, Any]) -> Section:
    rel = r["budget"]["relative"]
    shown = r["chosen"] or r["closest"]
    name = "chosen" if r["chosen"] else "closest"
    rows = []
    for q in r["quality"]:
        rows.append(
            [
                q["metric"] + (" (budget)" if q["constrained"] else ""),
                f"{q['baseline']:.4g}",
                f"{q['chosen']:.4g}" if q["chosen"] is not None else "–",
                drop_text(q["drop"], rel),
            ]
        )
    sec = Section(
        "Quality",
        [Table(["metric", "baseline", name if shown else "candidate", f"drop ({r['budget']['confidence']:.0%} interval)"], rows)],
    )
    ev = r["eval"]
    scored = shown["drop"].n if shown and shown["drop"] else None
    size = f", {ev['examples']} examples" if ev.get("examples") else (f", {scored} scored items" if scored else "")
    sec.blocks.append(
        Para(
            f"Budget: {r['budget']['text']}. Drops are paired-bootstrap intervals over the eval set "
            f"({ev.get('origin') or ev.get('source')}{size}); a positive drop is a loss."
        )
    )
    return sec


def build_document(r: dict[str, Any], charts: dict[str, str]) -> Document:
    kind = "search" if r["kind"] == "search" else "run"
    title = f"Cost report: {r['name']} ({r['model']}, {r['task']} {kind})"
    sections = [
        _cost_section(r),
        _quality_section(r),
        speed_section(r),
        charts_section(r, charts),
        machines_section(r),
        sensitivity_section(r, charts),
        advice_section(r),
        deployment_section(r),
        trials_section(r),
        system_section(r),
        provenance_section(r),
    ]
    if r["notes"]:
        sections.append(Section("Notes", [Bullets(r["notes"])]))
    when = f"measured {r['started']} – {r['finished']}" if r.get("started") else ""
    footer = (
        f"Generated {r['generated']} by costopt {r['costopt_version'] or ''} from `{r['source']}`; {when}. "
        f"Machine-readable: report.json ({r['schema']})."
    )
    return Document(title, _headline(r), [s for s in sections if s is not None], footer)
