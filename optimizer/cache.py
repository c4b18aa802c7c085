"""Compressed artifacts kept by a hash of everything that determines them, so no chain is built twice.

The key of a chain prefix covers the model, the task, the data its passes read (calibration and
training sources, seed), the device and the resolved passes up to that point. A search whose trials
share a prefix (say, export -> optimize) builds it once; a configuration sampled again is reloaded
rather than rebuilt. Entries are written to a temporary folder and renamed, so a crash never leaves
a half-written entry that a later trial would trust; each entry also lists its files' sizes and
hashes, and one that no longer matches them (or no longer loads) is removed and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from optimizer.passes import REGISTRY
from optimizer.recipe import Recipe
from optimizer.runtimes import Candidate

log = logging.getLogger(__name__)
ENTRY_META = "cache.json"
CACHE_VERSION = 3  # the key's layout (3: artifacts record the token limit they were measured at); a pass's own changes bump that pass's VERSION


def chain_key(recipe: Recipe, device: str, passes: list[dict[str, Any]]) -> str:
    data = recipe.data
    what = {
        "version": CACHE_VERSION,
        "model": recipe.model.model_dump(mode="json"),
        "task": recipe.task,
        "device": device,
        "calibration": data.calibration.model_dump(mode="json") if data.calibration else None,
        "train": data.train.model_dump(mode="json") if data.train else None,
        "seed": data.seed,
        "passes": [{"name": p["name"], "params": p["params"], "version": REGISTRY[p["name"]].VERSION} for p in passes],
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:20]


class ArtifactCache:
    """A folder of saved candidates, one sub-folder per chain prefix key."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def has(self, key: str) -> bool:
        return (self.path(key) / ENTRY_META).is_file()

    def load(self, key: str, device: str) -> Candidate:
        """The entry's candidate; raises DamagedEntry when its files changed since they were written."""
        from optimizer.runtimes import reload_saved

        folder = self.path(key)
        try:
            meta = json.loads((folder / ENTRY_META).read_text())
        except (OSError, ValueError) as e:
            raise DamagedEntry(f"unreadable {ENTRY_META} ({e})") from None
        if _manifest(folder / "artifact") != meta.get("files"):
            raise DamagedEntry("its files differ from those written")
        try:
            cand = reload_saved(folder / "artifact", device)
        except Exception as e:  # noqa: BLE001 - whatever the runtime raises, the entry is not to be trusted
            raise DamagedEntry(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
        cand.notes = list(meta.get("notes", []))
        return cand

    def load_longest(self, keys: list[str], device: str) -> tuple[int, Candidate | None]:
        """The longest cached prefix of a chain and its candidate (0, None when none); damaged entries
        are removed on the way, so the chain is rebuilt from the last sound one."""
        for n in range(len(keys), 0, -1):
            if not self.has(keys[n - 1]):
                continue
            try:
                return n, self.load(keys[n - 1], device)
            except DamagedEntry as e:
                log.warning("artifact cache: entry %s is damaged (%s); it is removed and rebuilt", keys[n - 1], e)
                self.evict(keys[n - 1])
        return 0, None

    def evict(self, key: str) -> None:
        trash = self.root / f".trash-{key}-{uuid.uuid4().hex[:8]}"
        try:
            os.replace(self.path(key), trash)  # atomic: no other worker sees a half-removed entry
        except OSError:
            return  # already gone (another worker evicted it)
        shutil.rmtree(trash, ignore_errors=True)

    def put(self, key: str, cand: Candidate, seconds: float) -> None:
        """Save `cand` under `key`; a candidate that cannot be saved is simply not cached."""
        if self.has(key):
            return
        tmp = self.root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        try:
            cand.save(tmp / "artifact")
            meta = {
                "key": key,
                "applied": cand.applied,
                "notes": cand.notes,
                "build_seconds": round(seconds, 2),
                "files": _manifest(tmp / "artifact"),
            }
            (tmp / ENTRY_META).write_text(json.dumps(meta, indent=2, default=str))
            os.replace(tmp, self.path(key))  # atomic; loses the race quietly if another worker got there first
        except OSError as e:
            if not self.has(key):
                log.warning("artifact cache: could not keep %s (%s)", key, e)
        except Exception as e:  # noqa: BLE001 - some runtimes cannot save (e.g. CUDA 2:4 sparse tensors)
            log.warning("artifact cache: %s cannot be saved (%s: %s); it will be rebuilt when needed", key, type(e).__name__, e)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class DamagedEntry(Exception):
    """A cache entry whose files no longer match what was written, or that no longer loads."""


def _manifest(folder: Path) -> dict[str, list[Any]]:
    """Every file under `folder` with its size and SHA-256 (hashing ~100 MB takes ~0.2 s)."""
    out: dict[str, list[Any]] = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        out[f.relative_to(folder).as_posix()] = [f.stat().st_size, digest.hexdigest()]
    return out
