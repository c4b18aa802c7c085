"""How figures are written everywhere (CLI, reports, deploy notes, experiments): drops, money, ratios.

A drop is a `measure.stats.Drop`; a ratio is the dict of `measure.stats.RatioInterval`.
"""

from __future__ import annotations

from typing import Any

from optimizer.measure.footprint import Footprint
from optimizer.measure.stats import Drop


def drop_x(drop: Drop | dict[str, Any] | None, relative: bool) -> tuple[float, float, float] | None:
    """(point, low, high) of a drop in the budget's unit: percent when relative, the metric's own otherwise.
    A stored drop (a dict, as experiments and older records keep it) is read with `Drop.from_json`."""
    drop = Drop.maybe(drop)
    if not drop:
        return None
    if drop.shown_relative(relative):
        point = 100 * drop.relative  # type: ignore[operator]
        if drop.relative_low is None or drop.relative_high is None:  # no spread (every resample gave the same drop)
            return point, point, point
        return point, 100 * drop.relative_low, 100 * drop.relative_high
    return drop.drop, drop.low, drop.high


def drop_text(drop: Drop | dict[str, Any] | None, relative: bool = True) -> str:
    """'+0.42% [-0.61, +1.38]' (relative) or '+0.0123 [+0.004, +0.02]' (the metric's own unit)."""
    drop = Drop.maybe(drop)
    x = drop_x(drop, relative)
    if x is None:
        return "–"
    if drop.shown_relative(relative):  # type: ignore[union-attr]
        return f"{x[0]:+.2f}% [{x[1]:+.2f}, {x[2]:+.2f}]"
    return f"{x[0]:+.4g} [{x[1]:+.4g}, {x[2]:+.4g}]"


def amount(x: float, relative: bool) -> str:
    """A drop or budget amount given as a fraction: '+1.00%' when relative, '+0.01' otherwise."""
    return shown_amount(100 * x if relative else x, relative)


def shown_amount(x: float, relative: bool) -> str:
    """The same for an amount already in the shown unit (percent when relative), as drop_x gives."""
    return f"{x:+.2f}%" if relative else f"{x:+.4g}"


def usd(x: float | None) -> str:
    if x is None:
        return "–"
    if abs(x) >= 100:
        return f"${x:,.0f}"
    if abs(x) >= 1:
        return f"${x:,.2f}"
    return f"${x:.4g}"


def ratio_text(r: dict[str, Any] | None) -> str:
    """'3.12x [3.09, 3.18]': how many times cheaper, with its interval."""
    if not r:
        return "–"
    return f"{r['median']:.2f}x [{r['low']:.2f}, {r['high']:.2f}]"


def count(x: float) -> str:
    """1.2B, 340M, 5.6k: token volumes at a glance."""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}"


def days(d: float | None) -> str:
    if d is None:
        return "never (no saving)"
    if d < 1 / 24:
        minutes = max(1, round(d * 24 * 60))
        return f"{minutes} minute" + ("" if minutes == 1 else "s")
    if d < 2:
        return f"{d * 24:.1f} hours"
    return f"{d:,.1f} days"


def saving_text(s: dict[str, Any]) -> str:
    """A report's one headline saving: '**1.15x [1.03, 1.31] cheaper** than the baseline at its best batch (16)
    (confirmed on held-out data, ...)', or the unconfirmed figure said to be one."""
    x = f"{s['cheaper_x']:.2f}x" + (f" [{s['cheaper_low']:.2f}, {s['cheaper_high']:.2f}]" if s.get("cheaper_low") else "")
    how = f"confirmed after the search, {s['why']}" if s["confirmed"] else "the search's own measurement, not confirmed"
    if s["cheaper_x"] < 1:
        return f"**{x}: no cheaper** than the {s['against']}; {how}"
    return f"**{x} cheaper** than the {s['against']}; {how}"


