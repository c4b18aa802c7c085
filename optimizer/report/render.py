"""A report Document -> GitHub Markdown (charts as SVG files beside it) or one self-contained HTML page
(charts inline, no external assets: it opens offline and can be mailed as one file)."""

from __future__ import annotations

import html
import re

from optimizer.report.blocks import Bullets, Chart, Document, Para, Table

CHART_PREFIX = "report-"


# ----------------------------------------------------------------------------- Markdown
def _md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def to_markdown(doc: Document) -> str:
    out = [f"# {doc.title}", ""]
    out += [f"> {line}\n>" for line in doc.summary]
    out[-1] = out[-1].removesuffix("\n>")
    out.append("")
    for sec in doc.sections:
        out += [f"## {sec.title}", ""]
        for b in sec.blocks:
            if isinstance(b, Table):
                out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
                out.append("|" + "|".join("---" for _ in b.header) + "|")
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            elif isinstance(b, Para):
                out.append(b.text)
            elif isinstance(b, Bullets):
                out += [f"- {item}" for item in b.items]
            elif isinstance(b, Chart):
                out += [f"![{b.alt}]({CHART_PREFIX}{b.name}.svg)", "", f"*{b.caption}*"]
            out.append("")
    out += ["---", f"<sub>{doc.footer}</sub>", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- HTML
_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_EM = re.compile(r"(?<![\w*])\*([^*]+)\*(?![\w*])")


def _inline(text: str) -> str:
    s = html.escape(str(text))
    s = _CODE.sub(r"<code>\1</code>", s)
    s = _BOLD.sub(r"<strong>\1</strong>", s)
    return _EM.sub(r"<em>\1</em>", s)


_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;max-width:1100px;margin:2em auto;padding:0 1.2em}
h1{font-size:1.5em;margin-bottom:.3em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.summary{background:#f3f8f5;border-left:4px solid #1b9e77;padding:.6em 1em;margin:1em 0}
.summary.miss{background:#fbf3ee;border-left-color:#d95f02}.summary p{margin:.35em 0}
table{border-collapse:collapse;margin:.6em 0;font-size:13px;width:100%}
th,td{border:1px solid #ddd;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#f6f6f6}tr:nth-child(even) td{background:#fcfcfc}
td code{font-size:12px;word-break:break-word}code{background:#f2f2f2;padding:0 3px;border-radius:3px}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}figcaption{font-size:13px;color:#555}
footer{margin-top:2em;font-size:12px;color:#666;border-top:1px solid #ddd;padding-top:.6em}
"""


def to_html(doc: Document, met: bool) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(doc.title)}</h1>",
        f'<div class="summary{"" if met else " miss"}">' + "".join(f"<p>{_inline(x)}</p>" for x in doc.summary) + "</div>",
    ]
    for sec in doc.sections:
        parts.append(f"<section><h2>{html.escape(sec.title)}</h2>")
        for b in sec.blocks:
            if isinstance(b, Table):
                parts.append(
                    "<table><thead><tr>"
                    + "".join(f"<th>{_inline(h)}</th>" for h in b.header)
                    + "</tr></thead><tbody>"
                    + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in b.rows)
                    + "</tbody></table>"
                )
            elif isinstance(b, Para):
                parts.append(f"<p>{_inline(b.text)}</p>")
            elif isinstance(b, Bullets):
                parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
            elif isinstance(b, Chart):
                parts.append(
                    f'<figure class="chart" id="chart-{b.name}" role="img" aria-label="{html.escape(b.alt)}">'
                    f"{b.svg}<figcaption>{_inline(b.caption)}</figcaption></figure>"
                )
        parts.append("</section>")
    parts.append(f"<footer>{_inline(doc.footer)}</footer></body></html>")
    return "\n".join(parts)
