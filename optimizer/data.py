"""Evaluation, calibration and training data.

Sources: JSONL, CSV, TXT and parquet files; Hugging Face datasets (`hf:<name>`, needs the `data`
extra); the built-in `stdlib-docs`: real English from the Python standard library's
docstrings, as plain text or as retrieval pairs (summary line -> rest of the docstring); and the
built-in `stdlib-reference`: the paragraphs of the Python language reference that ships with the
standard library (pydoc_data.topics), plain text that shares nothing with stdlib-docs, so a student
can be trained on it while every stdlib-docs pair stays in the eval set.

stdlib-docs splits are assigned by a hash of each docstring's qualified name, so they are
deterministic and disjoint whatever order the modules are walked in.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import random
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from optimizer.errors import UserError


class DataSource(BaseModel):
    """One data source of the recipe's `data:` section."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="stdlib-docs, stdlib-reference (text), a file path, or hf:<dataset name>")
    format: Literal["auto", "jsonl", "csv", "txt", "parquet"] = "auto"
    kind: Literal["auto", "text", "pairs", "scored-pairs", "labeled"] = "auto"
    split: str | None = Field(
        default=None,
        description="HF datasets: the split (default train); stdlib-docs: "
        "eval, calibration, train or a '+' union (default: the role's own part)",
    )
    config: str | None = None
    text_field: str = "text"
    query_field: str = "query"
    document_field: str = "document"
    text_b_field: str = "text_b"
    score_field: str = "score"
    label_field: str = "label"
    second_query_field: str | None = Field(
        default=None,
        description="pairs: a second query for each example's document (a paraphrase, another user's question); "
        "each example's retrieval figures are the mean over its queries, so its interval narrows without a new document",
    )
    name_queries: bool = Field(
        default=False,
        description="stdlib-docs pairs: each docstring's qualified name, as words, is a second query for its body "
        "(json.JSONDecoder.raw_decode -> 'json JSONDecoder raw decode')",
    )
    limit: int | None = Field(default=None, gt=0)


log = logging.getLogger(__name__)

Kind = Literal["text", "pairs", "scored-pairs", "labeled"]
Role = Literal["eval", "calibration", "train"]


@dataclass
class Dataset:
    """texts always; texts_b for pairs (documents) and scored pairs; scores or labels when present;
    queries_2 for pairs with a second query per document."""

    kind: Kind
    texts: list[str]
    texts_b: list[str] | None = None
    scores: list[float] | None = None
    labels: list[Any] | None = None
    origin: str = ""
    queries_2: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def all_texts(self) -> list[str]:
        """Every text in the set: texts, then texts_b, then queries_2 (evaluators rely on this order)."""
        return self.texts + (self.texts_b or []) + (self.queries_2 or [])

    def subset(self, n: int, seed: int) -> Dataset:
        """A seeded, deterministic sample of n examples, in their original order."""
        if n >= len(self):
            return self
        return self._pick(sorted(random.Random(seed).sample(range(len(self)), n)))

    def _pick(self, idx: list[int]) -> Dataset:
        pick = lambda xs: [xs[i] for i in idx] if xs else None  # noqa: E731
        return Dataset(
            self.kind,
            [self.texts[i] for i in idx],
            pick(self.texts_b),
            pick(self.scores),
            pick(self.labels),
            origin=self.origin,
            queries_2=pick(self.queries_2),
        )

    def split(self, share: float, seed: int) -> tuple[Dataset, Dataset]:
        """(the rest, a held-out part of about `share`), each in the original order.

        An example's part is decided by a hash of its own text and the seed, so it stays in the same
        part when the set is reordered, grows or is filtered."""
        held = [_share_of(f"{seed}\0{t}") < share for t in self.texts]
        return self._pick([i for i, h in enumerate(held) if not h]), self._pick([i for i, h in enumerate(held) if h])

    def with_prefixes(self, first: str, second: str) -> Dataset:
        """The same examples with `first` before each text and second query, `second` before each texts_b entry."""
        if not first and not second:
            return self
        return dataclasses.replace(
            self,
            texts=[first + t for t in self.texts],
            texts_b=[second + t for t in self.texts_b] if self.texts_b else None,
            queries_2=[first + t for t in self.queries_2] if self.queries_2 else None,
        )

    def interleaved(self) -> list[str]:
        """texts[0], texts_b[0], texts[1], ...: any prefix mixes short queries and long documents."""
        if not self.texts_b:
            return list(self.texts)
        return [t for pair in zip(self.texts, self.texts_b, strict=False) for t in pair]


# ----------------------------------------------------------------------------- stdlib-docs
# Share of docstrings per role, by hash bucket out of 100.
SPLIT_BUCKETS: dict[Role, range] = {"eval": range(0, 30), "calibration": range(30, 40), "train": range(40, 100)}


@dataclass(frozen=True)
class DocEntry:
    qualname: str
    summary: str
    body: str

    @property
    def text(self) -> str:
        return f"{self.summary}\n{self.body}" if self.body else self.summary


