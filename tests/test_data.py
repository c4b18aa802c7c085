"""Data sources: determinism, disjoint splits, file formats, clear errors."""

from __future__ import annotations

import json

import pytest

from optimizer.data import load_dataset, stdlib_docs, stdlib_split
from optimizer.errors import UserError
from optimizer.recipe import DataSource


def test_stdlib_docs_is_real_english_and_deterministic():
    docs = stdlib_docs()
    assert len(docs) > 1000
    assert all(d.summary and d.summary.isascii() for d in docs)
    first = [d.qualname for d in docs]
    stdlib_docs.cache_clear()
    assert [d.qualname for d in stdlib_docs()] == first
    words = sum(len(d.text.split()) for d in docs)
    assert words > 50_000


def test_splits_are_disjoint_and_cover_everything():
    roles = {r: {e.qualname for e in stdlib_split(r)} for r in ("eval", "calibration", "train")}
    assert not roles["eval"] & roles["calibration"]
    assert not roles["eval"] & roles["train"]
    assert not roles["calibration"] & roles["train"]
    assert sum(map(len, roles.values())) == len(stdlib_docs())
    texts = {r: set(load_dataset(DataSource(source="stdlib-docs"), r, "causal-lm").texts) for r in roles}
    assert not texts["eval"] & texts["train"]


def test_docstrings_do_not_depend_on_walk_order():
    from optimizer import stdlib_walk

    modules = stdlib_walk.stdlib_modules()[:120]
    assert stdlib_walk.docstrings(modules) == stdlib_walk.docstrings(tuple(reversed(modules)))


def test_stdlib_docs_do_not_depend_on_what_the_process_imported():
    """transformers adds logging.Logger.warning_once and torch wraps inspect.getfile when imported: the eval
    set is read in a clean interpreter, so a process that imported them first gets the same docstrings."""
    import subprocess
    import sys

    code = "import torch, transformers; from optimizer.data import stdlib_docs; print(len(stdlib_docs()), stdlib_docs()[-1])"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    docs = stdlib_docs()
    assert fresh == f"{len(docs)} {docs[-1]}"
    assert not any(d.qualname.endswith(".warning_once") for d in docs)


def test_retrieval_pairs_align():
    ds = load_dataset(DataSource(source="stdlib-docs"), "eval", "embedding")
    assert ds.kind == "pairs" and len(ds.texts) == len(ds.texts_b) > 200
    by_summary = {e.summary: e.body for e in stdlib_split("eval")}
    for q, d in zip(ds.texts[:50], ds.texts_b[:50], strict=False):
        assert by_summary[q] == d
    inter = ds.interleaved()
    assert inter[0] == ds.texts[0] and inter[1] == ds.texts_b[0]


def test_limit_is_seeded_subset():
    src = DataSource(source="stdlib-docs", limit=40)
    a = load_dataset(src, "eval", "embedding", seed=1)
    b = load_dataset(src, "eval", "embedding", seed=1)
    c = load_dataset(src, "eval", "embedding", seed=2)
    assert len(a) == 40 and a.texts == b.texts and a.texts != c.texts
    assert all(t in load_dataset(DataSource(source="stdlib-docs"), "eval", "embedding").texts for t in a.texts)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_file_formats(tmp_path, fmt):
    rows = [{"query": f"q{i}", "document": f"doc {i}"} for i in range(5)]
    path = tmp_path / f"pairs.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    elif fmt == "csv":
        path.write_text("query,document\n" + "\n".join(f"{r['query']},{r['document']}" for r in rows))
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    ds = load_dataset(DataSource(source=str(path)), "eval", "embedding")
    assert ds.kind == "pairs" and ds.texts == [r["query"] for r in rows] and ds.texts_b[2] == "doc 2"
    calib = load_dataset(DataSource(source=str(path)), "calibration", "embedding")
    assert calib.kind == "text" and len(calib) == 10


