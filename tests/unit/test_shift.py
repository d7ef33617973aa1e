"""The shift statistics drift and the rollout gate share."""

from __future__ import annotations

import numpy as np
from scipy import stats

from retrain.shift import EMPTY_SHARE, ks_p_value, psi


def test_psi_is_zero_for_equal_shares_finite_with_an_empty_bin_and_vectorised():
    ref = np.array([0.25, 0.25, 0.25, 0.25])
    assert psi(ref, ref) == 0.0
    empty = np.array([0.5, 0.5, 0.0, 0.0])
    value = psi(empty, ref)
    expected = sum((max(n, EMPTY_SHARE) - r) * np.log(max(n, EMPTY_SHARE) / r)
                   for n, r in zip(empty, ref, strict=True))
    assert np.isfinite(value) and np.isclose(value, expected)
    both = psi(np.stack([ref, empty]), np.stack([ref, ref]))
    assert both.shape == (2,) and np.allclose(both, [0.0, expected])


def test_ks_p_value_matches_scipys_asymptotic_test_on_large_samples():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=4000), rng.normal(0.05, size=3000)
    exact = stats.ks_2samp(a, b, method="asymp")
    assert np.isclose(ks_p_value(exact.statistic, len(a), len(b)), exact.pvalue, atol=0.02)
    assert np.allclose(ks_p_value(np.array([0.0, 1.0]), 100, 100), [1.0, 0.0])