@lru_cache(maxsize=1)
def stdlib_docs() -> tuple[DocEntry, ...]:
    """All usable docstrings, sorted by qualified name, deduplicated by text.

    Read in a fresh interpreter without site-packages (stdlib_walk): third-party packages patch the
    standard library when imported (transformers adds logging.Logger.warning_once, torch wraps
    inspect.getfile), and the eval set must not depend on what this process imported before."""
    script = Path(__file__).with_name("stdlib_walk.py")
    done = subprocess.run([sys.executable, "-I", "-S", str(script)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"reading the standard library's docstrings failed: {done.stderr.strip()[-500:]}")
    return tuple(DocEntry(*row) for row in json.loads(done.stdout))


def _bucket(qualname: str) -> int:
    return int.from_bytes(hashlib.sha1(qualname.encode()).digest()[:4], "big") % 100


def _share_of(key: str) -> float:
    """A stable number in [0, 1) for `key`."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64


def stdlib_split(role: Role) -> list[DocEntry]:
    buckets = SPLIT_BUCKETS[role]
    return [e for e in stdlib_docs() if _bucket(e.qualname) in buckets]


def _stdlib_parts(split: str | None, role: Role) -> list[Role]:
    """stdlib-docs parts a data source reads: its own role's by default, or `split` ('eval+train', ...)."""
    if split is None:
        return [role]
    parts = [x.strip() for x in split.split("+")]
    for x in parts:
        if x not in SPLIT_BUCKETS:
            raise UserError(
                f"stdlib-docs has no split {x!r}", f"use {', '.join(SPLIT_BUCKETS)} or several joined by '+', e.g. eval+train"
            )
    return parts  # type: ignore[return-value]


PAIR_BODY_WORDS = 12


@lru_cache(maxsize=1)
def _shared_summaries() -> frozenset[str]:
    """Summary lines of more than one retrieval-worthy docstring, over every split (so no split depends on another)."""
    seen = Counter(e.summary for e in stdlib_docs() if len(e.body.split()) >= PAIR_BODY_WORDS)
    return frozenset(s for s, n in seen.items() if n > 1)


def name_words(qualname: str) -> str:
    """A qualified name as the words a reader would search with: json.JSONDecoder.raw_decode -> json JSONDecoder raw decode."""
    return " ".join(qualname.replace("_", " ").replace(".", " ").split())


def _stdlib_dataset(kind: Kind, role: Role, split: str | None = None, name_queries: bool = False) -> Dataset:
    parts = _stdlib_parts(split, role)
    entries = [e for part in parts for e in stdlib_split(part)]
    role = "+".join(parts)  # type: ignore[assignment]
    if kind == "pairs":
        # A retrieval pair needs a body with substance, else the task is guessing, and a summary no other
        # docstring shares (Event.wait's and Condition.wait's, say), else it has two right answers.
        shared = _shared_summaries()
        entries = [e for e in entries if len(e.body.split()) >= PAIR_BODY_WORDS and e.summary not in shared]
        names = [name_words(e.qualname) for e in entries] if name_queries else None
        origin = f"stdlib-docs/{role}" + (" (summary and name queries)" if name_queries else "")
        return Dataset("pairs", [e.summary for e in entries], [e.body for e in entries], origin=origin, queries_2=names)
    if kind == "text":
        return Dataset("text", [e.text for e in entries if len(e.text.split()) >= 8], origin=f"stdlib-docs/{role}")
    raise UserError(
        f"stdlib-docs provides text and retrieval pairs, not {kind!r}",
        "use kind: text or kind: pairs, or give a file with scores or labels",
    )


# ----------------------------------------------------------------------------- files
def _read_records(path: Path, fmt: str) -> list[dict[str, Any]]:
    if fmt == "jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}: line {i} is not valid JSON ({e.msg})", "write one JSON object per line") from None
        return rows
    if fmt == "csv":
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if fmt == "txt":
        return [{"text": line.strip()} for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError("reading parquet needs pyarrow", "pip install 'costopt[data]'") from None
        return pq.read_table(path).to_pylist()
    raise AssertionError(fmt)


def _read_file(path: Path, fmt: str) -> list[dict[str, Any]]:
    """The file's records, or a one-line error naming what is wrong with the file itself."""
    try:
        return _read_records(path, fmt)
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})",
            "re-save it as UTF-8 (for example: iconv -f latin1 -t utf-8)",
        ) from None
    except (OSError, csv.Error, ValueError) as e:  # a folder, a permission, a broken CSV or parquet file
        raise UserError(
            f"could not read {path} as {fmt}: {str(e).splitlines()[0][:200]}", f"give a readable {fmt} file"
        ) from None


def _read_hf(src: DataSource) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise UserError("Hugging Face datasets need the datasets package", "pip install 'costopt[data]'") from None
    name = src.source.removeprefix("hf:")
    try:
        ds = datasets.load_dataset(name, src.config, split=src.split or "train")
    except Exception as e:  # the datasets library raises many types for "cannot get it"
        raise UserError(
            f"could not load dataset {name!r} split {src.split!r}: {str(e).splitlines()[0][:160]}",
            "check the name, config and split; where the hub is unreachable, export it to a "
            "jsonl/parquet file and point data.*.source at that file",
        ) from None
    return [dict(r) for r in ds]