def test_txt_scored_and_labeled(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\nsecond line\n")
    assert load_dataset(DataSource(source=str(tmp_path / "a.txt")), "eval", "causal-lm").texts == ["first line", "second line"]
    (tmp_path / "s.jsonl").write_text('{"text": "a", "text_b": "b", "score": 0.5}\n')
    assert load_dataset(DataSource(source=str(tmp_path / "s.jsonl")), "eval", "embedding").scores == [0.5]
    (tmp_path / "l.csv").write_text("sentence,y\ngood,pos\nbad,neg\n")
    ds = load_dataset(
        DataSource(source=str(tmp_path / "l.csv"), text_field="sentence", label_field="y"), "eval", "classification"
    )
    assert ds.kind == "labeled" and ds.labels == ["pos", "neg"]


def test_data_errors(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"query": "a", "document": "b"}\n{not json}\n')
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        load_dataset(DataSource(source=str(tmp_path / "bad.jsonl")), "eval", "embedding")
    (tmp_path / "m.jsonl").write_text('{"query": "a", "document": "b"}\n{"query": "c"}\n')
    with pytest.raises(UserError, match="record 2 has no field 'document'"):
        load_dataset(DataSource(source=str(tmp_path / "m.jsonl")), "eval", "embedding")
    (tmp_path / "x.dat").write_text("x")
    with pytest.raises(UserError, match="cannot tell the format"):
        load_dataset(DataSource(source=str(tmp_path / "x.dat")), "eval", "causal-lm")
    with pytest.raises(UserError, match="not 'labeled'"):
        load_dataset(DataSource(source="stdlib-docs", kind="labeled"), "eval", "classification")


def test_stdlib_docs_split_union_reads_several_parts_and_never_calibration():
    from optimizer.recipe import DataSource

    ev = load_dataset(DataSource(source="stdlib-docs"), "eval", "embedding")
    train = load_dataset(DataSource(source="stdlib-docs", kind="pairs"), "train", "embedding")
    both = load_dataset(DataSource(source="stdlib-docs", split="eval+train"), "eval", "embedding")
    calib = load_dataset(DataSource(source="stdlib-docs"), "calibration", "embedding")
    assert len(both) == len(ev) + len(train) and both.origin == "stdlib-docs/eval+train"
    assert not {f"{q}\n{d}" for q, d in zip(both.texts, both.texts_b, strict=False)} & set(calib.texts)
    with pytest.raises(UserError, match="no split 'test'"):
        load_dataset(DataSource(source="stdlib-docs", split="eval+test"), "eval", "embedding")


def test_stdlib_docs_name_queries_are_a_second_query_per_pair_and_travel_with_their_example(tmp_path):
    from optimizer.data import name_words
    from optimizer.recipe import DataSource

    plain = load_dataset(DataSource(source="stdlib-docs"), "eval", "embedding")
    named = load_dataset(DataSource(source="stdlib-docs", name_queries=True), "eval", "embedding")
    assert named.texts == plain.texts and named.texts_b == plain.texts_b and len(named.queries_2) == len(named)
    assert name_words("json.JSONDecoder.raw_decode") == "json JSONDecoder raw decode"
    assert named.all_texts()[2 * len(named) :] == named.queries_2
    rest, held = named.split(0.5, seed=0)
    pick = dict(zip(named.texts, named.queries_2, strict=True))
    assert all(pick[t] == q for part in (rest, held) for t, q in zip(part.texts, part.queries_2, strict=True))
    assert named.with_prefixes("query: ", "passage: ").queries_2[0] == "query: " + named.queries_2[0]
    with pytest.raises(UserError, match="name_queries is for stdlib-docs"):
        load_dataset(DataSource(source=str(tmp_path / "x.jsonl"), name_queries=True), "eval", "embedding")
    (tmp_path / "p.jsonl").write_text('{"query": "a", "document": "b", "q2": "c"}\n')
    own = load_dataset(DataSource(source=str(tmp_path / "p.jsonl"), second_query_field="q2"), "eval", "embedding")
    assert own.queries_2 == ["c"]


def test_stdlib_reference_is_text_disjoint_from_stdlib_docs():
    from optimizer.data import DataSource, load_dataset, stdlib_docs

    ref = load_dataset(DataSource(source="stdlib-reference"), "train", "embedding")
    assert ref.kind == "text" and len(ref) > 1000 and all(len(t.split()) >= 8 for t in ref.all_texts())
    assert ref.all_texts() == load_dataset(DataSource(source="stdlib-reference"), "train", "embedding").all_texts()
    docs = {e.text for e in stdlib_docs()}
    assert not docs & set(ref.all_texts())
    with pytest.raises(UserError, match="plain text, not pairs"):
        load_dataset(DataSource(source="stdlib-reference", kind="pairs"), "eval", "embedding")
