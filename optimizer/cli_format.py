"""Plain-text tables for the command line."""

from __future__ import annotations

from typing import Any


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def chain_text(passes: list[dict[str, Any]]) -> str:
    """'onnx-export() -> ort-int8-dynamic(per_channel=True)'; '(baseline)' for no passes."""
    return (
        " -> ".join(f"{p['name']}({', '.join(f'{k}={v}' for k, v in p.get('params', {}).items())})" for p in passes)
        or "(baseline)"
    )
