"""Recipe: the YAML file a user writes, validated into pydantic models.

Every mistake becomes one `UserError` line that names the field path and the fix. Relative paths
in a recipe resolve against the recipe file's folder; `${VAR:-default}` expands environment
variables so a path (say, to a model folder) can be changed without editing the file.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cost.workload import Workload
from optimizer.budget import Budget
from optimizer.data import REFERENCE, DataSource
from optimizer.errors import UserError, nearest
from optimizer.metrics import default_metrics, task_metrics
from optimizer.model import ModelSpec
from optimizer.ranges import Choice, IntRange, parse_range

if TYPE_CHECKING:
    from cost import Entry

Task = Literal["embedding", "causal-lm", "classification"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


# ----------------------------------------------------------------------------- sections
MAIN_EVAL = "eval"  # the name data.eval goes by next to data.extra_eval's sets


class DataSpec(Strict):
    eval: DataSource
    extra_eval: dict[str, DataSource] = Field(
        default_factory=dict,
        description="further eval sets by name (one per traffic type, say): the quality budget must hold on "
        "each, and reports show each drop; speed is timed on data.eval",
    )
    calibration: DataSource | None = None
    train: DataSource | None = None
    seed: int = 0

    @field_validator("extra_eval")
    @classmethod
    def _not_named_eval(cls, v: dict[str, DataSource]) -> dict[str, DataSource]:
        if MAIN_EVAL in v:
            raise ValueError(f"{MAIN_EVAL!r} is data.eval's own name: give this set another name")
        return v


class QualitySpec(Strict):
    metrics: list[str] | None = None
    primary: str | None = None
    batch_size: int = Field(default=32, gt=0)
    bootstrap: int = Field(default=1000, ge=100, description="bootstrap resamples")
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    retrieval: Literal["forward", "both"] = Field(
        default="forward",
        description="retrieval pairs: forward (each query retrieves its document), or both (each document also "
        "retrieves its query; an example's figure is the mean of its retrievals, a narrower interval at no extra "
        "embedding)",
    )


class SpeedSpec(Strict):
    batch_size: int = Field(default=32, gt=0)
    texts: int = Field(default=256, gt=0, description="encoder benchmark: number of real texts")
    streams: int = Field(
        default=1, gt=0, description="encoders: batches served at once, each on threads/streams threads (at most threads)"
    )
    prompt_tokens: int = Field(default=128, gt=0, description="causal LM: prompt length per sequence")
    new_tokens: int = Field(default=64, gt=0, description="causal LM: tokens decoded per sequence")
    warmup: int = Field(default=2, ge=0)
    repeats: int = Field(default=5, ge=1)
    batch_sizes: list[int] | None = Field(
        default=None,
        description="causal LM operating points: serve at each of these batch sizes (concurrent sequences); "
        "the cheapest that meets the latency targets is the one priced",
    )
    max_batch_size: int | None = Field(
        default=None,
        gt=0,
        description="causal LM operating points: after speed.batch_sizes (default: speed.batch_size), keep doubling "
        "the batch up to this size while the last point meets the latency targets and the next one's KV cache fits "
        "in free memory (a larger batch than one that misses only waits longer), then the powers of two between the "
        "largest batch that meets the targets and the first that misses them",
    )
    ttft_p95_s: float | None = Field(default=None, gt=0, description="causal LM latency target: time to first token, p95")
    tpot_p95_s: float | None = Field(default=None, gt=0, description="causal LM latency target: time per output token, p95")
    requests: int | None = Field(
        default=None,
        gt=0,
        description="causal LM: also serve this many requests at once, as a server would: real-text prompts of "
        "their own length (up to prompt_tokens), answers of new_tokens/4 to new_tokens tokens; in static batches of "
        "the chosen batch size, or by continuous batching after torch-continuous-batching",
    )
    arrival_rate: float | None = Field(
        default=None,
        gt=0,
        description="causal LM, with speed.requests: the requests arrive at this many per second (seeded exponential "
        "gaps, a Poisson process) instead of all at once; times to first token count from each request's arrival",
    )
    memory_alone: bool = Field(
        default=True,
        description="also measure the peak memory of the baseline and of the candidate (a search: its confirmed "
        "choice) each served alone in a fresh process: two more model loads, which a large model may take minutes for",
    )
    model: ModelSpec | None = Field(
        default=None,
        description="time this model instead of model.source (the same passes applied to it): a model of "
        "the serving shape when quality is measured on a smaller sibling; quality always comes from model.source",
    )


AUTO_CATALOG = "auto"  # hardware.catalog: resolved to this machine's entry where a command runs (chain.priced_here)


class HardwareSpec(Strict):
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    threads: int | None = Field(default=None, gt=0, description="CPU threads for every runtime; default: all cores")
    catalog: str | None = Field(
        default=None,
        description="hardware catalog entry used for pricing; auto: the entry of the machine the command runs on "
        "(from its CPU generation and cores, or its GPUs), so each search worker prices its own machine",
    )
    catalog_file: str | None = Field(default=None, description="your catalog YAML, merged over the packaged one")
    utilization: float = Field(default=0.5, gt=0, le=1, description="busy share of paid hours")
    pricing: Literal["on_demand", "spot", "committed"] = "on_demand"

    def entry(self) -> Entry | None:
        """The catalog entry it is priced on (`catalog` in the packaged catalog merged with `catalog_file`), None
        without one; raises cost.CostInputError for a name the catalog does not have. `auto` is resolved to a
        name before this is read (`chain.priced_here`)."""
        if not self.catalog:
            return None
        mtime = os.stat(self.catalog_file).st_mtime_ns if self.catalog_file and os.path.exists(self.catalog_file) else None
        return _catalog_entry(self.catalog, self.catalog_file, mtime)


@functools.lru_cache(maxsize=32)
def _catalog_entry(name: str, catalog_file: str | None, mtime: int | None) -> Entry:
    """Read once per catalog file version (`mtime`): parsing and validating the catalog takes ~34 ms, and
    every timed arm of a confirmation round is priced."""
    from cost import load_catalog

    return load_catalog(catalog_file).get(name)


class PassSpec(BaseModel):
    """One pass: its registered name, `enabled`, and its parameters (validated by the pass)."""

    model_config = ConfigDict(extra="allow")
    name: str
    enabled: bool | Choice = True
    save: bool = False
    keep_sensitive: int | Choice | IntRange | None = Field(
        default=None,
        description="keep the k block parts (a block's attention or its FFN) where quantizing hurts most out of "
        "this pass (measured part by part before the search; added to its exclude list); a range searches k",
    )

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Constraint(Strict):
    metric: str | None = None
    max_drop: float = Field(default=0.01, ge=0)
    relative: bool = True
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)


class ConfirmSpec(Strict):
    share: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="share of data.eval held out from the search and used only to confirm its choice "
        "(disjoint, chosen by a hash of each example); 0 turns confirmation off",
    )
    candidates: int = Field(
        default=3,
        ge=1,
        description="how many of the cheapest within-budget trials get a held-out quality test, in cost order, "
        "until one is confirmed; each is tested at confidence 1-(1-c)/candidates, so all of them together keep "
        "the budget's confidence c (a trial set aside before its test, unbuildable or wrong at some input width, "
        "does not count)",
    )
    rounds: int = Field(
        default=9,
        ge=3,
        description="alternating speed rounds of baseline and choice for the saving's interval, at most: the timing "
        "stops after 5 when every arm's ratio to the choice is already known within 10% of its median",
    )


class SearchSpec(Strict):
    trials: int = Field(default=20, gt=0)
    timeout_minutes: float | None = Field(default=None, gt=0, description="stop starting trials after this")
    time_budget_minutes: float | None = Field(
        default=None,
        gt=0,
        description="the whole search's wall time: baseline, trials and confirmation; trials stop when the next one "
        "and the confirmation would not fit, the confirmation's timing drops serving settings and rounds that would "
        "not, and the output says what was cut (the held-out quality test and width check are never cut)",
    )
    trial_timeout_minutes: float | None = Field(default=None, gt=0, description="a longer trial fails")
    batch_size: int | Choice | IntRange | None = Field(default=None, description="speed batch size; a range searches it")
    threads: int | Choice | IntRange | None = Field(default=None, description="CPU threads; a range searches it")
    streams: int | Choice | IntRange | None = Field(
        default=None, description="concurrent serving streams sharing the threads (encoders); a range searches it"
    )
    screen_examples: int | None = Field(
        default=128,
        ge=16,
        description="score quality on this many eval examples first; prune trials clearly "
        "over budget there (their interval's low end is over it); null turns screening off",
    )
    cache: bool = Field(default=True, description="keep compressed artifacts by a hash of their configuration")
    heartbeat_seconds: int = Field(default=30, gt=0, description="a worker silent for 3x this is presumed dead")
    baseline_reuse_minutes: float = Field(
        default=60,
        ge=0,
        description="a restarted worker on the same machine reuses the study's baseline speed when it is younger "
        "than this and the CPU is quiet (preempted workers then make progress); 0 always re-measures",
    )
    objective: str = Field(default="cost", description="a key of optimizer.objectives.OBJECTIVES")
    constraint: Constraint = Constraint()
    confirm: ConfirmSpec = ConfirmSpec()
    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    multi_objective: bool = False
    storage: str | None = None
    study_name: str | None = None
    seed: int = 0

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, v: str) -> str:
        from optimizer.objectives import OBJECTIVES

        if v not in OBJECTIVES:
            raise ValueError(f"unknown objective {v!r}: use one of {', '.join(OBJECTIVES)}")
        return v


class ReportSpec(Strict):
    formats: list[Literal["md", "html", "json"]] = ["md", "html", "json"]


class Recipe(Strict):
    name: str = "recipe"
    model: ModelSpec
    task: Task
    data: DataSpec
    quality: QualitySpec = QualitySpec()
    speed: SpeedSpec = SpeedSpec()
    hardware: HardwareSpec = HardwareSpec()
    workload: Workload | None = None
    passes: list[PassSpec] = []
    search: SearchSpec = SearchSpec()
    report: ReportSpec = ReportSpec()
    output_dir: str = "runs"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", v):
            raise ValueError("use letters, digits, '.', '_' and '-' only (it names files under runs/)")
        return v

    @model_validator(mode="after")
    def _metrics_fit_task(self) -> Recipe:
        allowed = task_metrics(self.task)
        for i, m in enumerate(self.quality.metrics or []):
            if m not in allowed:
                raise _FieldError(
                    f"quality.metrics[{i}]", f"{m!r} is not a {self.task} metric", f"use one of {', '.join(allowed)}"
                )
        if self.quality.primary and self.quality.primary not in self.metrics:
            raise _FieldError(
                "quality.primary",
                f"{self.quality.primary!r} is not among the recipe's metrics",
                f"use one of {', '.join(self.metrics)}",
            )
        return self

    @model_validator(mode="after")
    def _operating_points_are_for_causal_lms(self) -> Recipe:
        s = self.speed
        for key in ("batch_sizes", "max_batch_size", "ttft_p95_s", "tpot_p95_s", "requests", "arrival_rate"):
            if getattr(s, key) is not None and self.task != "causal-lm":
                raise _FieldError(f"speed.{key}", f"applies to causal LMs, not to task {self.task!r}", "remove it")
        start = max(s.batch_sizes or [s.batch_size])
        if s.max_batch_size is not None and s.max_batch_size < start:
            raise _FieldError(
                "speed.max_batch_size",
                f"is {s.max_batch_size}, below the batch the sweep starts from ({start})",
                f"set it to at least {start}, or remove it",
            )
        if s.arrival_rate is not None and s.requests is None:
            raise _FieldError(
                "speed.arrival_rate",
                "is the rate speed.requests arrive at, and speed.requests is not set",
                "set speed.requests too, or remove it",
            )
        return self

    @model_validator(mode="after")
    def _catalog_entry_exists(self) -> Recipe:
        if self.hardware.catalog and self.hardware.catalog != AUTO_CATALOG:
            from cost import CostInputError

            try:
                self.hardware.entry()
            except CostInputError as e:
                raise _FieldError("hardware.catalog", e.problem, e.fix) from None
        return self

    @property
    def metrics(self) -> list[str]:
        return self.quality.metrics or default_metrics(self.task)

    @property
    def primary_metric(self) -> str:
        return self.quality.primary or self.metrics[0]

    @property
    def budget(self) -> Budget:
        c = self.search.constraint
        return Budget(c.metric or self.primary_metric, c.max_drop, c.relative, c.confidence)

    def has_ranges(self) -> bool:
        for p in self.passes:
            if isinstance(p.enabled, Choice) or any(parse_range(v) for v in p.params.values()):
                return True
        return False


class _FieldError(ValueError):
    """A validator's error that knows its own field path and fix."""

    def __init__(self, path: str, problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = path, problem, fix
        super().__init__(f"{path}: {problem}")


# ----------------------------------------------------------------------------- loading
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value: Any) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            if m.group(1) in os.environ:
                return os.environ[m.group(1)]
            if m.group(2) is not None:
                return m.group(2)
            raise UserError(
                f"environment variable {m.group(1)} is not set", f"export {m.group(1)}=... or write ${{{m.group(1)}:-default}}"
            )

        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v) for v in value]
    return value


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    """`a.b.c` in nested mappings (made where missing); a number indexes a list (`passes.0.tokens`)."""
    keys = dotted.split(".")
    node: Any = raw
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                where = ".".join(keys[:i])
                raise UserError(
                    f"--set {dotted}: {where} is a list of {len(node)}, and {k!r} is not an index in it",
                    f"use {where}.N with N from 0 to {len(node) - 1}",
                )
            k = int(k)
        elif not last and not isinstance(node.get(k), dict | list):
            node[k] = {}
        if last:
            node[k] = value
        else:
            node = node[k]


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("Choice", "IntRange", "FloatRange", "bool") or "[" in str(part):
            continue  # union-member names pydantic adds to the path
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