def _guess_kind(rows: list[dict[str, Any]], src: DataSource) -> Kind:
    keys = set(rows[0]) if rows else set()
    if src.query_field in keys and src.document_field in keys:
        return "pairs"
    if src.text_field in keys and src.text_b_field in keys and src.score_field in keys:
        return "scored-pairs"
    if src.text_field in keys and src.label_field in keys:
        return "labeled"
    return "text"


def _field(rows: list[dict[str, Any]], name: str, origin: str) -> list[Any]:
    missing = next((i for i, r in enumerate(rows) if r.get(name) in (None, "")), None)
    if missing is not None:
        have = ", ".join(sorted(rows[missing]))
        raise UserError(
            f"{origin}: record {missing + 1} has no field {name!r} (it has: {have})",
            "set the matching *_field option in the recipe's data section",
        )
    return [r[name] for r in rows]


def _dataset_from_rows(rows: list[dict[str, Any]], kind: Kind, src: DataSource, origin: str) -> Dataset:
    if not rows:
        raise UserError(f"{origin} holds no records", "give a file with at least one example")
    if kind == "text":
        return Dataset("text", [str(t) for t in _field(rows, src.text_field, origin)], origin=origin)
    if kind == "pairs":
        second = src.second_query_field
        return Dataset(
            "pairs",
            [str(t) for t in _field(rows, src.query_field, origin)],
            [str(t) for t in _field(rows, src.document_field, origin)],
            origin=origin,
            queries_2=[str(t) for t in _field(rows, second, origin)] if second else None,
        )
    if kind == "scored-pairs":
        scores = _field(rows, src.score_field, origin)
        try:
            scores = [float(s) for s in scores]
        except ValueError:
            raise UserError(f"{origin}: field {src.score_field!r} holds non-numbers", "scores must be numbers") from None
        return Dataset(
            "scored-pairs",
            [str(t) for t in _field(rows, src.text_field, origin)],
            [str(t) for t in _field(rows, src.text_b_field, origin)],
            scores=scores,
            origin=origin,
        )
    return Dataset(
        "labeled",
        [str(t) for t in _field(rows, src.text_field, origin)],
        labels=_field(rows, src.label_field, origin),
        origin=origin,
    )


REFERENCE = "stdlib-reference"


@lru_cache(maxsize=1)
def reference_paragraphs() -> tuple[str, ...]:
    """The Python language reference's paragraphs of 8 words or more, in a fixed order."""
    from pydoc_data.topics import topics

    return tuple(" ".join(p.split()) for key in sorted(topics) for p in topics[key].split("\n\n") if len(p.split()) >= 8)


def load_dataset(src: DataSource, role: Role, task: str, seed: int = 0) -> Dataset:
    """Load one role's data; `limit` keeps a seeded, deterministic subset."""
    wanted: Kind | None = None if src.kind == "auto" else src.kind  # type: ignore[assignment]
    if role != "eval" and wanted is None:
        wanted = "text"  # calibration and training only need text
    if src.name_queries and src.source != "stdlib-docs":
        raise UserError(
            f"name_queries is for stdlib-docs, not {src.source!r}", "give a second query per example with second_query_field"
        )
    if src.source == "stdlib-docs":
        ds = _stdlib_dataset(wanted or ("pairs" if task == "embedding" else "text"), role, src.split, src.name_queries)
    elif src.source == REFERENCE:
        if wanted not in (None, "text"):
            raise UserError(
                f"{REFERENCE} is plain text, not {wanted}", "use it for data.train or data.calibration, or set kind: text"
            )
        ds = Dataset("text", list(reference_paragraphs()), origin=REFERENCE)
    else:
        if src.source.startswith("hf:"):
            rows = _read_hf(src)
        else:
            path = Path(src.source)
            fmt = src.format if src.format != "auto" else path.suffix.lstrip(".").lower()
            if fmt not in ("jsonl", "csv", "txt", "parquet"):
                raise UserError(f"cannot tell the format of {path.name!r}", "set format: jsonl, csv, txt or parquet")
            rows = _read_file(path, fmt)
        kind = wanted or _guess_kind(rows, src)
        if kind == "text" and role != "eval" and rows and src.text_field not in rows[0]:
            # calibration/training from a pairs or labelled file: use every text column we know
            ds_full = _dataset_from_rows(rows, _guess_kind(rows, src), src, src.source)
            ds = Dataset("text", ds_full.all_texts(), origin=src.source)
        else:
            ds = _dataset_from_rows(rows, kind, src, src.source)
    if src.limit:
        ds = ds.subset(src.limit, seed)
    if not len(ds):
        raise UserError(f"data.{role} from {src.source!r} is empty after filtering", "give more data or raise limit")
    return ds
