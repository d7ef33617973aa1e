"""Paired confidence intervals for "challenger minus champion" on one holdout.

Two methods, both paired (the models are scored on identical rows, so their errors correlate
and the interval of the difference is much tighter than two separate intervals):

- AUC: DeLong's test. The AUC of each model is a U-statistic; its per-row structural
  components give the covariance of the two AUCs and so a normal interval of the difference,
  in O(n log n) with no resampling (DeLong, DeLong & Clarke-Pearson 1988; the fast midrank
  algorithm of Sun & Xu 2014).
- Metrics that are a function of per-row sums (log loss, accuracy, MAE, RMSE): a paired
  bootstrap over row buckets. Rows are shuffled once into K buckets (seeded) and summed per
  bucket; each bootstrap sample redraws K buckets with replacement. The buckets are i.i.d., so
  this is the ordinary bootstrap of the sum at a cost of O(n + B * K) instead of O(n * B):
  fast enough for millions of rows.

Everything here is pure numpy/scipy, deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.special import ndtri

Method = Literal["delong", "bootstrap"]


@dataclass(frozen=True)
class Difference:
    """Challenger minus champion on one metric, signed so that > 0 means the challenger is
    better, with a two-sided interval at ``confidence``."""

    metric: str
    estimate: float
    low: float
    high: float
    confidence: float
    method: Method

    def to_dict(self) -> dict:
        return {
            "metric": self.metric, "estimate": self.estimate, "low": self.low,
            "high": self.high, "confidence": self.confidence, "method": self.method,
        }


# -- AUC: DeLong ----------------------------------------------------------------------------

def _delong_components(y: np.ndarray, score: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and its structural components from one sort.

    For a positive, V10 is the share of negatives scored below it (ties count half); for a
    negative, V01 is the share of positives scored above it. Both follow from the counts of
    positives and negatives before and inside each group of tied scores.
    """
    order = np.argsort(score)
    ordered, positive = score[order], y[order] == 1
    m = int(positive.sum())
    n = len(y) - m
    new_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(new_group) - 1
    pos_in = np.bincount(group, weights=positive).astype(np.float64)
    neg_in = np.bincount(group).astype(np.float64) - pos_in
    pos_before = np.cumsum(pos_in) - pos_in
    neg_before = np.cumsum(neg_in) - neg_in
    # Per row, in sorted order; then back to the original row order, so that the components
    # of two models pair up row by row (their covariance is what makes the test paired).
    below = np.where(positive, (neg_before[group] + neg_in[group] / 2) / n,
                     1.0 - (pos_before[group] + pos_in[group] / 2) / m)
    by_row = np.empty_like(below)
    by_row[order] = below
    is_positive = y == 1
    v10, v01 = by_row[is_positive], by_row[~is_positive]
    return float(v10.mean()), v10, v01


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC with ties counted half (the Mann-Whitney statistic); NaN with one class."""
    y = np.asarray(y)
    if len(y) == 0 or y.min() == y.max():
        return float("nan")
    return _delong_components(y, np.asarray(score, dtype=np.float64))[0]


def delong_difference(
    y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, *, confidence: float = 0.95
) -> Difference:
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        nan = float("nan")
        return Difference("auc", nan, nan, nan, confidence, "delong")
    auc_c, v10_c, v01_c = _delong_components(y, np.asarray(challenger, dtype=np.float64))
    auc_k, v10_k, v01_k = _delong_components(y, np.asarray(champion, dtype=np.float64))
    m, n = len(v10_c), len(v01_c)
    s10 = np.cov(np.vstack([v10_c, v10_k]))
    s01 = np.cov(np.vstack([v01_c, v01_k]))
    cov = s10 / m + s01 / n
    variance = max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0)
    estimate = auc_c - auc_k
    half = float(ndtri(0.5 + confidence / 2) * np.sqrt(variance))
    return Difference("auc", estimate, estimate - half, estimate + half, confidence, "delong")


# -- sum-decomposable metrics: bucketed paired bootstrap ------------------------------------

def _row_terms(metric: str, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    if metric == "logloss":
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))
    if metric == "accuracy":
        return ((p >= 0.5) == (y == 1)).astype(np.float64)
    if metric == "mae":
        return np.abs(y - p)
    if metric == "rmse":
        return (y - p) ** 2
    raise ValueError(f"no paired bootstrap for metric {metric!r}")


def _finish(metric: str, mean: np.ndarray) -> np.ndarray:
    return np.sqrt(mean) if metric == "rmse" else mean


def bootstrap_difference(
    metric: str,
    y: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    *,
    greater_is_better: bool,
    confidence: float = 0.95,
    samples: int = 1000,
    buckets: int = 2000,
    seed: int = 0,
) -> Difference:
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    rng = np.random.default_rng(seed)
    k = min(buckets, n)
    bucket = rng.permutation(n) % k
    terms_c = _row_terms(metric, y, np.asarray(challenger, dtype=np.float64))
    terms_k = _row_terms(metric, y, np.asarray(champion, dtype=np.float64))
    sums_c = np.bincount(bucket, weights=terms_c, minlength=k)
    sums_k = np.bincount(bucket, weights=terms_k, minlength=k)
    rows = np.bincount(bucket, minlength=k).astype(np.float64)
    counts = rng.multinomial(k, np.full(k, 1.0 / k), size=samples).astype(np.float64)
    drawn_rows = counts @ rows
    value_c = _finish(metric, counts @ sums_c / drawn_rows)
    value_k = _finish(metric, counts @ sums_k / drawn_rows)
    sign = 1.0 if greater_is_better else -1.0
    deltas = sign * (value_c - value_k)
    estimate = sign * float(
        _finish(metric, terms_c.mean()) - _finish(metric, terms_k.mean())
    )
    tail = (1 - confidence) / 2
    low, high = np.quantile(deltas, [tail, 1 - tail])
    return Difference(metric, estimate, float(low), float(high), confidence, "bootstrap")


def paired_difference(
    metric: str,
    y: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    *,
    greater_is_better: bool,
    confidence: float = 0.95,
    samples: int = 1000,
    seed: int = 0,
) -> Difference:
    """The paired interval of challenger minus champion for any supported metric."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), but got {confidence=}")
    if len(y) != len(challenger) or len(y) != len(champion):
        raise ValueError(
            f"labels and predictions differ in length: {len(y)=}, {len(challenger)=}, "
            f"{len(champion)=}"
        )
    if metric == "auc":
        return delong_difference(y, challenger, champion, confidence=confidence)
    return bootstrap_difference(
        metric, y, challenger, champion, greater_is_better=greater_is_better,
        confidence=confidence, samples=samples, seed=seed,
    )
