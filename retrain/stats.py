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

from retrain.errors import InvalidValueError

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

def _sorted_components(positive: np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """Per row in score order: V10 for a positive (share of negatives scored below it, ties
    half) or V01 for a negative (share of positives scored above it). Both follow from the
    counts of positives and negatives before and inside each group of tied scores."""
    m = int(positive.sum())
    n = len(positive) - m
    new_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(new_group) - 1
    pos_in = np.bincount(group, weights=positive).astype(np.float64)
    neg_in = np.bincount(group).astype(np.float64) - pos_in
    pos_before = np.cumsum(pos_in) - pos_in
    neg_before = np.cumsum(neg_in) - neg_in
    return np.where(positive, (neg_before[group] + neg_in[group] / 2) / max(n, 1),
                    1.0 - (pos_before[group] + pos_in[group] / 2) / max(m, 1))


@dataclass(frozen=True)
class AucParts:
    """One model's AUC, its DeLong components (V10 over positives, V01 over negatives, in the
    original row order so two models pair up row by row) and its score order. Computed once
    per model and reused by the metric, the paired test and the slices."""

    auc: float
    v10: np.ndarray
    v01: np.ndarray
    order: np.ndarray


def _scores(score: np.ndarray) -> np.ndarray:
    # float32 scores (XGBoost's) sort faster than float64 and rank identically
    score = np.asarray(score)
    return score if score.dtype.kind == "f" else score.astype(np.float64)


def auc_parts(y: np.ndarray, score: np.ndarray, order: np.ndarray | None = None) -> AucParts:
    y, score = np.asarray(y), _scores(score)
    order = np.argsort(score) if order is None else order
    positive = y[order] == 1
    below = _sorted_components(positive, score[order])
    by_row = np.empty_like(below)
    by_row[order] = below
    is_positive = y == 1
    v10, v01 = by_row[is_positive], by_row[~is_positive]
    value = float(v10.mean()) if len(v10) and len(v01) else float("nan")
    return AucParts(value, v10, v01, order)


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC with ties counted half (the Mann-Whitney statistic); NaN with one class."""
    y = np.asarray(y)
    if len(y) == 0 or y.min() == y.max():
        return float("nan")
    score = _scores(score)
    order = np.argsort(score)
    positive = y[order] == 1
    return float(_sorted_components(positive, score[order])[positive].mean())


def auc_in_group(y: np.ndarray, score: np.ndarray, order: np.ndarray, rows: np.ndarray) -> float:
    """AUC on the rows where ``rows`` (a boolean mask) is true, reusing the full sort:
    the sorted order restricted to a subset is still sorted."""
    sub = order[rows[order]]
    y_sub = y[sub]
    if len(sub) == 0 or y_sub.min() == y_sub.max():
        return float("nan")
    positive = y_sub == 1
    return float(_sorted_components(positive, score[sub])[positive].mean())


def delong_difference(
    y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, *, confidence: float = 0.95,
    parts: tuple[AucParts | None, AucParts | None] = (None, None),
) -> Difference:
    y = np.asarray(y)
    if len(y) == 0 or y.min() == y.max():
        nan = float("nan")
        return Difference("auc", nan, nan, nan, confidence, "delong")
    mine = parts[0] or auc_parts(y, challenger)
    theirs = parts[1] or auc_parts(y, champion)
    auc_c, v10_c, v01_c = mine.auc, mine.v10, mine.v01
    auc_k, v10_k, v01_k = theirs.auc, theirs.v10, theirs.v01
    m, n = len(v10_c), len(v01_c)
    s10 = np.cov(np.vstack([v10_c, v10_k]))
    s01 = np.cov(np.vstack([v01_c, v01_k]))
    cov = s10 / m + s01 / n
    variance = max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0)
    estimate = auc_c - auc_k
    half = float(ndtri(0.5 + confidence / 2) * np.sqrt(variance))
    return Difference("auc", estimate, estimate - half, estimate + half, confidence, "delong")


# -- sum-decomposable metrics: bucketed paired bootstrap ------------------------------------

def row_terms(metric: str, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-row terms whose mean is the metric (RMSE: whose mean's root is)."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if metric == "logloss":
        # float64: in float32, 1 - 1e-7 rounds to 1 and log(1 - p) becomes -inf
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))
    if metric == "accuracy":
        return ((p >= 0.5) == (y == 1)).astype(np.float64)
    if metric == "mae":
        return np.abs(y - p)
    if metric == "rmse":
        return (y - p) ** 2
    raise InvalidValueError(f"no paired bootstrap for metric {metric!r}")


def finish(metric: str, mean):
    """The metric from the mean of its row terms."""
    return np.sqrt(mean) if metric == "rmse" else mean


@dataclass(frozen=True)
class Buckets:
    """The bootstrap's random design, drawn once and shared by every metric of a comparison:
    which bucket each row falls in, and how often each bootstrap sample draws each bucket."""

    bucket: np.ndarray  # row -> bucket
    rows: np.ndarray  # rows per bucket
    counts: np.ndarray  # samples x buckets draw counts
    drawn_rows: np.ndarray  # rows per bootstrap sample

    @classmethod
    def draw(cls, n: int, *, samples: int = 1000, buckets: int = 2000, seed: int = 0) -> Buckets:
        rng = np.random.default_rng(seed)
        k = min(buckets, n)
        # i.i.d. bucket per row: bucket sums are then i.i.d. too, which is all we need
        bucket = rng.integers(0, k, n)
        rows = np.bincount(bucket, minlength=k).astype(np.float64)
        counts = rng.multinomial(k, np.full(k, 1.0 / k), size=samples).astype(np.float64)
        return cls(bucket, rows, counts, counts @ rows)


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
    design: Buckets | None = None,
) -> Difference:
    y = np.asarray(y, dtype=np.float64)
    design = design or Buckets.draw(len(y), samples=samples, buckets=buckets, seed=seed)
    k = len(design.rows)
    terms_c = row_terms(metric, y, np.asarray(challenger, dtype=np.float64))
    terms_k = row_terms(metric, y, np.asarray(champion, dtype=np.float64))
    sums_c = np.bincount(design.bucket, weights=terms_c, minlength=k)
    sums_k = np.bincount(design.bucket, weights=terms_k, minlength=k)
    value_c = finish(metric, design.counts @ sums_c / design.drawn_rows)
    value_k = finish(metric, design.counts @ sums_k / design.drawn_rows)
    sign = 1.0 if greater_is_better else -1.0
    deltas = sign * (value_c - value_k)
    estimate = sign * float(
        finish(metric, terms_c.mean()) - finish(metric, terms_k.mean())
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
    parts: tuple[AucParts | None, AucParts | None] = (None, None),
    design: Buckets | None = None,
) -> Difference:
    """The paired interval of challenger minus champion for any supported metric.

    ``parts`` (AUC) and ``design`` (bootstrap) let a caller comparing several models compute
    each model's sort and the random design once."""
    if not 0 < confidence < 1:
        raise InvalidValueError(f"confidence must be in (0, 1), but got {confidence=}")
    if len(y) != len(challenger) or len(y) != len(champion):
        raise InvalidValueError(
            f"labels and predictions differ in length: {len(y)=}, {len(challenger)=}, "
            f"{len(champion)=}"
        )
    if metric == "auc":
        return delong_difference(y, challenger, champion, confidence=confidence, parts=parts)
    return bootstrap_difference(
        metric, y, challenger, champion, greater_is_better=greater_is_better,
        confidence=confidence, samples=samples, seed=seed, design=design,
    )
