"""Refit the finalists on every training row before they are judged and registered.

During the search, trials fit on the older training rows and are ranked on the newest
``data.validation_fraction`` of them. Those newest rows are the ones most like what the model
will serve; a model that never trains on them is a period behind, and after a drift they are
the only relevant rows (on a drifting stream the same parameters scored 0.710 without them and
0.803 with them). So each finalist is trained again with its own parameters and its own number
of rounds (its best round, when it stopped early) on training + validation rows, and that
model is what the evaluator scores on the holdout and what is registered.

The holdout stays untouched: it judges the refit models as it judged the trials' own. Once a
challenger is promoted, with ``search.refit: all`` it is trained once more, on the holdout
rows too, and that model is registered: the holdout partition is the newest data there is, and
a model that skips it serves a period behind ("retrain on everything" sees it). The evidence
was for the configuration on the older rows; the same configuration on one more partition is
what a careful person deploys. A warm-started finalist continues the champion on the rows of
partitions the champion was not trained on, validation (and holdout) rows included. Refits
run in parallel as Ray tasks with a trial's resources. Data-parallel trials (whose rows the
driver never loaded) keep their trial models; `refit_problem` says so.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from retrain.candidates import (
    FLAVORS,
    WINDOW,
    build_sklearn,
    partition_ages,
    window_weights,
    xgb_params,
)
from retrain.search import TrialResult, WarmStart, new_rows

if TYPE_CHECKING:
    from retrain.config import Config
    from retrain.data import Split


@dataclass(frozen=True)
class Refitted:
    """A finalist trained again on every training row."""

    trial_id: str
    model: Any = field(repr=False)
    #: rows it trained on (training + validation, or the warm start's new rows among them)
    rows: int
    rounds: int
    seconds: float


def refit_problem(config: Config, split: Split) -> str | None:
    """Why finalists keep their trial models, or None when they are refit."""
    if config.search.refit == "off":
        return "search.refit is off"
    if not split.holds_training_rows:
        return ("the trials trained data-parallel and the driver holds no training rows; "
                "the trials' own models are judged")
    return None


def refit_finalists(config: Config, finalists: Sequence[TrialResult], split: Split,
                    warm: WarmStart | None, *, holdout: bool = False) -> dict[str, Refitted]:
    """Each finalist trained on training + validation rows (and the holdout's with
    ``holdout``: the promoted model, for serving), in parallel on the cluster."""
    import ray

    frames, targets = [split.x_train, split.x_valid], [split.y_train, split.y_valid]
    if holdout:
        frames.append(split.x_holdout)
        targets.append(split.y_holdout)
    partitions = split.pieces(holdout=holdout)
    x = pd.concat(frames, ignore_index=True)
    y = np.concatenate(targets)
    shared = ray.put((x, y))
    # the warm start's rows: partitions the champion was not trained on, validation included
    warm_rows = None
    if warm is not None and warm.model is not None and warm.rows is not None:
        warm_rows = new_rows(partitions, warm.seen, len(y), len(y))
    # a window finalist keeps its window and half-life, counted from the newest partition
    ages = partition_ages(partitions, len(y))
    resources = config.resources
    refs = {}
    for trial in finalists:
        warm_started = trial.family == "xgboost_warm_start"
        gpus = resources.gpus_per_trial if FLAVORS.get(trial.family) == "xgboost" else 0
        if gpus and not ray.cluster_resources().get("GPU"):
            gpus = 0  # the search warned already
        task = ray.remote(_refit_one).options(num_cpus=resources.cpus_per_trial,
                                              num_gpus=gpus, max_retries=1)
        refs[trial.trial_id] = task.remote(
            shared, family=trial.family, params=trial.params, rounds=trial.rounds,
            task=config.task.type, metric=config.task.primary_metric, seed=config.search.seed,
            nthread=max(1, round(resources.cpus_per_trial)),
            base_model=warm.model if warm_started and warm is not None else None,
            rows=warm_rows if warm_started else None,
            narrow_to=warm.spec if warm_started and warm is not None else None,
            weights=window_weights(trial.params, ages)
            if trial.family == WINDOW and ages is not None else None)
    out = {}
    for trial_id, ref in refs.items():
        model, rows, rounds, seconds = ray.get(ref)
        out[trial_id] = Refitted(trial_id, model, rows, rounds, seconds)
    return out


def _refit_one(shared, *, family: str, params: dict[str, Any], rounds: int, task: str,
               metric: str, seed: int, nthread: int, base_model: bytes | None,
               rows: np.ndarray | None, narrow_to=None, weights: np.ndarray | None = None):
    """One refit (a Ray task): (model, rows trained on, rounds, seconds)."""
    from retrain.search.trial import _narrowed

    start = time.perf_counter()
    x, y = shared
    if rows is not None:
        x, y = x.iloc[rows], y[rows]
    if narrow_to is not None:  # a warm start reads categories as its champion does
        x = _narrowed(x, narrow_to)
    if FLAVORS.get(family) == "sklearn":
        from threadpoolctl import threadpool_limits

        model = build_sklearn(family, task, params, frame=x, seed=seed)
        with threadpool_limits(limits=nthread):
            model.fit(x, y)
        return model, len(y), 1, time.perf_counter() - start
    import ray
    import xgboost as xgb

    device = "cuda" if ray.get_gpu_ids() else "cpu"
    base = None if base_model is None else xgb.Booster(model_file=bytearray(base_model))
    booster = xgb.train(
        xgb_params(task, metric, params, nthread=nthread, device=device, seed=seed),
        xgb.DMatrix(x, y, weight=weights, enable_categorical=True, nthread=nthread),
        num_boost_round=rounds, xgb_model=base, verbose_eval=False)
    return booster, len(y), rounds, time.perf_counter() - start
