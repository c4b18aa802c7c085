"""Deployment configuration: what a search chose, written down, rebuilt and loaded ready to call.

`deploy.yaml` holds everything needed to rebuild the chosen artifact on another machine (the model,
task, data the passes read, resolved passes, runtime, batch size, threads, streams) and what was measured
for it (quality and drop with its interval, speed, cost, hardware), so the decision stays auditable.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from optimizer.errors import UserError
from optimizer.measure.price import Price
from optimizer.measurement import Measurement
from optimizer.recipe import Recipe
from optimizer.results import atomic_folder
from optimizer.runtimes import Candidate
from optimizer.trials import baseline_best_batch

log = logging.getLogger(__name__)
SCHEMA = "costopt.deploy/1"
DEPLOY_FILE = "deploy.yaml"
SERVE_FILE = "serve.sh"  # in a built deployment whose runtime has its own server (llama.cpp: llama-server)
# Recipe sections the artifact depends on; passes come resolved, search and report are not needed.
_REBUILD_SECTIONS = ("name", "model", "task", "data", "quality", "speed", "hardware", "workload", "output_dir")


def deployment_config(
    recipe: Recipe, study_name: str, trial: Any, baseline: dict[str, Any], confirmation: Any = None
) -> dict[str, Any]:
    """deploy.yaml content for one finished Optuna trial (a FrozenTrial) of `study_name`.

    With a `confirm.Confirmation`, the drop is the one measured on the held-out part and the saving
    the one timed in alternating rounds; the search's own figures are kept beside them."""
    m = Measurement.of(trial)
    b = recipe.budget
    cost, base_cost = m.cost, Price.maybe(baseline.get("cost"))
    measured: dict[str, Any] = {
        "quality": m.quality,
        "baseline_quality": baseline.get("quality"),
        "drop": m.drop.to_json() if m.drop else None,
        "drop_measured_on": "the eval set the search selected on (not confirmed on held-out data)",
        "quality_batches": m.quality_batches,
        "constraint": {"metric": b.metric, "max_drop": b.max_drop, "relative": b.relative, "confidence": b.confidence},
        "tokens_per_s": m.tokens_per_s(),
        "baseline_tokens_per_s": {
            k: baseline["speed"][k]["median"]
            for k in ("input_tokens_per_s", "output_tokens_per_s")
            if k in baseline.get("speed", {})
        },
        "footprint": m.footprint.to_json() if m.footprint else None,
    }
    if cost and base_cost and cost.blended_usd_per_m and base_cost.blended_usd_per_m:
        measured["usd_per_m_tokens"] = cost.blended_usd_per_m
        measured["baseline_usd_per_m_tokens"] = base_cost.blended_usd_per_m
        measured["cheaper_x"] = round(base_cost.blended_usd_per_m / cost.blended_usd_per_m, 4)
        best_b = baseline_best_batch(baseline) if recipe.search.objective == "cost" else None
        if best_b is not None:  # the baseline at its own best batch size that meets the latency targets
            usd = baseline["by_batch"][str(best_b)]
            measured["baseline_best_batch"] = {
                "batch_size": best_b,
                "usd_per_m_tokens": usd,
                "cheaper_x": round(usd / cost.blended_usd_per_m, 4),
            }
        measured["cost"] = cost.to_json()
    attempt = confirmation.attempt if confirmation is not None else None
    if attempt is not None:
        measured["selection_drop"] = measured["drop"]
        measured["drop"] = attempt.drop.to_json() if attempt.drop else None
        measured["quality"] = attempt.quality
        measured["quality_batches"] = attempt.quality_batches
        measured["power"] = attempt.power  # what the held-out set could certify (Budget.power)
        measured["drop_measured_on"] = (
            f"{confirmation.confirmation_examples} held-out examples the search never saw, at "
            f"{confirmation.confidence_each:.1%} confidence ({len(confirmation.attempts)} candidate(s) tested)"
        )
        measured["saving"] = [
            {"against": s.against, "times_better": s.ratio, "established": s.established, "why": s.why}
            for s in confirmation.savings
        ]
        if confirmation.serving:
            measured["serving"] = confirmation.serving
    # the serving setting the confirmation's paired rounds chose, over the search's single timing
    served = (confirmation.serving.get("served") if confirmation is not None else None) or {}
    served = {k: v for k, v in served.items() if k != "trial"}  # the trial is `trial` (the confirmation's choice)
    return {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "study": study_name,
        "trial": trial.number,
        "objective": recipe.search.objective,
        "value": trial.values[0] if trial.values else None,
        **(m.deployment | served),
        "passes": [{"name": p["name"], "params": p["params"]} for p in (attempt.passes if attempt is not None else m.passes)],
        "hardware": m.hardware,
        "measured": measured,
        "notes": m.notes,
        "recipe": {k: v for k, v in recipe.model_dump(mode="json").items() if k in _REBUILD_SECTIONS},
    }