_FIXES = {
    "missing": "add it",
    "extra_forbidden": "remove it or check its spelling",
    "literal_error": None,  # pydantic's message already lists the allowed values
}


def _format_validation(err: ValidationError, model: type[BaseModel]) -> list[tuple[str, str]]:
    """Each of pydantic's errors as (problem, fix)."""
    return [_format_error(e, model) for e in err.errors()]


def _format_error(e: Any, model: type[BaseModel]) -> tuple[str, str]:
    path = _loc(e["loc"])
    ctx_err = (e.get("ctx") or {}).get("error")
    if isinstance(ctx_err, _FieldError):
        return f"{ctx_err.path}: {ctx_err.problem}", ctx_err.fix
    if e["type"] == "extra_forbidden":
        parent = _parent_fields(model, e["loc"][:-1])
        fix = f"remove it or check its spelling ({nearest(str(e['loc'][-1]), parent)})" if parent else "remove it"
        return f"{path}: unknown key", fix
    if e["type"] == "missing":
        return f"{path}: required field is missing", "add it"
    msg = e["msg"].removeprefix("Value error, ")
    fix = _FIXES.get(e["type"]) or f"give a valid value (got {e.get('input')!r})"
    if e["type"] == "literal_error":
        fix = msg.replace("Input should be", "use")
        msg = f"{e.get('input')!r} is not allowed"
    return f"{path}: {msg}", fix


