"""The report's sections after the money and the quality: speed, charts, machines, sensitivity,
deployment, trials, advice, system and provenance."""

from __future__ import annotations

from typing import Any

from optimizer.formatting import (
    SERVING_COLUMN,
    drop_text,
    num,
    serving_cell,
    serving_text,
    speed_rows,
    usd,
)
from optimizer.report.blocks import Bullets, Chart, Para, Section, Table, tokens_per_s


def speed_section(r: dict[str, Any]) -> Section:
    shown = r["chosen"] or r["closest"]
    base, other = speed_rows(r["baseline"]), speed_rows(shown)
    header = ["", "baseline"] + ([shown["label"]] if other else [])
    rows = [[k, v] + ([other.get(k, "–")] if other else []) for k, v in base.items()]
    sec = Section("Speed and footprint", [Table(header, rows)])
    sec.blocks.append(
        Para(
            "Medians over the benchmark's repeats with their range and coefficient of variation; "
            "tokens are real (unpadded) tokens; both measured on the machine below with the same threads. "
            "Request latency: each request waits for its whole batch, requests batched in arrival order "
            "(queueing before a batch starts is not modelled). Memory served alone: the peak RSS of a fresh "
            "process that loads only that model and serves the benchmark's requests once, loading included."
        )
    )
    return sec


def charts_section(r: dict[str, Any], charts: dict[str, str]) -> Section | None:
    if not charts:
        return None
    sec = Section("Charts")
    plotted = sum(1 for e in r["trials"] if e["state"] == "ok" and e["objective"] is not None and e["same_as"] is None)
    repeats = sum(1 for e in r["trials"] if e["same_as"] is not None)
    unplotted = {s: sum(1 for e in r["trials"] if e["state"] == s) for s in ("pruned", "failed")}
    missing = ", ".join(f"{n} {s}" for s, n in unplotted.items() if n)
    if "cost-vs-drop" in charts:
        sec.blocks.append(
            Chart(
                "cost-vs-drop",
                charts["cost-vs-drop"],
                "Cost against quality drop for every trial",
                f"{plotted} measured configuration(s) and the baseline"
                + (f" ({repeats} repeated configuration(s) shown once)" if repeats else "")
                + "; bars are each drop's interval; "
                "the star is the chosen configuration; the shaded band is the budget"
                + (f". Not plotted (no cost measured): {missing} trial(s), listed below." if missing else "."),
            )
        )
    if "cost-by-family" in charts:
        sec.blocks.append(
            Chart(
                "cost-by-family",
                charts["cost-by-family"],
                "Cost of the baseline and each family's best",
                "The cheapest configuration within budget of each technique family "
                "(hatched: no configuration of that family met the budget; the one nearest it is shown).",
            )
        )
    return sec


def machines_section(r: dict[str, Any]) -> Section | None:
    rows = r.get("machines") or []
    if not rows:
        return None
    money = r["baseline"]["usd_per_m"] is not None
    rel = r["budget"]["relative"]
    value = usd if money else num
    out = []
    for m in rows:
        b = m["best"]
        out.append(
            [
                m["machine"],
                str(m["trials"]),
                value(m["baseline_objective"]) if m["baseline_objective"] is not None else "–",
                f"{b['label']}: `{b['chain']}`" if b else "none within budget",
                value(b["objective"]) if b else "–",
                drop_text(b["drop"], rel) if b and b["drop"] else "–",
                f"{m['times_better']:.2f}x" if m["times_better"] else "–",
            ]
        )
    kind = "$ per 1M tokens" if money else r["objective"]
    return Section(
        "By machine",
        [
            Para(
                "Workers on different machines shared this search. Each trial was measured on its worker's machine, "
                "priced on that machine's catalog entry and compared with the baseline that worker measured there; "
                "cheapest machine first. Figures are each trial's own (one measurement, no interval); a machine's answer "
                "is confirmed on held-out data by a worker on that machine."
            ),
            Table(["machine", "trials", f"baseline {kind}", "cheapest within budget", kind, "drop (CI)", "vs its baseline"], out),
        ],
    )


def sensitivity_section(r: dict[str, Any], charts: dict[str, str]) -> Section | None:
    rankings = r.get("sensitivity") or []
    if not rankings:
        return None
    relative = r["budget"]["relative"]
    sec = Section("Block sensitivity")
    for s in rankings:
        sec.blocks.append(
            Para(
                f"`{s['name']}` (passes[{s['index']}]) applied to one part of one block at a time (attention inputs, "
                f"attention output, FFN input, FFN output), the rest kept out of it; measured on {s['examples']} "
                f"examples of the search's own data in {s['seconds']:.0f} s before the trials, ranked by the drop in "
                f"{s.get('ranked_by') or r['budget']['metric']}. `keep_sensitive: k` keeps the first k rows out of the pass."
                + (
                    f" Not ranked, as no example scored differently with them quantized: {', '.join(s['unchanged'])}."
                    if s.get("unchanged")
                    else ""
                )
            )
        )
        sec.blocks.append(
            Table(
                [
                    "rank",
                    "part",
                    f"{s.get('ranked_by') or r['budget']['metric']} drop",
                    f"{r['budget']['metric']} drop (CI)",
                    "kept out by the choice",
                ],
                [
                    [str(n), u["unit"], f"{u['score']:.3g}", drop_text(u["drop"], relative), "yes" if u["kept_out"] else ""]
                    for n, u in enumerate(s["units"], 1)
                ],
            )
        )
        name = f"sensitivity-{s['index']}"
        if name in charts:
            sec.blocks.append(
                Chart(name, charts[name], f"Per-block sensitivity of {s['name']}", "Bars: point drop; whiskers: its interval.")
            )
    return sec


