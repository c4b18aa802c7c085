"""Writing results so that nothing finished is ever lost: temp file in the same folder, then rename."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from optimizer.errors import UserError


def ensure_writable(folder: Path) -> Path:
    """`folder`, created if needed, once a file could be written in it: a read-only or full disk is
    refused before the minutes of work whose results would have nowhere to go."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(
            f"cannot write results to {folder} ({e.strerror or e})", "point --out (or output_dir) at a writable folder"
        ) from None
    return folder


@contextlib.contextmanager
def atomic_folder(dest: Path) -> Iterator[Path]:
    """A fresh folder next to `dest` to write into; when the block succeeds it replaces `dest` whole.

    Readers see the old folder or the new one, never a mix; a crash or a full disk leaves `dest` as it
    was and the partial folder is removed. Two writers at once each build their own folder and the
    swaps take turns (a lock file next to `dest`): the last one to finish is what remains.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = dest.with_name(f".{dest.name}.tmp-{tag}")
    old = dest.with_name(f".{dest.name}.old-{tag}")
    try:
        yield tmp
        with open(dest.with_name(f".{dest.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if dest.exists():
                os.replace(dest, old)
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_section(path: str | Path, section: str) -> Path:
    """Put `section` (markdown starting with its '## ' heading) in the file at `path`: in place of the section
    with the same heading (up to the next '## '), or at the end. Experiments keep their part of a RESULTS.md
    this way, and the rest of the file stays."""
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    head = section.splitlines()[0]
    start = text.find(head)
    if start < 0:
        return write_text_atomic(path, text.rstrip("\n") + ("\n\n" if text.strip() else "") + section)
    end = text.find("\n## ", start + len(head))
    return write_text_atomic(path, text[:start] + section + ("" if end < 0 else text[end:]))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are for reading like any file
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def json_default(o: Any) -> Any:
    """How figures that are not JSON types are written: typed figures as their dicts, numpy scalars as numbers."""
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} to JSON")
