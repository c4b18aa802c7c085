"""Compressed artifacts kept by a hash of everything that determines them, so no chain is built twice.

The key of a chain prefix covers the model, the task, the data its passes read (calibration and
training sources, seed), the device and the resolved passes up to that point. A search whose trials
share a prefix (say, export -> optimize) builds it once; a configuration sampled again is reloaded
rather than rebuilt. Entries are written to a temporary folder and renamed, so a crash never leaves
a half-written entry that a later trial would trust.
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
CACHE_VERSION = 2  # the key's layout; a pass's own changes bump that pass's VERSION


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
        from optimizer.runtimes import reload_saved

        folder = self.path(key)
        cand = reload_saved(folder / "artifact", device)
        meta = json.loads((folder / ENTRY_META).read_text())
        cand.notes = list(meta.get("notes", []))
        return cand

    def put(self, key: str, cand: Candidate, seconds: float) -> None:
        """Save `cand` under `key`; a candidate that cannot be saved is simply not cached."""
        if self.has(key):
            return
        tmp = self.root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        try:
            cand.save(tmp / "artifact")
            meta = {"key": key, "applied": cand.applied, "notes": cand.notes, "build_seconds": round(seconds, 2)}
            (tmp / ENTRY_META).write_text(json.dumps(meta, indent=2, default=str))
            os.replace(tmp, self.path(key))  # atomic; loses the race quietly if another worker got there first
        except OSError as e:
            if not self.has(key):
                log.warning("artifact cache: could not keep %s (%s)", key, e)
        except Exception as e:  # noqa: BLE001 - some runtimes cannot save (e.g. CUDA 2:4 sparse tensors)
            log.warning("artifact cache: %s cannot be saved (%s: %s); it will be rebuilt when needed", key, type(e).__name__, e)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def longest_prefix(self, keys: list[str]) -> int:
        """How many leading passes have a cached result (0 when none)."""
        for n in range(len(keys), 0, -1):
            if self.has(keys[n - 1]):
                return n
        return 0
