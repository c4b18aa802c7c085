"""`costopt run`: the baseline and, when the recipe has passes, the compressed candidate measured in the
same process, on the same texts, with the same thread count, so their figures compare; the result
JSON (RunRecord) is written after each finished stage."""

from __future__ import annotations

import shutil
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optimizer import gguf_file
from optimizer.bench import Bench
from optimizer.chain import apply_chain, priced_here, resolve_device, resolved_passes
from optimizer.data import Dataset
from optimizer.errors import UserError
from optimizer.measure import speed as speed_mod
from optimizer.measure.system import fingerprint
from optimizer.measurement import RUN_SCHEMAS, Broken, Measurement
from optimizer.passes import check_chain
from optimizer.recipe import Recipe, speed_model_note
from optimizer.results import ensure_writable, write_json_atomic

SCHEMA = RUN_SCHEMAS[-1]  # 2: the candidate is a measurement.Measurement, its drops inside it


def provenance(recipe: Recipe, data: Dataset) -> dict[str, Any]:
    """What a result came from: the command, costopt's version, and hashes of the recipe and of the eval data."""
    import hashlib
    import json
    import sys

    from optimizer.measure.system import source_version

    def sha(obj: Any) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]

    gguf = gguf_file.find_gguf(recipe.model.source)  # the baseline's file and quant type, when it came from one
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "costopt": source_version(),
        "recipe_sha256": sha(recipe.model_dump(mode="json")),
        "eval_sha256": sha([data.kind, data.all_texts(), getattr(data, "labels", None)]),
        "eval_examples": len(data),
        "model_file": gguf_file.describe(gguf) if gguf else None,
        "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
    }


@dataclass
class RunRecord:
    """Everything one `costopt run` produced; `to_json` is its result.json."""

    recipe: Recipe
    passes: list[dict[str, Any]]
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    status: str = "running"
    error: str | None = None
    baseline: dict[str, Any] = field(default_factory=dict)
    candidate: dict[str, Any] | None = None  # Measurement.to_json()
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=fingerprint)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "recipe": self.recipe.name,
            "task": self.recipe.task,
            "model": self.recipe.model.source,
            "status": self.status,
            "error": self.error,
            "passes": self.passes,
            "primary_metric": self.recipe.primary_metric,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "notes": self.notes,
            "timings": self.timings,
            "started": self.started,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "system": self.system,
            "config": self.recipe.model_dump(mode="json"),
            **self.extra,
        }


class _Stage:
    def __init__(self, record: RunRecord, name: str, bar: Any) -> None:
        self.record, self.name, self.bar = record, name, bar

    def __enter__(self) -> None:
        self.bar.set_description(self.name)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.record.timings[self.name] = round(time.perf_counter() - self.t0, 3)
        self.bar.update(1)


def run_recipe(
    recipe: Recipe, out_dir: Path | None = None, chosen: dict[str, Any] | None = None, progress: bool = True
) -> tuple[dict[str, Any], Path]:
    """Measure the baseline and, when the recipe has passes, the compressed candidate against it.

    The result JSON is written after each finished stage, so a crash or a failing pass keeps the
    baseline's figures; the error is recorded and re-raised.
    """
    from tqdm.auto import tqdm

    recipe = priced_here(recipe)
    passes = resolved_passes(recipe, chosen)
    device = resolve_device(recipe.hardware.device)
    check_chain(passes, device)
    speed_mod.set_threads(recipe.hardware.threads)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = ensure_writable(Path(out_dir or recipe.output_dir)) / f"{recipe.name}-{stamp}"
    result_path = run_dir / "result.json"
    record = RunRecord(recipe, passes)
    if speed_model_note(recipe):
        record.notes.append(speed_model_note(recipe))
    n_stages = 4 + (3 if passes else 0)
    bar = tqdm(total=n_stages, disable=not progress, unit="stage", leave=False)

    try:
        with _Stage(record, "load data", bar):
            bench = Bench.load_data(recipe, device)
            data = bench.eval_data
            record.extra["data"] = {"eval": {"origin": data.origin, "kind": data.kind, "examples": len(data)}}
            record.extra["provenance"] = provenance(recipe, data)
        with _Stage(record, "load baseline", bar):
            bench.load_baseline()
        with _Stage(record, "baseline quality", bar):
            record.baseline["quality"] = bench.baseline_quality()
        with _Stage(record, "baseline speed", bar):
            b = record.baseline
            b["speed"], price, fp = bench.baseline_figures()
            b["cost"], b["footprint"] = (price.to_json() if price else None), fp.to_json()
        write_json_atomic(result_path, record.to_json())

        if passes:
            m = Measurement(passes=passes, metric=recipe.budget.metric)

            def save(m: Measurement) -> None:  # each finished stage is on disk before the next starts
                record.candidate = m.to_json()
                write_json_atomic(result_path, record.to_json())

            with _Stage(record, "apply passes", bar):
                cand = apply_chain(recipe, passes, bench.context(run_dir / "work"), m.timings, run_dir)
                saved = sorted(run_dir.glob("after-*"), key=lambda f: int(f.name.split("-")[1]))
                record.extra["intermediate"] = [str(f) for f in saved]
                record.notes.extend(cand.notes)
                m.deployment["runtime"] = cand.runtime
            try:
                with _Stage(record, "measure candidate", bar):
                    bench.measure(cand, m, run_dir / "work", artifact=run_dir / "artifact", widths=True, save=save)
            except Broken as e:  # measured, and what was measured says the model no longer serves
                record.status, record.error = "broken", e.reason
            else:
                with _Stage(record, "memory served alone", bar):
                    b = record.baseline
                    b["footprint"]["memory_alone"] = bench.memory_alone(
                        b["speed"]["batch_size"], b["speed"].get("streams", 1), None
                    )
                    if m.footprint is not None:
                        m.footprint.memory_alone = bench.memory_alone(
                            m.speed["batch_size"], m.speed.get("streams", 1), run_dir / "artifact"
                        )
                    record.candidate = m.to_json()
        if record.status == "running":
            record.status = "ok"
    except BaseException as e:
        record.status = "failed"
        record.error = e.one_line() if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        if not isinstance(e, (UserError, OSError)):
            record.extra["traceback"] = traceback.format_exc()
        shutil.rmtree(run_dir / "artifact", ignore_errors=True)  # saving it is the last stage: a partial artifact
        raise
    finally:
        bar.close()
        shutil.rmtree(run_dir / "work", ignore_errors=True)  # first: on a full disk this frees room for the result
        write_json_atomic(result_path, record.to_json())
    return record.to_json(), result_path
