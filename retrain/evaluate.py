"""Score the champion and the finalist challengers on the same holdout rows.

Pure: predictions and labels in, typed values out. The evidence for a decision is a paired
interval of challenger minus champion (`retrain.stats`), per-slice metrics, and the serving
footprint (latency, size) measured for both in the same run.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from retrain.config import METRIC_DIRECTIONS, TASK_METRICS, EvaluationConfig
from retrain.errors import InvalidValueError
from retrain.stats import (
    AucParts,
    Buckets,
    Difference,
    auc,
    auc_in_group,
    auc_parts,
    finish,
    paired_difference,
    row_terms,
)


def _mean_of_rows(metric: str) -> Callable[[np.ndarray, np.ndarray], float]:
    # one definition of each per-row term, shared with the bootstrap in retrain.stats
    return lambda y, p: float(finish(metric, row_terms(metric, y, p).mean()))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auc": auc,
    **{name: _mean_of_rows(name) for name in ("logloss", "accuracy", "rmse", "mae")},
}


def score(
    metric: str, y_true: np.ndarray, y_pred: np.ndarray, *, parts: AucParts | None = None
) -> float:
    """One metric; ``parts`` spares AUC the sort it already had."""
    if metric not in METRICS:
        raise InvalidValueError(f"unknown metric {metric!r}; known: {sorted(METRICS)}")
    if len(y_true) != len(y_pred):
        raise InvalidValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    if metric == "auc" and parts is not None:
        return parts.auc
    return METRICS[metric](np.asarray(y_true), np.asarray(y_pred))


def score_all(
    task: str, y_true: np.ndarray, y_pred: np.ndarray, *, parts: AucParts | None = None
) -> dict[str, float]:
    return {name: score(name, y_true, y_pred, parts=parts) for name in TASK_METRICS[task]}


def _parts(task: str, y: np.ndarray, predictions: np.ndarray) -> AucParts | None:
    """Each model's scores are sorted once and reused by AUC, DeLong and the slices."""
    if "auc" not in TASK_METRICS[task] or len(y) == 0 or y.min() == y.max():
        return None
    return auc_parts(y, predictions)


@dataclass(frozen=True)
class Footprint:
    """What a model costs to serve, measured through the serving path (spec + booster)."""

    single_row_ms: float
    batch_ms_per_1k: float
    size_bytes: int


