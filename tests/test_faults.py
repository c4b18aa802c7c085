"""Run-level faults: broken inputs, a damaged or locked study, a read-only or full disk, concurrent deploys.

Each one is a one-line error (exit 2) or a recorded failure, and nothing finished is lost. The disk
faults are real: a read-only bind mount and a small tmpfs, set up in a user and mount namespace
(`unshare -rm`); those tests skip where the kernel does not allow one.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from optimizer.cli import main

REPO = Path(__file__).resolve().parents[1]


def _recipe(model: Path, out: Path, eval_source: str = "stdlib-docs", passes: list | None = None, **extra) -> dict:
    return {
        "name": "faults",
        "model": {"source": str(model)},
        "task": "embedding",
        "data": {"eval": {"source": eval_source, "limit": 40}},
        "quality": {"metrics": ["mrr", "fidelity"], "bootstrap": 100},
        "speed": {"memory_alone": False, "batch_size": 4, "texts": 16, "warmup": 0, "repeats": 1},
        "hardware": {"threads": 1, "catalog": "aws-c7a.large"},
        "output_dir": str(out),
        "passes": passes or [],
    } | extra


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("costopt: error: "), err
    return err[0]


EVAL_FAULTS = {  # file name -> (bytes, what the error must say)
    "missing.jsonl": (None, "does not exist"),
    "empty.jsonl": (b"", "holds no records"),
    "columns.jsonl": (b'{"a": 1, "b": 2}\n', "has no field"),
    "columns.csv": (b"a,b\n1,2\n", "has no field"),
    "latin1.jsonl": ('{"query": "caf\xe9", "document": "x"}\n'.encode("latin-1"), "is not UTF-8 text (byte 0xe9"),
    "latin1.txt": ("na\xefve\n".encode("latin-1"), "is not UTF-8 text (byte 0xef"),
    "folder.jsonl": ("dir", "is a folder, not a file"),
}


@pytest.mark.parametrize("name", list(EVAL_FAULTS))
def test_a_broken_eval_file_is_a_one_line_error(name, tiny_bert_dir, write_recipe, tmp_path, capsys):
    content, says = EVAL_FAULTS[name]
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    recipe = write_recipe(_recipe(tiny_bert_dir, tmp_path / "runs", str(path)))
    assert main(["run", str(recipe), "-q"]) == 2
    assert says in _one_line_error(capsys)


def _damaged_copy(model: Path, tmp_path: Path, how: str) -> Path:
    folder = tmp_path / how
    shutil.copytree(model, folder)
    weights = folder / "model.safetensors"
    if how == "header-cut":
        weights.write_bytes(weights.read_bytes()[:40])
    elif how == "tail-cut":  # the header is whole; the tensors it lists are not all there
        weights.write_bytes(weights.read_bytes()[:-64])
    elif how == "no-tokenizer":
        for f in folder.iterdir():
            if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
                f.unlink()
    return folder


@pytest.mark.parametrize(
    "how, says",
    [
        ("header-cut", "could not load the embedding model"),
        ("tail-cut", "could not load the embedding model"),
        ("no-tokenizer", "has no vocabulary"),
    ],
)
def test_a_damaged_model_folder_is_a_one_line_error_and_recorded(how, says, tiny_bert_dir, write_recipe, tmp_path, capsys):
    model = _damaged_copy(tiny_bert_dir, tmp_path, how)
    recipe = write_recipe(_recipe(model, tmp_path / "runs"))
    assert main(["run", str(recipe), "-q"]) == 2
    assert says in _one_line_error(capsys)
    if how != "no-tokenizer":  # the tokenizer is read with the data, before a run folder exists
        [result] = (tmp_path / "runs").glob("faults-*/result.json")
        r = json.loads(result.read_text())
        assert r["status"] == "failed" and says in r["error"] and "traceback" not in r


def _search_recipe(tiny_bert_dir: Path, tmp_path: Path, write_recipe, trials: int, confirm: bool = True) -> Path:
    return write_recipe(
        _recipe(
            tiny_bert_dir,
            tmp_path / "runs",
            passes=[{"name": "cast", "dtype": {"choice": ["bfloat16", "float16"]}}],
            search={
                "trials": trials,
                "sampler": "grid",
                "screen_examples": None,
                "constraint": {"metric": "fidelity", "max_drop": 0.5},
            }
            | ({} if confirm else {"confirm": {"share": 0}}),
        ),
        "search.yaml",
    )


def test_a_study_db_that_is_not_a_database_is_refused_and_left_as_it_was(tiny_bert_dir, write_recipe, tmp_path, capsys):
    recipe = _search_recipe(tiny_bert_dir, tmp_path, write_recipe, trials=1)
    db = tmp_path / "runs" / "faults" / "study.db"
    db.parent.mkdir(parents=True)
    junk = b"SQLite format 2\x00" + bytes(range(256)) * 8
    db.write_bytes(junk)
    assert main(["search", str(recipe), "-q"]) == 2
    line = _one_line_error(capsys)
    assert "is not a usable database" in line and "move the file aside" in line
    assert db.read_bytes() == junk  # whatever it held is not overwritten


def test_a_locked_study_db_is_waited_for_then_refused_in_one_line(tiny_bert_dir, write_recipe, tmp_path, capsys, monkeypatch):
    from optimizer import storage

    # no held-out confirmation: what is tested is the study database, which the searches before it touch
    recipe = _search_recipe(tiny_bert_dir, tmp_path, write_recipe, trials=1, confirm=False)
    assert main(["search", str(recipe), "-q"]) == 0
    db = tmp_path / "runs" / "faults" / "study.db"
    capsys.readouterr()

    def hold(seconds: float) -> threading.Thread:
        locked = threading.Event()

        def run() -> None:
            con = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
            con.execute("BEGIN EXCLUSIVE")
            locked.set()
            time.sleep(seconds)
            con.execute("ROLLBACK")
            con.close()

        t = threading.Thread(target=run)
        t.start()
        locked.wait()
        return t

    holder = hold(2.0)  # another writer holds it briefly: the search waits, then resumes the study
    assert main(["search", str(recipe), "-q", "--trials", "2"]) == 0
    holder.join()
    trials = _trials(db)
    assert [t[1] for t in trials] == ["COMPLETE", "COMPLETE"]

    monkeypatch.setattr(storage, "SQLITE_LOCK_WAIT_S", 0.5)
    holder = hold(4.0)  # held past the wait: a one-line refusal, and the study is untouched
    assert main(["search", str(recipe), "-q", "--trials", "3"]) == 2
    holder.join()
    assert "database is locked" in _one_line_error(capsys)
    assert _trials(db) == trials


def _trials(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT number, state FROM trials ORDER BY number").fetchall()


# ----------------------------------------------------------------------------- disk faults
def _namespaces_work() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(not _namespaces_work(), reason="no user+mount namespaces (unshare -rm) here")


def _costopt_in_namespace(setup: str, args: list[str], after: str = "") -> subprocess.CompletedProcess[str]:
    """`python -m optimizer.cli ARGS` after `setup` (mount commands) in a private mount namespace; `after`
    runs there too (the namespace's mounts vanish with it), and the exit status is costopt's."""
    cmd = " ".join([sys.executable, "-m", "optimizer.cli", *args])
    script = f"{setup} || exit 99; {cmd}; code=$?; {after} exit $code"
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)


@needs_namespaces
def test_a_read_only_output_folder_is_refused_before_any_work(tiny_bert_dir, write_recipe, tmp_path):
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    recipe = write_recipe(_recipe(tiny_bert_dir, shelf / "runs"))
    search = _search_recipe(tiny_bert_dir, tmp_path, write_recipe, trials=1)
    search.write_text(search.read_text().replace(str(tmp_path / "runs"), str(shelf / "runs")))
    ro = f"mount --bind {shelf} {shelf} && mount -o remount,bind,ro {shelf}"
    for command in (["run", str(recipe), "-q"], ["search", str(search), "-q"]):
        done = _costopt_in_namespace(ro, command)
        err = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(err) == 1, done.stderr
        assert err[0].startswith("costopt: error: cannot write results to") and "Read-only file system" in err[0]
    assert not any(shelf.iterdir())


@needs_namespaces
def test_a_full_disk_while_saving_keeps_the_baseline_result_and_removes_partial_files(tiny_bert_dir, write_recipe, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    # 64 KiB: the baseline's result.json fits, the exported graph does not
    recipe = write_recipe(_recipe(tiny_bert_dir, disk / "runs", passes=[{"name": "onnx-export"}]))
    done = _costopt_in_namespace(
        f"mount -t tmpfs -o size=64k tmpfs {disk}", ["run", str(recipe), "-q"], after=f"cp -r {disk}/runs {tmp_path}/kept;"
    )
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, done.stderr
    assert "No space left on device" in err[0] and "finished results are on disk" in err[0]
    [run_dir] = (tmp_path / "kept").iterdir()
    assert sorted(p.name for p in run_dir.iterdir()) == ["result.json"]  # no partial graph, work folder or temp file
    r = json.loads((run_dir / "result.json").read_text())
    assert r["status"] == "failed" and "No space left" in r["error"]
    assert r["baseline"]["quality"]["mrr"] > 0 and r["baseline"]["speed"]["input_tokens_per_s"]["median"] > 0


# ----------------------------------------------------------------------------- concurrent deploys
def test_concurrent_writers_of_one_folder_leave_one_whole_folder(tmp_path):
    from optimizer.results import atomic_folder

    dest = tmp_path / "deployment"
    start = threading.Barrier(6)

    def write(writer: int) -> None:
        start.wait()
        with atomic_folder(dest) as folder:
            folder.mkdir()
            for part in range(20):
                (folder / f"part-{part}").write_text(str(writer))
                time.sleep(0.001)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writers = {f.read_text() for f in dest.iterdir()}
    assert len(writers) == 1 and len(list(dest.iterdir())) == 20  # one writer's whole folder, never a mix
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".deployment.lock") == ["deployment"]

    with pytest.raises(OSError), atomic_folder(dest) as folder:  # a failed write leaves the old folder as it was
        folder.mkdir()
        (folder / "part-0").write_text("partial")
        raise OSError(28, "No space left on device")
    assert {f.read_text() for f in dest.iterdir()} == writers and len(list(dest.iterdir())) == 20
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".deployment.lock") == ["deployment"]


@pytest.mark.slow
def test_two_deploys_into_one_folder_at_once_leave_one_loadable_deployment(tiny_bert_dir, write_recipe, tmp_path, capsys):
    import numpy as np

    import optimizer

    recipe = _search_recipe(tiny_bert_dir, tmp_path, write_recipe, trials=1)
    assert main(["search", str(recipe), "-q"]) == 0
    deploy_file = tmp_path / "runs" / "faults" / "deploy.yaml"
    out = tmp_path / "served"
    cmd = [sys.executable, "-m", "optimizer.cli", "deploy", str(deploy_file), "--out", str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".served", "served"))) == [".served.lock", "served"]
    dep = optimizer.load_deployment(out)
    emb = dep(["two deploys at once", "leave one deployment"])
    assert yaml.safe_load((out / "deploy.yaml").read_text())["schema"] == "costopt.deploy/1"
    assert emb.shape[0] == 2 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
