"""The report's two charts as SVG text (matplotlib, no display needed): cost against quality drop for
every measured configuration, and $ per 1M tokens of the baseline against each technique family's best.
"""

from __future__ import annotations

import io
from typing import Any

from optimizer.formatting import drop_x

# Fixed colours: the HTML test finds each chart on the rendered page by these.
FEASIBLE = "#1b9e77"
OVER = "#b0b0b0"
CHOSEN = "#d95f02"
BASELINE = "#333333"
FRONT = "#e7298a"
BUDGET_FILL = "#d7f0e5"
BAR = "#7570b3"
BAR_OVER = "#cfcde6"


def _value(e: dict[str, Any], money: bool) -> float | None:
    return e["usd_per_m"] if money else e["objective"]


def _axis_label(report: dict[str, Any], money: bool) -> str:
    if money:
        return f"$ per 1M tokens on {report['pricing']['hardware']}"
    return {"latency": "latency (s)", "throughput": "tokens/s"}.get(report["objective"], report["objective"])


def _svg(fig: Any, salt: str) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg") :]  # inline-able: no XML prolog or doctype


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    fig.set_facecolor("white")
    return fig


def cost_vs_drop(report: dict[str, Any]) -> str | None:
    """Every fully measured configuration: cost (y) against quality drop (x, with its interval), the budget's
    region, the Pareto front and the chosen point. None when fewer than one configuration has both."""
    budget = report["budget"]
    rel = budget["relative"]
    base = report["baseline"]
    money = base["usd_per_m"] is not None
    points = [
        e
        for e in [base, *report["trials"]]
        if e["state"] == "ok" and e["same_as"] is None and drop_x(e["drop"], rel) is not None and _value(e, money) is not None
    ]
    if len(points) < 2:
        return None
    fig = _figure(7.5, 4.6)
    ax = fig.add_subplot()
    xs = [drop_x(e["drop"], rel) for e in points]
    lo = min(min(x[1] for x in xs), 0.0)
    hi = max(max(x[2] for x in xs), budget["max_drop_display"])
    pad = 0.08 * (hi - lo or 1.0)
    ax.axvspan(
        lo - pad,
        budget["max_drop_display"],
        color=BUDGET_FILL,
        zorder=0,
        label=f"within budget (≤ {budget['max_drop_display']:g}{'%' if rel else ''})",
    )
    ax.axvline(budget["max_drop_display"], color=FEASIBLE, lw=1, ls="--", zorder=1)
    chosen = report.get("chosen")
    for feasible, colour, label in ((True, FEASIBLE, "meets the budget (whole interval)"), (False, OVER, "over the budget")):
        group = [(e, x) for e, x in zip(points, xs, strict=False) if e is not base and bool(e["feasible"]) == feasible]
        if not group:
            continue
        ax.errorbar(
            [x[0] for _, x in group],
            [_value(e, money) for e, _ in group],
            xerr=[[x[0] - x[1] for _, x in group], [x[2] - x[0] for _, x in group]],
            fmt="o",
            color=colour,
            ecolor=colour,
            elinewidth=1,
            capsize=2,
            ms=6,
            alpha=0.9,
            zorder=3,
            label=label,
        )
    front = sorted(((x[0], _value(e, money)) for e, x in zip(points, xs, strict=False) if e["pareto"]))
    if front:  # ringed points joined by the staircase no other configuration beats on both axes
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color=FRONT, lw=1.5, zorder=2)
        ax.plot(
            [p[0] for p in front],
            [p[1] for p in front],
            ls="none",
            marker="o",
            ms=13,
            mfc="none",
            mec=FRONT,
            mew=1.8,
            zorder=4,
            label="Pareto front",
        )
    ax.plot([0], [_value(base, money)], marker="D", ms=8, color=BASELINE, ls="none", zorder=4, label="baseline")
    if chosen is not None and _value(chosen, money) is not None and chosen["drop"]:
        cx = drop_x(chosen["drop"], rel)[0]
        ax.plot(
            [cx],
            [_value(chosen, money)],
            marker="*",
            ms=20,
            color=CHOSEN,
            mec="black",
            mew=0.6,
            ls="none",
            zorder=5,
            label=f"chosen: {chosen['label']}",
        )
    values = [_value(e, money) for e in points]
    if min(values) > 0 and max(values) / min(values) > 8:
        ax.set_yscale("log")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel(
        f"{budget['metric']} drop{' (%)' if rel else ''}, point and {budget['confidence']:.0%} interval; right is worse"
    )
    ax.set_ylabel(_axis_label(report, money))
    ax.set_title("Cost against quality drop, every measured configuration", fontsize=11)
    ax.grid(alpha=0.3, zorder=0)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    return _svg(fig, "cost-vs-drop")