def deployment_section(r: dict[str, Any]) -> Section | None:
    d = r["deployment"]
    if d is None:
        return None
    items = [
        f"Passes: `{r['chosen']['chain']}`",
        f"Runtime: {d['runtime']} on {d['device']}, {serving_text(d['batch_size'], d['threads'], d.get('streams'))}",
    ]
    if d.get("deploy_file"):
        items += [
            f"Deployment file: `{d['deploy_file']}`",
            f"Rebuild: `{d['rebuild']}`, then `optimizer.load_deployment(DIR)` in Python",
        ]
    elif d.get("rebuild"):
        items.append(f"Rebuild: {d['rebuild']}")
    if d.get("artifact"):
        items.append(f"Artifact: `{d['artifact']}`")
    return Section("Deployment", [Bullets(items)])


def trials_section(r: dict[str, Any]) -> Section:
    rel = r["budget"]["relative"]
    money = r["baseline"]["usd_per_m"] is not None
    rows = []
    for e in r["trials"]:
        value = usd(e["usd_per_m"]) if money else num(e["objective"])
        feas = {True: "yes", False: "no", None: "–"}[e["feasible"]]
        drop = drop_text(e["drop"], rel) if e["drop"] else ("screen " + drop_text(e["screen"], rel) if e.get("screen") else "–")
        speed = num(tokens_per_s(e))
        if r["task"] == "causal-lm":
            speed += " / " + num(tokens_per_s(e, "output_tokens_per_s"))
        rows.append(
            [
                e["label"],
                e["state"],
                e["family"],
                f"`{e['chain']}`",
                serving_cell(e["batch_size"], e["threads"], e.get("streams")),
                value if e["objective"] is not None else "–",
                speed,
                drop,
                feas + (" · front" if e["pareto"] else ""),
                f"{e['seconds']:.1f} s" if e["seconds"] is not None else "–",
                e["reason"] or "",
            ]
        )
    header = [
        "configuration",
        "state",
        "family",
        "passes",
        SERVING_COLUMN,
        "$/1M" if money else r["objective"],
        "prefill / decode tokens/s" if r["task"] == "causal-lm" else "tokens/s",
        "drop (interval)",
        "within budget",
        "time",
        "reason",
    ]
    sec = Section("Every trial" if r["kind"] == "search" else "The candidate", [Table(header, rows)])
    if r["kind"] == "search":
        sec.blocks.append(
            Para(
                "Ordered as run. *front*: on the Pareto front of cost against drop. Pruned trials were "
                "stopped after a screen on a subset of the eval set (their screen drop is shown); "
                "failed ones carry their error."
            )
        )
    return sec


def advice_section(r: dict[str, Any]) -> Section | None:
    if not r["advice"]:
        return None
    return Section("What to try", [Bullets(r["advice"]["suggestions"])])


def system_section(r: dict[str, Any]) -> Section:
    items = []
    for s in r["system"]:
        if not s:
            continue
        cpu = s.get("cpu", {})
        line = f"CPU: {cpu.get('model')}"
        if cpu.get("logical_cores"):
            line += (
                f" ({cpu.get('arch')}), {cpu['logical_cores']} logical cores, {cpu.get('usable_cores')} usable; "
                f"ISA {', '.join(cpu.get('isa') or []) or 'baseline'}"
            )
        items.append(line)
        if s.get("memory_bytes"):
            items.append(f"Memory: {s['memory_bytes'] / 2**30:.1f} GiB")
        gpus = s.get("gpus") or []
        items.append(
            "GPU: "
            + (
                "; ".join(f"{g['name']} ({g['memory_bytes'] / 2**30:.0f} GiB, CUDA {g.get('cuda')})" for g in gpus)
                if gpus
                else "none"
            )
        )
        if s.get("os"):
            items.append(f"OS: {s['os']}, Python {s.get('python')}")
        libs = s.get("libraries") or {}
        if libs:
            items.append("Libraries: " + ", ".join(f"{k} {v}" for k, v in libs.items() if v))
    if r["workers"]:
        items.append(f"Workers ({len(r['workers'])}): " + ", ".join(r["workers"]))
    return Section("Hardware and software", [Bullets(items or ["not recorded"])])


def provenance_section(r: dict[str, Any]) -> Section | None:
    p = r.get("provenance") or {}
    if not p:
        return None
    items = []
    if p.get("command"):
        items.append(f"Command: `{p['command']}` (recorded {p.get('recorded', '')})")
    if p.get("costopt"):
        items.append(f"costopt: {p['costopt']}")
    if f := p.get("model_file"):
        items.append(
            f"Model file: `{f['file']}` ({f.get('file_type')}, {f.get('bytes', 0) / 1e6:,.0f} MB), loaded into torch fp32 "
            "for the baseline; a quantized file's weights keep its grid"
        )
    if p.get("recipe_sha256"):
        items.append(f"Recipe (resolved) sha256: `{p['recipe_sha256']}`")
    if p.get("eval_sha256"):
        items.append(f"Eval data sha256: `{p['eval_sha256']}` ({p.get('eval_examples')} examples the figures were judged on)")
    price = p.get("price")
    if price:
        items.append(
            f"Price: catalog entry {price['entry']}, "
            + (f"from {price['source']} as of {price['as_of']}" if price.get("source") else "source not recorded")
        )
    return Section("Provenance", [Bullets(items)])
