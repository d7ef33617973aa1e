"""Columns that should probably not be features: a leak of the target, or a row index.

A column that (nearly) determines the target on its own is usually computed from it (a
"delay in minutes" beside a "late" flag) or recorded after the fact; a model trained with it
looks perfect on the holdout and fails in production, where the value is not known yet. A
column of unique, steadily increasing integers is usually a row number written by an export
(pandas' ``Unnamed: 0``); it carries no signal, and since every new partition continues the
count, it drifts out of range by construction. Both are named with the fix
(``data.exclude``); nothing is dropped silently, since a strong feature can be legitimate.

Pure: a frame in, findings out. Each feature is judged alone on a sample: AUC for a binary
target, the squared rank correlation for a numeric one; a categorical feature is encoded by
its target mean on one half of the sample and judged on the other, so an id-like column with
a row per value does not look like a perfect predictor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: one feature alone scoring this well is a leak until shown otherwise
LEAK_AUC = 0.98
LEAK_R2 = 0.95
#: rows examined (a sample keeps `retrain validate` fast on big data)
SAMPLE_ROWS = 200_000


@dataclass(frozen=True)
class Suspect:
    column: str
    kind: str  # "leak" or "index"
    detail: str

    def message(self) -> str:
        return (f"column {self.column!r} {self.detail}; if it is not known when a prediction "
                f"is made, or means nothing, leave it out: data.exclude: [{self.column}]")


def suspicious_columns(frame: pd.DataFrame, target: str, features: tuple[str, ...],
                       task: str, *, seed: int = 0) -> list[Suspect]:
    """Leaks and index-like columns among ``features`` of ``frame`` (time-ordered rows)."""
    found = []
    for name in features:
        column = frame[name]
        if _index_like(column):
            found.append(Suspect(name, "index", "holds unique, steadily increasing integers "
                                 "(a row index?)"))
    sample = frame if len(frame) <= SAMPLE_ROWS else frame.sample(SAMPLE_ROWS, random_state=seed)
    y = sample[target].to_numpy(dtype=np.float64)
    if len(sample) < 50 or np.isnan(y).any() or len(np.unique(y)) < 2:
        return found
    half = np.random.default_rng(seed).uniform(size=len(sample)) < 0.5
    for name in features:
        if any(s.column == name for s in found):
            continue
        strength = _alone(sample[name], y, half, task)
        if strength is None:
            continue
        label, value, bar = ("AUC", strength, LEAK_AUC) if task == "classification" \
            else ("R²", strength, LEAK_R2)
        if value >= bar:
            found.append(Suspect(name, "leak", f"alone predicts the target ({label} "
                                 f"{value:.3f} on its own, a leak?)"))
    return found


def _index_like(column: pd.Series) -> bool:
    if not pd.api.types.is_integer_dtype(column) or pd.api.types.is_bool_dtype(column):
        return False
    values = column.dropna().to_numpy()
    return len(values) >= 100 and bool(np.all(np.diff(values) > 0))


def _alone(column: pd.Series, y: np.ndarray, half: np.ndarray, task: str) -> float | None:
    """How well one feature predicts the target by itself, judged on the ``~half`` rows."""
    from retrain.stats import auc

    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    if numeric:
        x = column.to_numpy(dtype=np.float64)
        keep = ~np.isnan(x)
        x, yy = x[keep], y[keep]
    else:
        # target mean per category, learned on one half, applied to the other
        text = column.astype("string").fillna("<missing>")
        means = pd.Series(y[half]).groupby(text[half].to_numpy()).mean()
        x = text[~half].map(means).to_numpy(dtype=np.float64)
        yy = y[~half]
        keep = ~np.isnan(x)
        x, yy = x[keep], yy[keep]
    if len(yy) < 50 or len(np.unique(yy)) < 2 or len(np.unique(x)) < 2:
        return None
    if task == "classification":
        score = float(auc(yy, x))
        return max(score, 1.0 - score)
    ranks = pd.Series(x).rank().to_numpy(), pd.Series(yy).rank().to_numpy()
    return float(np.corrcoef(*ranks)[0, 1] ** 2)


def suspects_in(config, partitions) -> list[Suspect]:
    """`suspicious_columns` of the training ``partitions`` of a project (`retrain.config`),
    read as stored (a model's feature frame would hide an integer index as a float)."""
    from retrain.data import feature_names, open_dataset, read_partition

    names = feature_names(config.data, open_dataset(config.data).schema.names)
    frames = [read_partition(config.data, p, (*names, config.data.target)) for p in partitions]
    frame = pd.concat(frames, ignore_index=True)
    present = tuple(n for n in names if n in frame.columns)
    return suspicious_columns(frame, config.data.target, present, config.task.type,
                              seed=config.search.seed)
