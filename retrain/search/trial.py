"""One trial's training, run inside a Tune trial actor: XGBoost boosting with reports and
checkpoints, or one scikit-learn fit.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from retrain.candidates import (
    WINDOW,
    XGB_METRICS,
    Family,
    build_sklearn,
    trial_family,
    window_weights,
    xgb_params,
)
from retrain.errors import SearchError
from retrain.search.records import save_final
from retrain.search.results import METRIC_GREATER, TrainData, TrialSettings, WarmStart

if TYPE_CHECKING:
    from serve.features import Kind
from retrain.trial_report import (
    AT_KEY,
    BEST_ROUND_KEY,
    CONFIG_KEY,
    FINAL_KEY,
    FIT_KEY,
    MANIFEST_KEY,
    METRICS_FILE,
    MODEL_FILE,
    REPORTS_KEY,
    SCORE_KEY,
    SKLEARN_FILE,
    TRAINED_KEY,
    BestRound,
)


def _trial(
    config: dict[str, Any], data: TrainData, settings: TrialSettings,
    champion: WarmStart | None,
) -> None:
    """One candidate of the family its config names."""
    import ray
    from ray import tune

    name, params = trial_family(config)
    family = settings.families[name]
    context = tune.get_context()
    resources = context.get_trial_resources().required_resources
    nthread = max(1, round(resources.get("CPU", 1)))
    reporter = TrialReporter(config, context.get_trial_id(), records=settings.records)
    if family.flavor == "sklearn":
        _fit_sklearn(family, params, data, settings, nthread, reporter)
        return
    if family.warm_start and (champion is None or champion.model is None):
        raise SearchError("a warm-start trial was started without the champion's booster")
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    _boost(family, params, data, settings, nthread, device,
           champion if family.warm_start else None, reporter)


class TrialReporter:
    """A trial's reports to Tune. The last one carries the final checkpoint: the model and
    a record of the whole trial (its config, id, every report, its files' sizes) that a
    resumed search reads back (`_finished_trials`). The trial writes that record itself
    because Tune's own files (params.json, result.json) are written by the driver, which may
    die before it writes them for a trial that has finished."""

    def __init__(self, config: dict[str, Any], trial_id: str, *, records: str = "") -> None:
        self.config, self.trial_id, self.records = config, trial_id, records
        self.reports: list[dict[str, Any]] = []

    def report(self, metrics: dict[str, Any]) -> None:
        from ray import tune

        self.reports.append(metrics)
        tune.report(metrics)

    def final(self, metrics: dict[str, Any], save) -> None:
        """The last report, with the model written by ``save(folder)``."""
        from ray import tune

        self.reports.append(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            save(tmp)
            # the sizes tell a whole copy from one cut short by a crash
            sizes = {f.name: f.stat().st_size for f in Path(tmp).iterdir()}
            record = {**metrics, "trial_id": self.trial_id, CONFIG_KEY: self.config,
                      REPORTS_KEY: self.reports, MANIFEST_KEY: sizes}
            Path(tmp, METRICS_FILE).write_text(json.dumps(record))
            if self.records:
                # durable before Tune hears of it, whatever becomes of the driver
                save_final(self.records, self.trial_id, Path(tmp))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


#: this worker's XGBoost matrices, kept across the trials it runs (Tune reuses the actor):
#: XGBoost then converts the frames and builds its histogram index (the quantile sketch, a
#: large share of a short trial on big data) once per actor rather than once per trial.
#: Keyed by (search, which rows); a new search drops the previous one's.
_MATRICES: dict[tuple[str, str], Any] = {}


def _matrices(data: TrainData, key: str, rows: np.ndarray | None, nthread: int,
              narrow_to=None, *, window: bool = False):
    """The training (all rows, or the warm start's ``rows``) and validation DMatrix;
    ``narrow_to``: a warm start's champion spec, which the frames are narrowed to
    (`serve.features.FeatureSpec.narrow`)."""
    import xgboost as xgb

    for stale in [k for k in _MATRICES if k[0] != key]:
        del _MATRICES[stale]
    which = "window" if window else "all" if rows is None else "rows"
    valid = "valid"
    if narrow_to is not None:
        which, valid = f"{which}-narrow", "valid-narrow"
    if (key, which) not in _MATRICES:
        x, y = (data.x_train, data.y_train) if rows is None \
            else (data.x_train.iloc[rows], data.y_train[rows])
        x = x if narrow_to is None else _narrowed(x, narrow_to)
        _MATRICES[key, which] = xgb.DMatrix(x, y, enable_categorical=True, nthread=nthread)
    if (key, valid) not in _MATRICES:
        x = data.x_valid if narrow_to is None else _narrowed(data.x_valid, narrow_to)
        _MATRICES[key, valid] = xgb.DMatrix(x, data.y_valid, enable_categorical=True,
                                            nthread=nthread)
    return _MATRICES[key, which], _MATRICES[key, valid]


def _narrowed(frame: pd.DataFrame, spec) -> pd.DataFrame:
    """``frame``'s categoricals recoded to ``spec``'s vocabularies (a prefix of theirs)."""
    from serve.features import FeatureSpec

    kinds = tuple("categorical" if isinstance(frame[c].dtype, pd.CategoricalDtype)
                  else "numeric" for c in frame.columns)
    categories = {c: tuple(frame[c].cat.categories) for c in frame.columns
                  if isinstance(frame[c].dtype, pd.CategoricalDtype)}
    return FeatureSpec(tuple(frame.columns), cast("tuple[Kind, ...]", kinds),
                       categories).narrow(frame, spec)


def _boost(family: Family, config: dict[str, Any], data: TrainData, settings: TrialSettings,
           nthread: int, device: str, champion: WarmStart | None,
           reporter: TrialReporter) -> None:
    """Train XGBoost (continuing the champion's booster when given, on its rows), report per
    N rounds, checkpoint the final booster."""
    import xgboost as xgb

    start = time.perf_counter()
    params = xgb_params(
        settings.task, settings.metric, config, nthread=nthread, device=device, seed=settings.seed
    )
    if settings.data_parallel is not None:
        _boost_data_parallel(family, params, settings, champion, reporter)
        return
    dtrain, dvalid = _matrices(data, settings.data_key,
                               None if champion is None else champion.rows, nthread,
                               None if champion is None else champion.spec,
                               window=family.name == WINDOW)
    if family.name == WINDOW:
        if data.ages is None:
            raise SearchError("a window trial was started without its rows' partition ages")
        # a matrix of its own (see `_matrices`): each window trial sets its own weights
        dtrain.set_weight(window_weights(config, data.ages))
    base = None if champion is None or champion.model is None \
        else xgb.Booster(model_file=bytearray(champion.model))
    base_rounds = 0 if base is None else base.num_boosted_rounds()
    convert = XGB_METRICS[settings.metric][1]
    total, every = family.rounds, settings.report_every
    reporting = [0.0]  # seconds spent in tune.report: Ray's cost, not training
    tracker = BestRound(greater=METRIC_GREATER[settings.metric], patience=settings.patience)

    class Report(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log) -> bool:
            # epoch counts this call's rounds from 0, also when continuing a booster
            done = epoch + 1
            if done % every and done != total:
                return False
            # scored here, not by `evals` every round: the metric (an AUC sorts every
            # validation row) would cost a fifth of the training on big data; the
            # predictions on dvalid are cached by XGBoost and only new trees are added
            line = model.eval(dvalid, "valid", epoch)
            value = float(convert(float(line.rsplit(":", 1)[1])))
            stop = tracker.add(done, value) or done == total
            began = time.perf_counter()
            metrics = {SCORE_KEY: value, "round": done, "gpu": int(device == "cuda"),
                       TRAINED_KEY: began - start - reporting[0], AT_KEY: time.time()}
            if stop:
                # the model as it was at its best report: later rounds only overfit
                best, score = tracker.kept(done, value)
                metrics.update({SCORE_KEY: score, BEST_ROUND_KEY: best,
                                FINAL_KEY: 1, FIT_KEY: began - start - reporting[0]})
                kept = model[: base_rounds + best] if best < done else model
                reporter.final(metrics, lambda tmp: kept.save_model(os.path.join(tmp, MODEL_FILE)))
            else:
                reporter.report(metrics)
            reporting[0] += time.perf_counter() - began
            return stop

    xgb.train(params, dtrain, num_boost_round=total, callbacks=[Report()], verbose_eval=False,
              xgb_model=base)


def _boost_data_parallel(family: Family, params: dict[str, Any], settings: TrialSettings,
                         champion: WarmStart | None, reporter: TrialReporter) -> None:
    """The same boosting on Ray Train workers that read their own rows (`retrain.distributed`)."""
    from retrain.distributed import train_data_parallel

    plan = settings.data_parallel
    if plan is None:
        raise SearchError("a data-parallel trial was started without its plan")
    rows = plan.warm_rows if champion is not None and plan.warm_rows is not None \
        else plan.rows
    if champion is not None and champion.spec is not None:
        # the champion's trees take only the categories they know (see `_matrices`)
        rows = replace(rows, spec=champion.spec)
    train_data_parallel(params, rows, metric=settings.metric, rounds=family.rounds,
                        report_every=settings.report_every, settings=plan.settings,
                        base_model=None if champion is None else champion.model,
                        reporter=reporter, patience=settings.patience,
                        placement_timeout_s=settings.placement_timeout_s)


def _fit_sklearn(family: Family, params: dict[str, Any], data: TrainData,
                 settings: TrialSettings, nthread: int, reporter: TrialReporter) -> None:
    """Fit a scikit-learn family once, score it on the validation rows, report once."""
    import skops.io
    from threadpoolctl import threadpool_limits

    from retrain.evaluate import score
    from serve.loader import predict_with

    start = time.perf_counter()
    model = build_sklearn(family.name, settings.task, params, frame=data.x_train,
                          seed=settings.seed)
    # OpenMP and BLAS would otherwise take every core of the node, not the trial's share
    with threadpool_limits(limits=nthread):
        model.fit(data.x_train, data.y_train)
        predictions = predict_with(model, "sklearn", settings.task, data.x_valid)
    value = score(settings.metric, data.y_valid, predictions)
    fit = time.perf_counter() - start
    metrics = {SCORE_KEY: float(value), "round": 1, "gpu": 0, FIT_KEY: fit, TRAINED_KEY: fit,
               AT_KEY: time.time()}
    reporter.final(metrics, lambda tmp: skops.io.dump(model, os.path.join(tmp, SKLEARN_FILE)))