def money_text(s: dict[str, Any], workload: dict[str, Any]) -> str:
    """The money of that saving: a month, a year and the break-even, each with its interval when there is one."""

    def between(lo: float | None, hi: float | None, show: Any) -> str:
        return f" [{show(lo)}, {show(hi)}]" if lo is not None and hi is not None else ""

    tokens = count(workload["input_tokens_per_month"] + workload["output_tokens_per_month"])
    if s["monthly_usd"] <= 0:
        return (
            f"At {tokens} tokens a month ({workload['origin']} workload) it saves nothing: {usd(-s['monthly_usd'])} a month more."
        )
    return (
        f"At {tokens} tokens a month ({workload['origin']} workload) that saves **{usd(s['monthly_usd'])} a month**"
        + between(s.get("monthly_low"), s.get("monthly_high"), usd)
        + f", {usd(s['yearly_usd'])} a year"
        + between(s.get("yearly_low"), s.get("yearly_high"), usd)
        + f"; the optimization job ({s['job_hours']:.2f} h, {usd(s['job_usd'])}) pays for itself in "
        + days(s["break_even_days"])
        + (
            f" [{days(s['break_even_low'])}, {days(s['break_even_high'])}]"
            if s.get("monthly_low") is not None and s["break_even_days"] is not None
            else ""
        )
        + "."
    )


SERVING_COLUMN = "batch/threads/streams"


def serving_text(batch_size: Any, threads: Any, streams: Any = 1) -> str:
    """How a configuration is served, in words: 'batch 16, 2 threads, 2 streams at once'."""
    out = f"batch {batch_size}, {threads} threads"
    return out + (f", {streams} streams at once" if streams and int(streams) > 1 else "")


def serving_cell(batch_size: Any, threads: Any, streams: Any = 1) -> str:
    """The same for a table's SERVING_COLUMN: '16/2/2'."""
    return f"{batch_size or '–'}/{threads or '–'}/{streams or 1}"


def served_text(s: dict[str, Any]) -> str:
    """A served burst of requests (measure/requests.py) in one line."""
    ttft, tpot = s["time_to_first_token_s"], s["time_per_output_token_s"]
    price = f"; {usd(s['usd_per_m_tokens'])} per 1M tokens of this mix" if s.get("usd_per_m_tokens") is not None else ""
    rate = s.get("arrival_rate")
    arrivals = f"arriving at {rate:g}/s" if rate else "at once"
    return (
        f"{s['requests']} requests {arrivals} ({s['prompt_tokens']['min']}-{s['prompt_tokens']['max']} prompt tokens, "
        f"{s['new_tokens']['min']}-{s['new_tokens']['max']} answer tokens) by {s['engine']}: "
        f"{s['tokens_per_s']['median']:,.0f} tokens/s ({s['output_tokens_per_s']['median']:,.1f} output), "
        f"time to first token p50/p95 {ttft['p50']:.2f}/{ttft['p95']:.2f} s (from arrival, queueing included), "
        f"per output token p50/p95 {1e3 * tpot['p50']:.1f}/{1e3 * tpot['p95']:.1f} ms{price}"
    )


def num(x: float | None, digits: int = 3, unit: str = "") -> str:
    """A figure in a table or sentence: thousands grouped, tens to one decimal, values just under 1 (fidelity)
    to six decimals so their distance from 1 shows, else `digits` significant digits."""
    if x is None:
        return "–"
    if abs(x) >= 1000:
        s = f"{x:,.0f}"
    elif abs(x) >= 10:
        s = f"{x:.1f}"
    elif 0.999 < x < 1:
        s = f"{x:.6f}"
    else:
        s = f"{x:.{digits}g}"
    return s + unit


def mib(b: float | None) -> str:
    return "–" if b is None else f"{b / 2**20:,.1f} MiB"


