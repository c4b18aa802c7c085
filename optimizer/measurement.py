"""One configuration's figures: the record a search trial, a run's candidate and a report row all share.

`bench.Bench.measure` fills it stage by stage (quality, then speed and price, then footprint); a
search stores it on its Optuna trial as one JSON user attribute (`ATTR`), a run writes it as its
result's candidate, and search, confirmation, deploy, the CLI, tracking and the report read it back
with `Measurement.of` / `from_json` instead of picking loose keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from optimizer.measure.footprint import Footprint
from optimizer.measure.price import Price
from optimizer.measure.stats import Drop
from optimizer.measure.width_check import WidthCheck

ATTR = "measurement"  # the Optuna trial user attribute holding Measurement.to_json()
RUN_SCHEMAS = ("costopt.trial/1", "costopt.trial/2")  # `costopt run` result files this version reads
WORKER = "worker"  # trial user attribute written first, before any figure: which process claimed it


class Pruned(Exception):
    """A measurement stopped early on purpose. `constraint`: the budget violation the sampler learns
    from (a screen's optimistic end), when one is known."""

    def __init__(self, reason: str, constraint: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.constraint = reason, constraint


class Broken(Pruned):
    """The chain's quality is past a metric's `broken` bound (`metrics.broken_by`): it broke the model, so
    its speed is not measured and it is never priced, in a search or a single run."""


@dataclass
class Measurement:
    """Figures of one chain served one way, against the baseline its worker measured.

    A drop is a `measure.stats.Drop` (the drop, its interval, and relative to the baseline);
    `violation` is the budget rule's (`budget.Budget.violation`): the upper end of the drop's interval
    minus the budget, on the worst eval set; <= 0 is within budget, None when quality was not measured.
    """

    passes: list[dict[str, Any]] = field(default_factory=list)
    deployment: dict[str, Any] = field(default_factory=dict)  # runtime, batch_size, threads, streams
    metric: str = ""  # the budget's metric: `drop` is its drop
    hardware: dict[str, Any] = field(default_factory=dict)  # cpu, gpus, device, catalog (the entry it is priced on)
    baseline_objective: float | None = None  # the objective of the baseline it is compared with (its worker's)
    quality: dict[str, float] = field(default_factory=dict)
    drops: dict[str, Drop] = field(default_factory=dict)  # by metric
    drops_by_set: dict[str, dict[str, Drop]] = field(default_factory=dict)  # with data.extra_eval: set -> metric -> drop
    quality_batches: str | None = None  # how quality was batched (batch-dependent outputs are judged as served)
    widths: WidthCheck | None = None  # outputs at every servable input width vs the baseline
    padded: dict[str, int] | None = None  # widths its trial served around (pad-widths) to judge it as it would be served
    screen: Drop | None = None  # the budget metric's drop on the screening subset
    violation: float | None = None
    speed: dict[str, Any] | None = None  # measure.speed's figures (medians, spread, operating points, roofline)
    cost: Price | None = None  # its price on `hardware.catalog`
    footprint: Footprint | None = None  # parameters, non-zeros, weight and disk bytes, memory served alone
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per pass and stage
    seconds: float | None = None  # the whole measurement's wall time
    error: str | None = None
    pruned: str | None = None  # why it stopped early on purpose
    broken: str | None = None  # why its quality says the chain broke the model (then also `pruned`)
    same_as: int | None = None  # a repeat of that trial's configuration: its figures, not measured again
    repeat: bool = False  # answered without measuring (a repeat, or the baseline itself); not counted

    @property
    def drop(self) -> Drop | None:
        return self.drops.get(self.metric)

    @property
    def feasible(self) -> bool | None:
        """Within budget, and no input width where its outputs are a defect (when widths were checked)."""
        if self.violation is None:
            return None
        return self.violation <= 0 and not (self.widths and self.widths.defects)

    @property
    def measured(self) -> bool:
        """Quality judged in full (a violation is known)."""
        return self.violation is not None

    @property
    def runtime(self) -> str | None:
        return self.deployment.get("runtime")

    @property
    def reason(self) -> str | None:
        """Why it has no figures of its own, if so: its error, why it was pruned, or whose figures it reuses."""
        if self.error or self.pruned:
            return self.error or self.pruned
        return f"same configuration as trial {self.same_as}: its figures" if self.same_as is not None else None

    def budget_drops(self) -> dict[str, Drop]:
        """The budget metric's drop on each eval set ({} with one set)."""
        return {name: d[self.metric] for name, d in self.drops_by_set.items() if self.metric in d}

    def tokens_per_s(self) -> dict[str, float]:
        """The median input / output tokens per second."""
        return {k: self.speed[k]["median"] for k in ("input_tokens_per_s", "output_tokens_per_s") if k in (self.speed or {})}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # the typed figures (Drop, WidthCheck, Price, Footprint) as their dicts

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Measurement:
        """A stored record (its figures as dicts: `Drop.from_json` and `WidthCheck.from_json` read every version's)."""
        known = {f.name for f in fields(cls)}
        m = cls(**{k: v for k, v in d.items() if k in known})
        m.drops = {k: Drop.from_json(v) for k, v in m.drops.items()}
        m.drops_by_set = {n: {k: Drop.from_json(v) for k, v in ds.items()} for n, ds in m.drops_by_set.items()}
        m.screen = Drop.maybe(m.screen)
        m.widths = WidthCheck.maybe(m.widths)
        m.cost = Price.maybe(m.cost)
        m.footprint = Footprint.maybe(m.footprint)
        return m

    @classmethod
    def of(cls, trial: Any) -> Measurement:
        """An Optuna trial's record; studies written before the record existed kept its parts as loose
        user attributes, read here the same way."""
        attrs = trial.user_attrs
        if ATTR in attrs:
            return cls.from_json(attrs[ATTR])
        return _legacy(attrs)

    def save(self, trial: Any) -> None:
        trial.set_user_attr(ATTR, self.to_json())


def _legacy(attrs: dict[str, Any]) -> Measurement:
    """A trial stored before the record existed: one user attribute per part."""
    m = Measurement.from_json({k: v for k, v in attrs.items() if k not in ("speed", "drop", "drops_by_set", ATTR)})
    m.speed = attrs.get("speed_detail")
    m.violation = (attrs.get("constraint") or [None])[0]
    drop = attrs.get("drop")
    m.metric = next((k for k, d in m.drops.items() if d == Drop.from_json(drop)), "") if drop else ""
    if attrs.get("drops_by_set") and m.metric:
        m.drops_by_set = {name: {m.metric: Drop.from_json(d)} for name, d in attrs["drops_by_set"].items()}
    return m


def run_candidate(result: dict[str, Any]) -> Measurement | None:
    """A `costopt run` result's candidate; a costopt.trial/1 file kept its drops beside it."""
    c = result.get("candidate")
    if not c:
        return None
    if result.get("schema") != "costopt.trial/1":
        return Measurement.from_json(c)
    return Measurement.from_json(
        {
            "passes": result.get("passes", []),
            "deployment": {"runtime": c.get("runtime")},
            "metric": result.get("primary_metric", ""),
            "quality": c.get("quality") or {},
            "drops": result.get("drops") or {},
            "drops_by_set": result.get("drops_by_set") or {},
            "speed": c.get("speed"),
            "cost": c.get("cost"),
            "footprint": c.get("footprint"),
        }
    )
