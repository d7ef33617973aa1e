"""Score the champion and the challenger on the same holdout rows (pure: arrays in, values out)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from retrain.config import METRIC_DIRECTIONS, TASK_METRICS


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return float("nan")  # undefined on one class; decide() treats NaN as "no evidence"
    return float(roc_auc_score(y, p))


def _logloss(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    return float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]))


def _accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((p >= 0.5) == (y == 1)))


def _rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(np.mean((y - p) ** 2)))


def _mae(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.abs(y - p)))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auc": _auc,
    "logloss": _logloss,
    "accuracy": _accuracy,
    "rmse": _rmse,
    "mae": _mae,
}


def score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)}")
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    return METRICS[metric](np.asarray(y_true), np.asarray(y_pred, dtype=np.float64))


def score_all(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {name: score(name, y_true, y_pred) for name in TASK_METRICS[task]}


@dataclass(frozen=True)
class Comparison:
    """Champion and challenger scored on identical holdout rows."""

    metric: str
    holdout_rows: int
    challenger: dict[str, float]
    champion: dict[str, float] | None = None
    champion_version: str | None = None

    @property
    def greater_is_better(self) -> bool:
        return METRIC_DIRECTIONS[self.metric]

    @property
    def improvement(self) -> float | None:
        """Challenger minus champion on the primary metric, signed so that > 0 is better."""
        if self.champion is None:
            return None
        delta = self.challenger[self.metric] - self.champion[self.metric]
        return delta if self.greater_is_better else -delta


def compare(
    task: str,
    metric: str,
    y_holdout: np.ndarray,
    challenger_pred: np.ndarray,
    champion_pred: np.ndarray | None = None,
    champion_version: str | None = None,
) -> Comparison:
    return Comparison(
        metric=metric,
        holdout_rows=len(y_holdout),
        challenger=score_all(task, y_holdout, challenger_pred),
        champion=None if champion_pred is None else score_all(task, y_holdout, champion_pred),
        champion_version=champion_version,
    )