def _refuse(origin: str, problems: list[tuple[str, str]]) -> None:
    """Every problem found at once, still one line: a user fixes them all in one edit."""
    if len(problems) == 1:
        raise UserError(f"{origin}: {problems[0][0]}", problems[0][1])
    listed = "; ".join(f"({i}) {p} (fix: {f})" for i, (p, f) in enumerate(problems, 1))
    raise UserError(f"{origin}: {len(problems)} problems: {listed}", "fix each as given")


def _parent_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    cls: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        cls = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if cls is None:
            return []
    return list(getattr(cls, "model_fields", {}))


def recipe_from_dict(raw: Any, base_dir: Path, origin: str = "recipe") -> Recipe:
    if not isinstance(raw, dict):
        raise UserError(
            f"{origin}: the top level must be a mapping of sections (model, task, data, ...)",
            "start from recipes/quickstart.yaml",
        )
    raw = _expand_env(raw)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        _refuse(origin, _format_validation(err, Recipe))
    _resolve_paths(recipe, base_dir, origin)
    _validate_passes(recipe, origin)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe; `overrides` are `dotted.key=yaml-value` strings from --set."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe file {str(p)!r} does not exist", "check the path, or start from recipes/quickstart.yaml")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{p}: not valid YAML{where}: {problem}", "fix the YAML syntax (indentation, colons, quotes)") from None
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set {item!r} has no '='", "write --set section.key=value")
        key, value = item.split("=", 1)
        if not isinstance(raw, dict):
            break
        _set_dotted(raw, key.strip(), yaml.safe_load(value))
    return recipe_from_dict(raw, p.resolve().parent, origin=str(p))


