"""The quality metrics: one table entry each (its task, the eval data it reads, how per-example values
aggregate, its direction); `measure.quality.QualityEvaluator` computes the per-example values.

Adding a metric is an entry here plus its per-example values in the evaluator of its task. Within a
task the first default metric is the default primary one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    task: str  # embedding, causal-lm or classification
    aggregate: str  # how measure.stats aggregates the per-example values: mean, ratio, exp_ratio, spearman, macro_f1
    higher_is_better: bool = True
    needs: str | None = None  # the eval data kind it reads (pairs, scored-pairs, labeled); None: any of the task's
    default: bool = True  # measured when the recipe's quality.metrics does not list metrics
    # a continuous score against the baseline's outputs, moved by any change of them: what sensitivity ranks by
    signal: bool = False


METRICS: dict[str, Metric] = {
    "mrr": Metric("embedding", "mean", needs="pairs"),
    "recall@1": Metric("embedding", "mean", needs="pairs"),
    "ndcg@10": Metric("embedding", "mean", needs="pairs"),
    "fidelity": Metric("embedding", "mean", signal=True),  # cosine to the baseline's embedding
    "spearman": Metric("embedding", "spearman", needs="scored-pairs", default=False),
    "perplexity": Metric("causal-lm", "exp_ratio", higher_is_better=False),
    "kl": Metric("causal-lm", "ratio", higher_is_better=False, signal=True),  # per token, from the baseline's distribution
    "top1-agreement": Metric("causal-lm", "ratio"),
    "accuracy": Metric("classification", "mean", needs="labeled"),
    "f1": Metric("classification", "macro_f1", needs="labeled"),
    "agreement": Metric("classification", "mean"),  # the baseline's prediction kept
}


def task_metrics(task: str) -> list[str]:
    return [name for name, m in METRICS.items() if m.task == task]


def default_metrics(task: str) -> list[str]:
    return [name for name, m in METRICS.items() if m.task == task and m.default]
