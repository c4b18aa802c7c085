"""The quality metrics: one table entry each (its task, the eval data it reads, how per-example values
aggregate, its direction); `measure.quality.QualityEvaluator` computes the per-example values.

Adding a metric is an entry here plus its per-example values in the evaluator of its task. Within a
task the first default metric is the default primary one.
"""

from __future__ import annotations

from dataclasses import dataclass

from optimizer.measure.stats import Drop


@dataclass(frozen=True)
class Metric:
    task: str  # embedding, causal-lm or classification
    aggregate: str  # how measure.stats aggregates the per-example values: mean, ratio, exp_ratio, spearman, macro_f1
    higher_is_better: bool = True
    needs: str | None = None  # the eval data kind it reads (pairs, scored-pairs, labeled); None: any of the task's
    default: bool = True  # measured when the recipe's quality.metrics does not list metrics
    # a continuous score against the baseline's outputs, moved by any change of them: what sensitivity ranks by
    signal: bool = False
    # Where the model is broken, not degraded: ("times", x) the candidate's value is at least x times the
    # baseline's, ("above", x) at least x, ("below", x) at most x. A chain past it is reported as broken
    # and never priced: its speed would be the speed of a model that no longer serves.
    broken: tuple[str, float] | None = None


METRICS: dict[str, Metric] = {
    "mrr": Metric("embedding", "mean", needs="pairs"),
    "recall@1": Metric("embedding", "mean", needs="pairs"),
    "ndcg@10": Metric("embedding", "mean", needs="pairs"),
    "fidelity": Metric("embedding", "mean", signal=True, broken=("below", 0.5)),  # cosine to the baseline's embedding
    "spearman": Metric("embedding", "spearman", needs="scored-pairs", default=False),
    "perplexity": Metric("causal-lm", "exp_ratio", higher_is_better=False, broken=("times", 10.0)),
    # per token, from the baseline's distribution; 2 nats: on average the baseline's choice is e^2 less likely
    "kl": Metric("causal-lm", "ratio", higher_is_better=False, signal=True, broken=("above", 2.0)),
    "top1-agreement": Metric("causal-lm", "ratio", broken=("below", 0.2)),
    "accuracy": Metric("classification", "mean", needs="labeled"),
    "f1": Metric("classification", "macro_f1", needs="labeled"),
    "agreement": Metric("classification", "mean"),  # the baseline's prediction kept
}


def task_metrics(task: str) -> list[str]:
    return [name for name, m in METRICS.items() if m.task == task]


def default_metrics(task: str) -> list[str]:
    return [name for name, m in METRICS.items() if m.task == task and m.default]


def broken_by(drops: dict[str, Drop]) -> list[str]:
    """Each metric whose candidate value is past the metric's `broken` bound, in words (`drops`: metric ->
    `measure.stats.Drop`, holding the baseline's and the candidate's values)."""
    out = []
    for name, d in drops.items():
        rule = METRICS[name].broken if name in METRICS else None
        if rule is None or d.candidate is None:
            continue
        kind, bound = rule
        got, base = float(d.candidate), float(d.baseline)
        if kind == "times" and base > 0 and got >= bound * base:
            out.append(f"{name} {got:.4g} is {got / base:,.0f}x the baseline's {base:.4g}")
        elif kind == "above" and got >= bound:
            out.append(f"{name} {got:.3g} (broken at {bound:g} or more)")
        elif kind == "below" and got <= bound:
            out.append(f"{name} {got:.3g} (broken at {bound:g} or less)")
    return out