def measure_footprints(
    models: Mapping[str, tuple[Callable[[Any], np.ndarray], int]],
    sample: pd.DataFrame, *, repeats: int = 30,
    prepare: Callable[[pd.DataFrame], Any] | None = None,
) -> dict[str, Footprint]:
    """Median single-row and per-1k-rows batch latency of each model's ``predict`` on raw rows.

    ``models`` maps a name to ``(predict, size_bytes)``. ``prepare`` turns the single row and
    the batch into what ``predict`` takes (a request body, for the serving path), once and
    outside the timing. The models are timed interleaved:
    every round times each of them once, in a rotating order. On a shared machine a burst of
    load then slows all of them alike, so the challenger/champion ratios the guardrails read
    stay fair even when the absolute figures are noisy.
    """
    row = sample.iloc[:1]
    batch = sample.iloc[:1000] if len(sample) >= 1000 else sample.sample(
        1000, replace=True, random_state=0
    )
    batch_rows = len(batch)
    if prepare is not None:
        row, batch = prepare(row), prepare(batch)
    names = list(models)
    for name in names:
        models[name][0](row)  # the first call pays lazy set-up; a warmed replica does not
    singles = _interleaved(models, names, row, repeats)
    batches = _interleaved(models, names, batch, max(3, repeats // 10))
    return {
        name: Footprint(
            single_row_ms=float(np.median(singles[name]) * 1000),
            batch_ms_per_1k=float(np.median(batches[name]) * 1000 * 1000 / batch_rows),
            size_bytes=int(models[name][1]),
        )
        for name in names
    }


def _interleaved(models, names: list[str], rows: Any, rounds: int):
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            models[name][0](rows)
            times[name].append(time.perf_counter() - start)
    return times


def measure_footprint(
    predict: Callable[[pd.DataFrame], np.ndarray], sample: pd.DataFrame, size_bytes: int,
    *, repeats: int = 30,
) -> Footprint:
    """One model's footprint; see `measure_footprints` to compare models fairly."""
    return measure_footprints({"model": (predict, size_bytes)}, sample, repeats=repeats)["model"]


@dataclass(frozen=True)
class Scored:
    """One model scored on the holdout."""

    name: str
    metrics: dict[str, float]
    footprint: Footprint | None = None
    version: str | None = None
    trial_id: str | None = None
    #: the trial's validation score (finalists only)
    valid_score: float | None = None
    #: rows the judged model trained on, when it was refit (finalists only)
    trained_rows: int | None = None


@dataclass(frozen=True)
class Finalist:
    """A model to judge: its identity and its predictions on the holdout rows."""

    name: str
    predictions: np.ndarray
    footprint: Footprint | None = None
    version: str | None = None
    trial_id: str | None = None
    valid_score: float | None = None
    #: rows the model trained on, when it was refit on every training row
    trained_rows: int | None = None


@dataclass(frozen=True)
class SliceResult:
    column: str
    group: str
    rows: int
    challenger: float
    champion: float
    #: challenger minus champion, signed so that > 0 is better
    delta: float


@dataclass(frozen=True)
class Comparison:
    """Champion and challengers scored on identical holdout rows, with the evidence."""

    metric: str
    holdout_rows: int
    challenger: Scored
    champion: Scored | None = None
    #: primary metric, challenger minus champion (> 0 better), at ``confidence``
    difference: Difference | None = None
    secondary: dict[str, Difference] = field(default_factory=dict)
    slices: tuple[SliceResult, ...] = ()
    finalists: tuple[Scored, ...] = ()
    #: the interval's confidence after the Bonferroni adjustment for the finalists
    confidence: float = 0.95

    @property
    def greater_is_better(self) -> bool:
        return METRIC_DIRECTIONS[self.metric]

    @property
    def champion_version(self) -> str | None:
        return self.champion.version if self.champion else None

    @property
    def improvement(self) -> float | None:
        return self.difference.estimate if self.difference else None

    def to_dict(self) -> dict:
        def scored(s: Scored | None) -> dict | None:
            if s is None:
                return None
            fp = s.footprint
            return {
                "name": s.name, "version": s.version, "trial_id": s.trial_id,
                "valid_score": s.valid_score, "trained_rows": s.trained_rows,
                "metrics": s.metrics,
                "footprint": None if fp is None else {
                    "single_row_ms": fp.single_row_ms, "batch_ms_per_1k": fp.batch_ms_per_1k,
                    "size_bytes": fp.size_bytes},
            }

        return {
            "metric": self.metric,
            "holdout_rows": self.holdout_rows,
            "confidence": self.confidence,
            "challenger": scored(self.challenger),
            "champion": scored(self.champion),
            "difference": self.difference.to_dict() if self.difference else None,
            "secondary": {k: v.to_dict() for k, v in self.secondary.items()},
            "slices": [s.__dict__ for s in self.slices],
            "finalists": [scored(f) for f in self.finalists],
        }


def _slices(
    metric: str, greater: bool, y: np.ndarray, models: tuple[np.ndarray, np.ndarray],
    parts: tuple[AucParts | None, AucParts | None], frame: pd.DataFrame | None,
    policy: EvaluationConfig,
) -> tuple[SliceResult, ...]:
    if frame is None or not policy.slices:
        return ()

    def group_score(i: int, rows: np.ndarray) -> float:
        part = parts[i]
        if metric == "auc" and part is not None:
            return auc_in_group(y, models[i], part.order, rows)
        return score(metric, y[rows], models[i][rows])

    wanted = []  # (column, group name, size, row mask)
    for spec in policy.slices:
        codes, values = pd.factorize(frame[spec.column], use_na_sentinel=True)
        sizes = np.bincount(codes[codes >= 0], minlength=len(values))
        groups = [(i, str(v)) for i, v in enumerate(values)]
        if (codes < 0).any():
            groups.append((-1, "<missing>"))
            sizes = np.r_[sizes, (codes < 0).sum()]
        wanted += [(spec.column, name, int(size), codes == code)
                   for (code, name), size in zip(groups, sizes, strict=True)
                   if size >= spec.min_rows]
    with ThreadPoolExecutor(max_workers=2) as pool:
        mine, theirs = pool.map(lambda i: [group_score(i, w[3]) for w in wanted], (0, 1))
    return tuple(
        SliceResult(column, name, size, c, k, (c - k) if greater else (k - c))
        for (column, name, size, _), c, k in zip(wanted, mine, theirs, strict=True)
    )


def compare(
    task: str,
    metric: str,
    y_holdout: np.ndarray,
    finalists: Sequence[Finalist],
    champion: Finalist | None = None,
    *,
    policy: EvaluationConfig | None = None,
    slice_frame: pd.DataFrame | None = None,
) -> Comparison:
    """Score every finalist and the champion; pick the challenger with the strongest evidence.

    With a champion, the challenger is the finalist whose interval's lower bound is highest;
    each interval is at confidence ``1 - (1 - c) / k`` for k finalists (Bonferroni), so
    choosing the best of k on the same holdout does not overstate the evidence. Without a
    champion, it is the finalist with the best holdout score.
    """
    if not finalists:
        raise InvalidValueError("compare() needs at least one finalist")
    policy = policy or EvaluationConfig()
    y = np.asarray(y_holdout)
    greater = METRIC_DIRECTIONS[metric]
    done, design = _score_models(task, y, finalists, champion, policy)
    champion_parts, champion_metrics = done.pop() if champion else (None, {})
    parts = [p for p, _ in done]
    scored = [
        Scored(f.name, metrics, f.footprint, f.version, f.trial_id, f.valid_score,
               f.trained_rows)
        for f, (_, metrics) in zip(finalists, done, strict=True)
    ]
    confidence = 1 - (1 - policy.confidence) / len(finalists)
    if champion is None:
        sign = 1 if greater else -1
        best = max(range(len(scored)), key=lambda i: _ordered(sign * scored[i].metrics[metric]))
        return Comparison(metric, len(y), scored[best], finalists=tuple(scored),
                          confidence=policy.confidence)
    champion_scored = Scored(champion.name, champion_metrics, champion.footprint,
                             champion.version)
    differences = [
        paired_difference(metric, y, f.predictions, champion.predictions,
                          greater_is_better=greater, confidence=confidence,
                          samples=policy.bootstrap_samples, seed=policy.seed,
                          parts=(p, champion_parts), design=design)
        for f, p in zip(finalists, parts, strict=True)
    ]
    best = max(range(len(scored)), key=lambda i: _ordered(differences[i].low))
    chosen = finalists[best]
    secondary = _secondary(task, metric, y, chosen.predictions, champion.predictions,
                           (parts[best], champion_parts), design, policy)
    return Comparison(
        metric=metric, holdout_rows=len(y), challenger=scored[best], champion=champion_scored,
        difference=differences[best], secondary=secondary,
        slices=_slices(metric, greater, y, (chosen.predictions, champion.predictions),
                       (parts[best], champion_parts), slice_frame, policy),
        finalists=tuple(scored), confidence=confidence,
    )


def _score_models(task: str, y: np.ndarray, finalists: Sequence[Finalist],
                  champion: Finalist | None, policy: EvaluationConfig):
    """Every model's metrics (the champion's last) and, with a champion, the bootstrap
    design the paired intervals share."""
    def one_model(predictions: np.ndarray) -> tuple[AucParts | None, dict[str, float]]:
        parts = _parts(task, y, predictions)
        return parts, score_all(task, y, predictions, parts=parts)

    # numpy releases the GIL in sorts and array passes: spread the models over the cores,
    # as the predictions that produced them were
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        drawn = pool.submit(Buckets.draw, len(y), samples=policy.bootstrap_samples,
                            seed=policy.seed) if champion else None
        done = list(pool.map(one_model, [f.predictions for f in finalists]
                             + ([champion.predictions] if champion else [])))
        return done, drawn.result() if drawn else None


def _secondary(task: str, metric: str, y: np.ndarray, chosen: np.ndarray,
               champion: np.ndarray, parts, design, policy: EvaluationConfig
               ) -> dict[str, Difference]:
    """The challenger against the champion on the task's other metrics (at the plain
    confidence: they inform, the primary metric decides)."""
    others = [name for name in TASK_METRICS[task] if name != metric]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(others, pool.map(
            lambda name: paired_difference(
                name, y, chosen, champion,
                greater_is_better=METRIC_DIRECTIONS[name], confidence=policy.confidence,
                samples=policy.bootstrap_samples, seed=policy.seed,
                parts=parts, design=design),
            others), strict=True))


def _ordered(value: float) -> float:
    """Sort key that puts NaN last."""
    return -math.inf if math.isnan(value) else value