def write_deployment(path: Path, config: dict[str, Any]) -> Path:
    from optimizer.results import write_text_atomic

    path = Path(path)
    write_text_atomic(path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def read_deployment(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"deployment file {path} does not exist", "give the deploy.yaml written by `costopt search`")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(
            f"{path} is not valid YAML ({str(e).splitlines()[0]})", "give the deploy.yaml written by `costopt search`"
        ) from None
    if not isinstance(config, dict) or config.get("schema") != SCHEMA:
        raise UserError(
            f"{path} is not a costopt deployment (schema {SCHEMA} expected)", "give the deploy.yaml written by `costopt search`"
        )
    return config


def build(deploy_file: Path, out_dir: Path, progress: bool = True) -> Path:
    """Rebuild the artifact a deploy.yaml describes into `out_dir` (reusing the search's cache when present)."""
    from optimizer.cache import ArtifactCache
    from optimizer.chain import apply_chain, pass_context, pass_data, resolve_device
    from optimizer.measure import speed as speed_mod
    from optimizer.passes import check_chain

    config = read_deployment(deploy_file)
    recipe = Recipe.model_validate(config["recipe"])
    passes = [{"name": p["name"], "params": p["params"], "save": False} for p in config["passes"]]
    device = resolve_device(recipe.hardware.device)
    check_chain(passes, device)
    speed_mod.set_threads(config.get("threads") or recipe.hardware.threads)
    out_dir = Path(out_dir)
    work = out_dir.with_name(f".{out_dir.name}.work-{os.getpid()}")
    cache_root = Path(recipe.output_dir) / str(config.get("study")) / "cache"
    cache = ArtifactCache(cache_root) if cache_root.is_dir() else None
    try:
        cand = apply_chain(recipe, passes, pass_context(recipe, device, work, *pass_data(recipe)), {}, cache=cache)
        with atomic_folder(out_dir) as folder:  # a concurrent or interrupted deploy never leaves a mix
            cand.save(folder)
            write_deployment(folder / DEPLOY_FILE, config)
            s = recipe.speed
            slot = slot_context(s.prompt_tokens, s.new_tokens, cand.info.limit)
            command = cand.serve_command(out_dir.resolve(), int(config.get("batch_size") or 1), slot)
            if command is not None:  # the runtime's own server, with the settings it was measured with
                (folder / SERVE_FILE).write_text(f"#!/bin/sh\n# serves {out_dir.name} as costopt measured it\nexec {command}\n")
                (folder / SERVE_FILE).chmod(0o755)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def slot_context(prompt_tokens: int, new_tokens: int, limit: int) -> int:
    """Tokens each server slot holds: the longest input the deployment was judged on (the model's token limit as
    served, at least the timed prompt) plus the timed new tokens, so a request as long as those judged fits.
    The timed shape alone (128 + 32 for SmolLM2) left no room for the 256-token inputs its quality was judged on."""
    return max(prompt_tokens, limit) + new_tokens


@dataclass
class Deployment:
    """A built deployment, ready to call: `encode` (embedding), `classify`, or `generate` (causal LM)."""

    candidate: Candidate
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.candidate.task

    @property
    def batch_size(self) -> int:
        return int(self.config.get("batch_size") or 32)

    @property
    def streams(self) -> int:
        return int(self.config.get("streams") or 1)

    def encode(self, texts: list[str] | str, prompt_name: str | None = None) -> np.ndarray:
        """Embeddings; `prompt_name` picks one of the model's sentence-transformers prompts ("query",
        "document", ...), as sentence-transformers' encode does; without it, the model's default prompt."""
        from optimizer import tasks

        self._expect("embedding", "encode")
        single = isinstance(texts, str)
        head = self.candidate.info.head
        if prompt_name is not None and prompt_name not in head.prompts:
            raise UserError(
                f"this model has no prompt named {prompt_name!r}",
                f"use one of: {', '.join(head.prompts) or '(it has none)'}, or leave prompt_name out",
            )
        prefix = head.prompts[prompt_name] if prompt_name else head.prompt("text")
        batch = [prefix + t for t in ([texts] if single else list(texts))]
        out = tasks.embed(self.candidate, batch, self.batch_size, streams=self.streams)
        return out[0] if single else out

    def classify(self, texts: list[str]) -> list[str]:
        from optimizer import tasks

        self._expect("classification", "classify")
        logits = tasks.classify(self.candidate, list(texts), self.batch_size, streams=self.streams)
        id2label = getattr(getattr(getattr(self.candidate, "module", None), "config", None), "id2label", None) or {}
        return [str(id2label.get(int(i), int(i))) for i in logits.argmax(1)]

    def generate(self, prompt: str, max_new_tokens: int = 32, chat: bool = False) -> str:
        """Greedy continuation of `prompt` through the runtime's KV-cache decode; with `chat`, `prompt` is a
        user message put in the model's chat template (instruct models answer in it)."""
        self._expect("causal-lm", "generate")
        tok = self.candidate.tokenizer
        if chat:
            if not tok.chat_template:
                raise UserError("this model's tokenizer has no chat template", "call generate(prompt) without chat=True")
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
            ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        else:
            ids = tok(prompt, return_tensors="pt")["input_ids"]
        logits, state = self.candidate.prefill(ids, torch.ones_like(ids))
        out: list[int] = []
        for _ in range(max_new_tokens):
            nxt = int(logits.argmax(-1)[0])
            if tok.eos_token_id is not None and nxt == tok.eos_token_id:
                break
            out.append(nxt)
            logits, state = self.candidate.decode(torch.tensor([[nxt]]), state)
        return tok.decode(out, skip_special_tokens=True)

    def __call__(self, texts: Any, **kwargs: Any) -> Any:
        fn = {"embedding": self.encode, "classification": self.classify, "causal-lm": self.generate}[self.task]
        return fn(texts, **kwargs)

    def _expect(self, task: str, method: str) -> None:
        if self.task != task:
            raise UserError(
                f"{method}() is for {task} models but this deployment is a {self.task} model",
                "call the deployment directly; it picks the task's method",
            )


def load_deployment(path: str | Path, device: str | None = None) -> Deployment:
    """A deployment ready to call, from a folder built by `costopt deploy` or from a deploy.yaml
    (built next to it on first use, into '<name>-artifact/')."""
    from optimizer.measure import speed as speed_mod
    from optimizer.runtimes import reload_saved

    path = Path(path)
    if path.is_file():
        config = read_deployment(path)
        folder = path.with_name(path.stem + "-artifact")
        if not (folder / "costopt.json").is_file():
            build(path, folder)
    elif (path / "costopt.json").is_file():
        folder = path
        config = read_deployment(path / DEPLOY_FILE) if (path / DEPLOY_FILE).is_file() else {}
    else:
        raise UserError(
            f"{path} is neither a deploy.yaml nor a folder built by `costopt deploy`",
            "run `costopt deploy deploy.yaml --out DIR` and load DIR",
        )
    speed_mod.set_threads(config.get("threads"))
    device = device or (config.get("recipe", {}).get("hardware", {}).get("device") or "cpu")
    cand = reload_saved(folder, "cuda" if device == "cuda" else "cpu")
    log.info("loaded %s deployment from %s: %s", cand.runtime, folder, json.dumps(cand.applied)[:200])
    return Deployment(cand, config)