def speed_rows(e: dict[str, Any] | None) -> dict[str, str]:
    """One configuration's speed and footprint as label -> text (the CLI's and the report's one table):
    `e` holds its `speed` (measure.speed's figures) and `footprint`."""
    if e is None or not e.get("speed"):
        return {}
    s, f = e["speed"], Footprint.maybe(e.get("footprint"))

    def stat(key: str) -> str:
        v = s.get(key)
        return "–" if not v else f"{num(v['median'])} ({num(v['min'])}–{num(v['max'])}, cv {100 * v['cv']:.1f}%)"

    out = {"served as": serving_text(s.get("batch_size"), s.get("threads"), s.get("streams"))}
    if s["kind"] == "causal-lm":
        out["prefill tokens/s"] = stat("input_tokens_per_s")
        out["decode tokens/s"] = stat("output_tokens_per_s")
        out["time to first token (s)"] = stat("time_to_first_token_s")
        lat = s.get("token_latency_s", {})
        out["per-token latency p50 / p95 / p99"] = " / ".join(
            "–" if lat.get(q) is None else f"{1e3 * lat[q]:.2f} ms" for q in ("p50", "p95", "p99")
        )
        if s.get("operating_points"):
            out["operating point (cheapest within the latency targets)"] = (
                f"batch {s['batch_size']} of {', '.join(str(p['batch_size']) for p in s['operating_points'])}"
            )
            shares = [p for p in s["operating_points"] if p.get("decode_fraction") is not None]
            if shares:
                out["decode / bandwidth bound, by batch"] = ", ".join(
                    f"{p['batch_size']}: {p['decode_fraction']:.0%}" for p in shares
                )
        if s.get("sweep_stopped"):
            out["batch sweep stopped"] = s["sweep_stopped"]
        if s.get("served"):
            out["requests served at once"] = served_text(s["served"])
        if "latency_misses" in s:
            out["latency targets"] = "missed: " + "; ".join(s["latency_misses"]) if s["latency_misses"] else "met"
        roof = s.get("roofline")
        if roof:
            out[f"decode / memory-bandwidth bound ({roof['entry']})"] = (
                f"{roof['decode_fraction']:.0%} of {num(roof['decode_bound_tokens_per_s'])} tokens/s"
            )
            out[f"prefill / compute bound ({roof['entry']})"] = (
                f"{roof['prefill_fraction']:.0%} of {num(roof['prefill_bound_tokens_per_s'])} tokens/s ({roof['compute_dtype']})"
            )
            m = roof.get("machine")
            if m:
                out[f"decode / this machine's read bandwidth ({m['read_gb_s']:.0f} GB/s, measured)"] = (
                    f"{m['decode_fraction']:.0%} of {num(m['decode_bound_tokens_per_s'])} tokens/s"
                )
                if m["prefill_fraction"] is not None:
                    out[f"prefill / this machine's {m['matmul_dtype']} matmul ({m['matmul_tflops']:.2f} TFLOP/s, measured)"] = (
                        f"{m['prefill_fraction']:.0%} of {num(m['prefill_bound_tokens_per_s'])} tokens/s"
                    )
    else:
        out["encode tokens/s"] = stat("input_tokens_per_s")
        out["sequences/s"] = stat("sequences_per_s")
        for key, label in (
            ("request_latency_s", "request latency p50 / p95 / p99 (arrival-order batches, as served)"),
            ("batch_latency_s", "batch latency p50 / p95 / p99 (length-sorted batches)"),
        ):
            lat = s.get(key) or {}
            out[label] = " / ".join("–" if lat.get(q) is None else f"{1e3 * lat[q]:.1f} ms" for q in ("p50", "p95", "p99"))
    alone = (f.memory_alone if f else None) or {}
    out["peak memory served alone (RSS)"] = mib(alone.get("peak_rss_bytes"))
    out["peak memory of the benchmark process (RSS; holds the baseline too)"] = mib(s.get("peak_rss_bytes"))
    if s.get("peak_cuda_bytes"):
        out["peak GPU memory"] = mib(s["peak_cuda_bytes"])
    out["parameters"] = f"{f.parameters:,}" if f else "–"
    out["non-zero parameters"] = f"{f.nonzero_parameters:,}" if f else "–"
    out["weights on disk"] = mib(f.weight_bytes if f else None)
    out["artifact on disk"] = mib(f.disk_bytes if f else None)
    return out