def _looks_like_path(s: str) -> bool:
    return s.startswith((".", "/", "~")) or os.sep in s and not re.fullmatch(r"[\w.-]+/[\w.-]+", s)


def _resolve_paths(recipe: Recipe, base_dir: Path, origin: str) -> None:
    def resolve(s: str) -> Path:
        q = Path(os.path.expanduser(s))
        return q if q.is_absolute() else (base_dir / q)

    for where, spec in (("model", recipe.model), ("speed.model", recipe.speed.model)):
        src = spec.source if spec else None
        if src and (_looks_like_path(src) or resolve(src).exists()):
            folder = resolve(src)
            if not folder.is_dir():
                raise UserError(
                    f"{origin}: {where}.source: folder {str(folder)!r} does not exist",
                    "point it at a folder with config.json, a Hugging Face id, or an installed model package",
                )
            spec.source = str(folder.resolve())

    for split in ("eval", "calibration", "train"):
        ds: DataSource | None = getattr(recipe.data, split)
        if ds is None or ds.source in ("stdlib-docs", REFERENCE) or ds.source.startswith("hf:"):
            continue
        f = resolve(ds.source)
        if not f.is_file():
            raise UserError(
                f"{origin}: data.{split}.source: {str(f)!r} " + ("is a folder, not a file" if f.is_dir() else "does not exist"),
                f"give a .jsonl/.csv/.txt/.parquet file, 'stdlib-docs', '{REFERENCE}' (text), or 'hf:<dataset>'",
            )
        ds.source = str(f.resolve())