def cost_by_family(report: dict[str, Any]) -> str | None:
    """Horizontal bars: the baseline and each technique family's best configuration (hatched: over budget)."""
    base = report["baseline"]
    money = base["usd_per_m"] is not None
    fams = [f for f in report["families"] if (f["usd_per_m"] if money else f["objective"]) is not None]
    if not fams or _value(base, money) is None:
        return None
    labels = ["baseline (uncompressed)"] + [f"{f['family']} · {f['runtime']}\n{f['label']}" for f in fams]
    values = [_value(base, money)] + [f["usd_per_m"] if money else f["objective"] for f in fams]
    colours = [BASELINE] + [BAR if f["feasible"] else BAR_OVER for f in fams]
    fig = _figure(7.5, 1.2 + 0.62 * len(values))
    ax = fig.add_subplot()
    ypos = list(range(len(values)))[::-1]
    bars = ax.barh(ypos, values, color=colours, edgecolor=[BASELINE] + [BAR] * len(fams), zorder=2)
    for bar, f in zip(bars[1:], fams, strict=False):
        if not f["feasible"]:
            bar.set_hatch("//")
    ax.set_yticks(ypos, labels, fontsize=8)
    top = max(values)
    for y, v in zip(ypos, values, strict=False):
        ratio = f"  ({values[0] / v:.2f}x)" if money and v > 0 and v != values[0] else ""
        ax.text(v + 0.01 * top, y, (f"${v:.4g}" if money else f"{v:.4g}") + ratio, va="center", fontsize=8)
    ax.set_xlim(0, top * 1.3)
    ax.set_xlabel(
        _axis_label(report, money) + ("; hatched: over the quality budget" if any(not f["feasible"] for f in fams) else "")
    )
    ax.set_title("Baseline against the best of each technique family", fontsize=11)
    ax.grid(axis="x", alpha=0.3, zorder=0)
    return _svg(fig, "cost-by-family")


def block_sensitivity(report: dict[str, Any], ranking: dict[str, Any]) -> str:
    """Horizontal bars: each block's drop when only it goes through the pass, with its interval, most
    sensitive on top; filled: kept out of the pass by the chosen configuration."""
    from optimizer.formatting import drop_x

    budget = report["budget"]
    units = ranking["units"]
    xs = [drop_x(u["drop"], budget["relative"]) or (u["score"],) * 3 for u in units]
    fig = _figure(7.0, 1.0 + 0.38 * len(units))
    ax = fig.add_subplot()
    ypos = list(range(len(units)))[::-1]
    colours = [CHOSEN if u["kept_out"] else BAR for u in units]
    ax.barh(ypos, [x[0] for x in xs], color=colours, zorder=2)
    ax.errorbar(
        [x[0] for x in xs],
        ypos,
        xerr=[[x[0] - x[1] for x in xs], [x[2] - x[0] for x in xs]],
        fmt="none",
        ecolor=BASELINE,
        capsize=2,
        lw=0.8,
        zorder=3,
    )
    ax.axvline(budget["max_drop_display"], color=FEASIBLE, ls="--", lw=1, label="the budget")
    ax.axvline(0, color=BASELINE, lw=0.6)
    ax.set_yticks(ypos, [u["unit"] for u in units], fontsize=8)
    unit = " (%)" if budget["relative"] else ""
    ax.set_xlabel(f"{budget['metric']} drop{unit} with only this part quantized, {budget['confidence']:.0%} interval")
    kept = any(u["kept_out"] for u in units)
    ax.set_title(f"Sensitivity of {ranking['name']}, part by part" + (" (orange: kept out)" if kept else ""), fontsize=11)
    ax.grid(axis="x", alpha=0.3, zorder=0)
    ax.legend(fontsize=8, loc="lower right")
    return _svg(fig, f"sensitivity-{ranking['index']}")
