"""Aggregates with known answers and the behaviour of the paired bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.measure.stats import MetricValues, macro_f1, paired_bootstrap, spearman


def test_aggregates_known_answers():
    assert MetricValues("m", np.array([0.0, 1.0, 0.5]), "mean", True).value == pytest.approx(0.5)
    # token-weighted: (2 + 0) / (4 + 4), not the mean of per-example ratios (0.5 + 0) / 2
    assert MetricValues("k", np.array([[2.0, 4.0], [0.0, 4.0]]), "ratio", False).value == pytest.approx(0.25)
    assert MetricValues("p", np.array([[np.log(7) * 3, 3.0]]), "exp_ratio", False).value == pytest.approx(7.0)
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([1.0, 4, 9, 16])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2, 3]), np.array([3.0, 2, 1])) == pytest.approx(-1.0)
    assert spearman(np.array([1.0, 1, 2]), np.array([1.0, 2, 3])) == pytest.approx(0.8660254, abs=1e-6)
    assert macro_f1(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])) == pytest.approx((0.8 + 2 / 3) / 2)


def test_identical_candidate_has_zero_drop():
    v = np.random.default_rng(0).random(200)
    d = paired_bootstrap(MetricValues("m", v, "mean", True), MetricValues("m", v.copy(), "mean", True))
    assert d.drop == 0 and d.low == 0 and d.high == 0 and d.relative == 0


def test_constant_shift_is_recovered_with_tight_interval():
    v = np.random.default_rng(1).random(300)
    d = paired_bootstrap(MetricValues("m", v, "mean", True), MetricValues("m", v - 0.05, "mean", True))
    assert d.drop == pytest.approx(0.05)
    assert d.low == pytest.approx(0.05) and d.high == pytest.approx(0.05)  # paired: no noise at all


def test_lower_is_better_sign_and_relative():
    base = MetricValues("ppl", np.array([[np.log(10.0), 1.0]] * 50), "exp_ratio", False)
    worse = MetricValues("ppl", np.array([[np.log(12.0), 1.0]] * 50), "exp_ratio", False)
    d = paired_bootstrap(base, worse)
    assert d.drop == pytest.approx(2.0) and d.relative == pytest.approx(0.2)
    zero = MetricValues("kl", np.array([[0.0, 1.0]] * 10), "ratio", False)
    d2 = paired_bootstrap(zero, MetricValues("kl", np.array([[0.1, 1.0]] * 10), "ratio", False))
    assert d2.drop == pytest.approx(0.1) and d2.relative is None


def test_interval_contains_truth_and_shrinks_with_n():
    rng = np.random.default_rng(2)
    widths, covered = [], 0
    for n in (50, 800):
        base = rng.random(n)
        cand = base - 0.02 + rng.normal(0, 0.1, n)  # true mean drop 0.02
        d = paired_bootstrap(MetricValues("m", base, "mean", True), MetricValues("m", cand, "mean", True), 2000)
        widths.append(d.high - d.low)
        assert d.low < d.drop < d.high
    assert widths[1] < widths[0] / 2.5  # ~ 1/sqrt(n): 4x fewer width for 16x the data
    for seed in range(40):  # coverage of a 95% interval, roughly
        r = np.random.default_rng(100 + seed)
        base = r.random(200)
        cand = base - 0.02 + r.normal(0, 0.1, 200)
        d = paired_bootstrap(MetricValues("m", base, "mean", True), MetricValues("m", cand, "mean", True), 500, seed=seed)
        covered += d.low <= 0.02 <= d.high
    assert covered >= 34


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        paired_bootstrap(MetricValues("m", np.ones(3), "mean", True), MetricValues("m", np.ones(4), "mean", True))
