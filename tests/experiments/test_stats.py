"""experiments.stats on constructed data where the answer is known: a shift that must be detected, a null that must
not be, Holm against a hand-worked example, interval coverage on a simulated normal, the verdict rule."""
import math

import numpy as np
import pytest

from experiments.stats import bootstrap_interval, bootstrap_mean, holm, paired_test, sign_test, verdict


def test_shift_is_detected_with_its_sign():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 40)
    b = a + 0.6 + rng.normal(0, 0.5, 40)                # a paired shift of +0.6
    res = paired_test(a, b)
    assert res.test == "wilcoxon" and res.p < 1e-3
    assert res.diff.lo < 0.6 < res.diff.hi and res.diff.lo > 0
    assert verdict(res.diff.mean, res.p, +1) == "supported"
    assert verdict(res.diff.mean, res.p, -1) == "reversed"


def test_null_is_rejected_at_about_the_nominal_rate():
    rng = np.random.default_rng(2)
    rejections = sum(paired_test(rng.normal(0, 1, 40), rng.normal(0, 1, 40), n_resamples=10).p < 0.05
                     for _ in range(300))
    assert rejections / 300 < 0.09                       # nominal 0.05; a broken test rejects far more often


def test_holm_matches_a_hand_worked_example():
    # sorted: 0.005 x4 = 0.02; 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> kept monotone at 0.06
    got = holm([0.01, 0.04, math.nan, 0.03, 0.005])
    assert np.allclose([got[i] for i in (0, 1, 3, 4)], [0.03, 0.06, 0.06, 0.02])
    assert math.isnan(got[2])
    assert holm([0.5, 0.9]) == [1.0, 1.0]               # capped at 1


def test_bootstrap_interval_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(3)
    hits = 0
    for k in range(300):
        lo, hi = bootstrap_interval(rng.normal(2.0, 1.5, 40), n_resamples=1000, seed=k)
        hits += lo <= 2.0 <= hi
    assert 0.88 <= hits / 300 <= 0.99                   # percentile bootstrap at n = 40: slightly under 0.95


def test_binary_data_use_the_sign_test():
    ours = np.array([1] * 30 + [0] * 10, dtype=float)
    other = np.array([0] * 24 + [1] * 6 + [0] * 10, dtype=float)      # 24 pairs worse, none better
    res = paired_test(ours, other)
    assert res.test == "sign" and res.n_nonzero == 24
    assert res.p == pytest.approx(2 * 0.5**24)
    assert res.diff.mean == pytest.approx(-0.6)
    assert sign_test(np.zeros(5)) == 1.0


def test_non_finite_pairs_are_dropped_and_seeds_repeat():
    a = [1.0, 2.0, math.inf, 4.0, float("nan")]
    b = [2.0, 3.0, 1.0, 5.0, 1.0]
    res = paired_test(a, b)
    assert res.diff.n == 3 and res.diff.mean == 1.0
    est = bootstrap_mean([1, 2, 3, None, 4, 5], seed=7)
    assert est.n == 5 and est == bootstrap_mean([1, 2, 3, 4, 5], seed=7)
    with pytest.raises(ValueError):
        paired_test([1.0], [1.0, 2.0])


@pytest.mark.parametrize("effect,p,sign,want", [
    (0.3, 0.01, +1, "supported"), (0.3, 0.01, -1, "reversed"), (0.3, 0.06, +1, "not supported"),
    (0.0, 0.001, +1, "not supported"), (math.nan, 0.01, +1, "not supported"), (-0.2, math.nan, -1, "not supported"),
])
def test_verdict_rule(effect, p, sign, want):
    assert verdict(effect, p, sign) == want
