"""The report's building blocks (tables, paragraphs, bullet lists, charts, sections) and the few number
helpers every section writes with; `render` turns a `Document` into Markdown or HTML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Chart:
    name: str  # file stem for Markdown's image
    svg: str
    alt: str
    caption: str


Block = Table | Para | Bullets | Chart


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    title: str
    summary: list[str]
    sections: list[Section]
    footer: str


# ----------------------------------------------------------------------------- number formats


def tokens_per_s(e: dict[str, Any] | None, key: str = "input_tokens_per_s") -> float | None:
    v = ((e or {}).get("speed") or {}).get(key)
    return None if not v else v["median"]


# ----------------------------------------------------------------------------- sections
