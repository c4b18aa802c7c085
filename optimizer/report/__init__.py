"""`costopt report`: a run or a search -> Markdown, self-contained HTML and JSON, with charts.

sources (what was pointed at) -> build (the content as JSON) -> plots + document -> render.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from optimizer.report.build import SCHEMA, build_report
from optimizer.report.sources import RunSource, StudySource, open_source
from optimizer.results import json_default

FORMATS = ("md", "html", "json")

__all__ = ["FORMATS", "SCHEMA", "build_report", "open_source", "write_report", "RunSource", "StudySource"]


def charts(report: dict[str, Any]) -> dict[str, str]:
    from optimizer.report import plots

    out = {}
    for name, fn in (("cost-vs-drop", plots.cost_vs_drop), ("cost-by-family", plots.cost_by_family)):
        svg = fn(report)
        if svg is not None:
            out[name] = svg
    for ranking in report.get("sensitivity") or []:
        out[f"sensitivity-{ranking['index']}"] = plots.block_sensitivity(report, ranking)
    return out


def write_report(report: dict[str, Any], out_dir: Path, formats: list[str] | tuple[str, ...] = FORMATS) -> dict[str, Path]:
    """Write the requested formats into out_dir (atomically, one file at a time); returns format -> path."""
    from optimizer.report.document import build_document
    from optimizer.report.render import CHART_PREFIX, to_html, to_markdown
    from optimizer.results import write_text_atomic

    out_dir = Path(out_dir)
    svgs = charts(report) if {"md", "html"} & set(formats) else {}
    doc = build_document(report, svgs)
    written: dict[str, Path] = {}
    if "json" in formats:
        written["json"] = write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2, default=json_default) + "\n")
    if "md" in formats:
        for name, svg in svgs.items():
            write_text_atomic(out_dir / f"{CHART_PREFIX}{name}.svg", svg)
        written["md"] = write_text_atomic(out_dir / "report.md", to_markdown(doc))
    if "html" in formats:
        written["html"] = write_text_atomic(out_dir / "report.html", to_html(doc, report["met"]))
    return written
