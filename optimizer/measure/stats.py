"""Per-example metric values, their aggregation, and the paired bootstrap of a quality drop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from optimizer.measure.stored import Stored

# mean: mean of a column; ratio: sum(col0)/sum(col1) (token-weighted means);
# exp_ratio: exp(ratio) (perplexity); spearman: rank correlation of col0 vs col1;
# macro_f1: F1 of predicted col0 against labels col1, averaged over classes.
Aggregate = Literal["mean", "ratio", "exp_ratio", "spearman", "macro_f1"]


@dataclass
class MetricValues:
    name: str
    values: np.ndarray  # [n] or [n, 2]
    aggregate: Aggregate
    higher_is_better: bool

    @property
    def value(self) -> float:
        return float(aggregate_many(self.values, self.aggregate, np.arange(len(self.values))[None])[0])


def _rank(x: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing the mean of their positions."""
    x = np.asarray(x, dtype=float)
    ranks = np.empty(len(x))
    ranks[np.argsort(x, kind="mergesort")] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    if (counts > 1).any():
        ranks = np.bincount(inverse, weights=ranks)[inverse] / counts[inverse]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _rank(a), _rank(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def macro_f1(pred: np.ndarray, label: np.ndarray) -> float:
    scores = []
    for c in np.unique(np.concatenate([pred, label])):
        tp = np.sum((pred == c) & (label == c))
        fp = np.sum((pred == c) & (label != c))
        fn = np.sum((pred != c) & (label == c))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores))


def aggregate_many(values: np.ndarray, kind: Aggregate, idx: np.ndarray) -> np.ndarray:
    """The aggregate for each row of resample indices idx [B, n]."""
    if kind == "mean":
        return values[idx].mean(axis=1)
    if kind in ("ratio", "exp_ratio"):
        num, den = values[idx, 0].sum(axis=1), values[idx, 1].sum(axis=1)
        r = np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)
        return np.exp(r) if kind == "exp_ratio" else r
    fn = spearman if kind == "spearman" else macro_f1
    return np.array([fn(values[i, 0], values[i, 1]) for i in idx])


@dataclass(frozen=True)
class Drop(Stored):
    """Quality lost going from baseline to candidate; positive means worse, whatever the metric's direction.

    The one typed figure every reader of a drop uses (budget, formatting, confirmation, report); records
    keep it as its dict (`to_json`) and read it back with `from_json`."""

    metric: str
    baseline: float
    candidate: float
    drop: float
    low: float
    high: float
    relative: float | None
    relative_low: float | None
    relative_high: float | None
    confidence: float
    n: int

    def end(self, side: Literal["point", "low", "high"], relative: bool) -> float:
        """The point or an end of the interval: relative to the baseline when asked and defined, else in the
        metric's own unit."""
        rel = {"point": self.relative, "low": self.relative_low, "high": self.relative_high}[side]
        if relative and rel is not None:
            return rel
        return {"point": self.drop, "low": self.low, "high": self.high}[side]

    def shown_relative(self, relative: bool) -> bool:
        """Relative where asked for and defined (a baseline of 0, as KL has, has none)."""
        return relative and self.relative is not None and self.baseline != 0

    # records written before `confidence` and `n` were kept read them as unknown
    _defaults: ClassVar[dict[str, Any]] = {"confidence": 0.95, "n": 0}


def paired_bootstrap(
    base: MetricValues, cand: MetricValues, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Drop:
    """Resample examples with replacement, the same indices for both, and take percentiles of the drop."""
    n = len(base.values)
    if len(cand.values) != n:
        raise ValueError(f"{base.name}: baseline has {n} examples, candidate {len(cand.values)}")
    sign = 1.0 if base.higher_is_better else -1.0
    b0, c0 = base.value, cand.value
    rng = np.random.default_rng(seed)
    drops, rels = [], []
    for s in range(0, resamples, 250):  # chunks bound the memory of [B, n] index arrays
        idx = rng.integers(0, n, size=(min(250, resamples - s), n))
        bb, cc = aggregate_many(base.values, base.aggregate, idx), aggregate_many(cand.values, cand.aggregate, idx)
        d = sign * (bb - cc)
        drops.append(d)
        rels.append(np.divide(d, np.abs(bb), out=np.full_like(d, np.nan), where=np.abs(bb) > 1e-12))
    d_all, r_all = np.concatenate(drops), np.concatenate(rels)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(d_all, [alpha, 1 - alpha])
    rel = sign * (b0 - c0) / abs(b0) if abs(b0) > 1e-12 else None
    rel_lo = rel_hi = None
    if rel is not None and np.isfinite(r_all).all():
        rel_lo, rel_hi = (float(x) for x in np.quantile(r_all, [alpha, 1 - alpha]))
    return Drop(base.name, b0, c0, sign * (b0 - c0), float(lo), float(hi), rel, rel_lo, rel_hi, confidence, n)


def ratio_interval(
    numerator: list[float], denominator: list[float], confidence: float = 0.95, resamples: int = 5000, seed: int = 0
) -> dict[str, float]:
    """Median of the per-round ratios numerator/denominator, with a bootstrap interval over rounds.

    Rounds are paired (both sides timed in the same round, in alternation), so a slow moment of the
    machine moves both and mostly cancels in the ratio."""
    ratios = np.asarray(numerator, dtype=float) / np.asarray(denominator, dtype=float)
    boot = np.median(np.random.default_rng(seed).choice(ratios, (resamples, len(ratios))), axis=1)
    alpha = (1 - confidence) / 2
    return {
        "median": float(np.median(ratios)),
        "low": float(np.quantile(boot, alpha)),
        "high": float(np.quantile(boot, 1 - alpha)),
        "rounds": len(ratios),
        "confidence": confidence,
    }