def _validate_passes(recipe: Recipe, origin: str) -> None:
    from optimizer.passes import REGISTRY, validate_pass_params

    problems = []
    for i, spec in enumerate(recipe.passes):
        if spec.name not in REGISTRY:
            problems.append((f"passes[{i}].name: unknown pass {spec.name!r}", nearest(spec.name, list(REGISTRY))))
        elif spec.keep_sensitive is not None and "exclude" not in REGISTRY[spec.name].Config.model_fields:
            takes = sorted(n for n, c in REGISTRY.items() if "exclude" in c.Config.model_fields)
            problems.append(
                (
                    f"passes[{i}].keep_sensitive: {spec.name} has no exclude list to keep blocks out of",
                    f"use keep_sensitive on one of {', '.join(takes)}",
                )
            )
        elif problem := validate_pass_params(spec, recipe.task):
            path, text, fix = problem
            problems.append((f"passes[{i}].{path}: {text}", fix))
    if problems:
        _refuse(origin, problems)


def recipe_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe, with the registered pass names, for editors (`costopt schema`)."""
    from optimizer.passes import REGISTRY

    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "costopt recipe"
    spec = schema["$defs"]["PassSpec"]
    spec["properties"]["name"]["enum"] = sorted(REGISTRY)
    # each pass's own parameters: pass names map to their Config's schema
    spec["description"] = "One pass: its name, `enabled`, and its parameters (a value or a search range each)."
    schema["x-pass-parameters"] = {n: REGISTRY[n].Config.model_json_schema() for n in sorted(REGISTRY)}
    return schema


def speed_model_note(recipe: Recipe) -> str | None:
    """Which figures belong to which model, when the timed model is not the judged one or has random weights."""
    m = recipe.speed.model
    if m is not None:
        random = " (random weights of a real shape)" if m.random_weights else ""
        return (
            f"speed and cost measured on speed.model {m.source}{random} with the same passes; "
            f"quality measured on {recipe.model.source}"
        )
    if recipe.model.random_weights:
        return f"model {recipe.model.source} has random weights (model.random_weights): its speed and cost are real, its quality figures mean nothing"
    return None
