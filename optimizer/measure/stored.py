"""The typed figures inside the record (Drop, WidthCheck, Price, Footprint) are stored as their dicts: one
way to write one and to read it back from whatever version wrote it."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, ClassVar, Self


class Stored:
    """Mixin for a dataclass figure: `to_json` is its dict; `from_json` reads a stored one back, dropping
    fields this version does not know and giving those an older version did not write `_defaults` (or the
    field's own default)."""

    _defaults: ClassVar[dict[str, Any]] = {}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, d: Self | dict[str, Any]) -> Self:
        if isinstance(d, cls):
            return d
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**(cls._defaults | {k: v for k, v in d.items() if k in known}))  # type: ignore[union-attr]

    @classmethod
    def maybe(cls, d: Self | dict[str, Any] | None) -> Self | None:
        return cls.from_json(d) if d else None
