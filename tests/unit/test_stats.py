"""The paired intervals cover the true difference at about their nominal rate."""

import numpy as np
import pytest
from scipy.stats import norm

from retrain.stats import auc, bootstrap_difference, delong_difference, paired_difference


def test_delong_interval_covers_the_true_auc_difference_at_nominal_rate():
    # binormal model: positives score N(mu, 1) above negatives' N(0, 1) -> AUC = Phi(mu / sqrt 2)
    mu_a, mu_b = 1.0, 0.8
    truth = norm.cdf(mu_a / np.sqrt(2)) - norm.cdf(mu_b / np.sqrt(2))
    rng = np.random.default_rng(0)
    repeats, hits = 300, 0
    for _ in range(repeats):
        y = rng.integers(0, 2, 1000)
        shared = rng.normal(size=1000)  # correlated models, as two models of one task are
        a = y * mu_a + (0.6 * shared + 0.8 * rng.normal(size=1000))
        b = y * mu_b + (0.6 * shared + 0.8 * rng.normal(size=1000))
        d = delong_difference(y, a, b, confidence=0.9)
        hits += d.low <= truth <= d.high
    # 90 % nominal; the binomial sd over 300 runs is 1.7 points
    assert 0.85 <= hits / repeats <= 0.95


@pytest.mark.slow  # 200 bootstraps of 400 samples over 2,000 buckets: 20-60 s on 2 cores
def test_bootstrap_interval_covers_the_true_mae_difference_at_nominal_rate():
    # errors N(0, 1) vs N(0, 1.2): MAE = sd * sqrt(2 / pi); challenger better by 0.2*sqrt(2/pi)
    truth = 0.2 * np.sqrt(2 / np.pi)
    rng = np.random.default_rng(1)
    repeats, hits = 200, 0
    for i in range(repeats):
        y = rng.normal(size=2000)
        d = bootstrap_difference("mae", y, y + rng.normal(size=2000),
                                 y + 1.2 * rng.normal(size=2000), greater_is_better=False,
                                 confidence=0.9, samples=400, seed=i)
        hits += d.low <= truth <= d.high
    assert 0.84 <= hits / repeats <= 0.96


def test_identical_models_have_an_interval_around_zero():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 500)
    p = rng.uniform(size=500)
    for metric in ("auc", "logloss", "accuracy"):
        d = paired_difference(metric, y, p, p, greater_is_better=metric != "logloss")
        assert d.estimate == pytest.approx(0) and d.low == pytest.approx(0, abs=1e-12)


def test_sign_follows_the_metric_direction():
    y = np.zeros(400)
    good, bad = np.full(400, 0.1), np.full(400, 0.5)
    d = paired_difference("rmse", y, good, bad, greater_is_better=False)
    assert d.estimate == pytest.approx(0.4) and d.low > 0


def test_same_seed_same_interval_and_validation():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    a, b = rng.uniform(size=300), rng.uniform(size=300)
    first = paired_difference("logloss", y, a, b, greater_is_better=False, seed=5)
    again = paired_difference("logloss", y, a, b, greater_is_better=False, seed=5)
    assert first == again
    with pytest.raises(ValueError, match=r"confidence=1\.5"):
        paired_difference("auc", y, a, b, greater_is_better=True, confidence=1.5)
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference("auc", y, a[:10], b, greater_is_better=True)


def test_fast_auc_matches_sklearn_with_many_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 5000)
    s = np.round(rng.normal(size=5000) + y, 1)
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
