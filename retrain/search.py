"""The only module that drives Ray Tune: trials, OptunaSearch (TPE), ASHA, resources, failures.

One Tune experiment searches every active candidate family (see `retrain.candidates`): XGBoost
from scratch, XGBoost warm-started from the champion, scikit-learn estimators. Trial ``n``
belongs to family ``n mod k`` (an Optuna define-by-run space), so each family gets its share
of the samples; ASHA runs per family, because a warm-started trial at its second report is
not comparable with a from-scratch trial at its second report and would cut it unfairly.

The training arrays and the champion's booster go into Ray's object store once
(`tune.with_parameters`) and every trial reads them from there. A warm-start trial boosts on
the training rows of partitions the champion was not trained on (`WarmStart`, `new_rows`):
its cost follows the new data, while every family is ranked on the same validation rows. An
XGBoost trial reports every ``report_every`` boosting rounds (counted from its own start, also
when warm-started), so ASHA can stop weak ones early, and checkpoints its booster (UBJ) at its
last round only; a scikit-learn trial fits once and reports once (skops). A trial that raises
is recorded as failed with its error; the search fails only when no trial completes.

Where the time goes (measured with benchmarks/search_benchmark.py): Tune reuses each trial
actor for the next trial, and the actor keeps its XGBoost matrices (`_matrices`), so the
frames are converted and the histogram index built once per actor, not once per trial (on
1M rows that was ~4 s of a 20-round trial's ~8 s); a trial scores the validation rows only
when it reports, not every round (`evals` computed the AUC over every validation row each
round: ~20 % of the training). What is left is Ray's start of the two trial actors (new
processes importing Ray, retrain and XGBoost: ~5 s here, more on a busy machine) and ~0.1 s
between trials.

A search whose driver died resumes from its saved Tune experiment (see `run_search`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from retrain.candidates import (
    FAMILY_ATTR,
    FAMILY_KEY,
    FLAVORS,
    WINDOW,
    XGB_METRICS,
    XGBOOST,
    Family,
    FamilySpace,
    build_sklearn,
    check_sklearn_space,
    default_params,
    families,
    family_distributions,
    trial_family,
    warm_start_problem,
    window_weights,
    xgb_params,
)
from retrain.config import METRIC_DIRECTIONS, Config
from retrain.errors import ClusterError, ConfigError, RetrainWarning, SearchError
from retrain.trial_report import (
    AT_KEY,
    BEST_ROUND_KEY,
    CONFIG_KEY,
    ERROR_KEY,
    FINAL_KEY,
    FIT_KEY,
    MANIFEST_KEY,
    METRICS_FILE,
    MODEL_FILE,
    RECORDS_DIR,
    REPORTS_KEY,
    SCORE_KEY,
    SKLEARN_FILE,
    STATUS_KEY,
    TRAINED_KEY,
    UNPLACED,
    BestRound,
)

if TYPE_CHECKING:
    from retrain.data import Split
    from retrain.distributed import DataParallelSettings, ParquetRows

Status = Literal["completed", "stopped", "failed"]
#: metric -> True when larger is better
METRIC_GREATER = METRIC_DIRECTIONS


@dataclass(frozen=True)
class TrainData:
    """What every trial reads from the object store."""

    x_train: pd.DataFrame
    y_train: np.ndarray
    x_valid: pd.DataFrame
    y_valid: np.ndarray
    #: each training row's partition age (0: the newest training partition), for window
    #: trials (`retrain.candidates.window_weights`); None when unknown
    ages: np.ndarray | None = None


@dataclass(frozen=True)
class TrialSettings:
    task: str
    metric: str
    report_every: int
    seed: int
    #: the active families by name
    families: dict[str, Family]
    #: names this search's data in a worker's matrix cache (see `_matrices`)
    data_key: str = ""
    #: XGBoost trials train data-parallel on Ray Train workers when set
    data_parallel: DataParallelPlan | None = None
    #: rounds without a better validation score after which a trial stops (None: never)
    patience: int | None = None
    #: where each trial writes its own final record and model, beside the experiment on
    #: storage (see `RECORDS_DIR`); "" for none
    records: str = ""
    #: seconds a data-parallel trial waits for its workers to be placed
    placement_timeout_s: float | None = None


@dataclass(frozen=True)
class DataParallelPlan:
    """What data-parallel XGBoost trials need: their workers and the Parquet rows to read."""

    settings: DataParallelSettings
    rows: ParquetRows
    #: the warm start's rows (partitions the champion was not trained on); None: ``rows``
    warm_rows: ParquetRows | None = None
    #: why the search trains data-parallel
    why: str = ""


@dataclass(frozen=True)
class WarmStart:
    """The champion that warm-start trials continue from, or why they cannot."""

    version: str
    #: the champion's booster as UBJ bytes (None when ``problem`` says why not)
    model: bytes | None = field(default=None, repr=False)
    problem: str | None = None
    #: positions in ``TrainData.x_train`` of the rows to boost on; None: all of them
    rows: np.ndarray | None = field(default=None, repr=False, compare=False)
    #: the partitions whose rows ``rows`` leaves out (the champion was trained on them)
    seen: tuple[str, ...] = ()
    #: the champion's feature spec: warm-started models read their data through it (this
    #: cycle's spec may have grown categories the champion's trees cannot take)
    spec: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, champion, split, *, version: str, seen: Collection[str] = (),
           rows: str = "new") -> WarmStart:
        """From a loaded champion (`serve.loader.LoadedModel`) and this cycle's
        `retrain.data.Split`; ``seen`` names the partitions the champion was trained on and
        ``rows`` is "new" (only rows of other partitions) or "all"."""
        problem = warm_start_problem(champion.spec, champion.flavor, split.spec)
        if problem is not None:
            return cls(version=version, problem=f"champion version {version}: {problem}")
        positions = None
        if rows == "new":
            positions = new_rows(split.pieces(), seen, split.train_rows,
                                 split.train_rows + split.valid_rows)
            if positions is not None and len(positions) == 0:
                return cls(version=version, problem=(
                    f"every training row outside the validation share comes from partitions "
                    f"champion version {version} was trained on; nothing new to continue on "
                    "(lower data.validation_fraction, or set "
                    "search.families.xgboost_warm_start.rows: all)"))
        return cls(version=version, model=bytes(champion.booster.save_raw("ubj")),
                   rows=positions, seen=tuple(sorted(seen)) if positions is not None else (),
                   spec=champion.spec)


def new_rows(
    partitions, seen: Collection[str], n_train: int, n_total: int
) -> np.ndarray | None:
    """Positions among the first ``n_train`` of ``n_total`` time-ordered rows that belong to
    partitions not in ``seen``; None when the partitions' row counts do not add up to
    ``n_total`` (then rows cannot be told apart, and a warm start uses them all).

    Rows come partition by partition, oldest first (see `retrain.data.load_split`), and the
    newest ``n_total - n_train`` of them validate.
    """
    sizes = [p.rows for p in partitions]
    if sum(sizes) != n_total:
        return None
    fresh = np.repeat([p.value not in seen for p in partitions], sizes)
    return np.flatnonzero(fresh[:n_train])


@dataclass(frozen=True)
class TrialResult:
    trial_id: str
    params: dict[str, Any]
    status: Status
    score: float | None
    #: boosting rounds of its model: the best round when it stopped early or boosted past its
    #: best (later rounds are cut off); the last round reported when it did not complete
    rounds: int
    train_seconds: float
    #: one entry per report: {"round": n, "score": validation score, "trained": the trial's
    #: training seconds so far, "at": unix time of the report}
    history: tuple[dict[str, float], ...] = ()
    error: str | None = None
    #: whether XGBoost trained on a GPU (device="cuda")
    gpu: bool = False
    #: the candidate family (see `retrain.candidates`)
    family: str = XGBOOST
    #: seconds the trial spent building its model (data preparation, loading the champion,
    #: boosting or fitting), without Ray's start-up and reporting; None when it did not finish
    fit_seconds: float | None = None
    #: the Tune checkpoint holding the final model (completed trials only)
    checkpoint: Any = field(default=None, repr=False, compare=False)

    @property
    def flavor(self) -> str:
        """How the trial's model is stored and served: "xgboost" or "sklearn"."""
        return FLAVORS.get(self.family, "xgboost")


@dataclass(frozen=True)
class SearchResult:
    metric: str
    greater_is_better: bool
    trials: tuple[TrialResult, ...]
    #: the best completed trial; None when none completed (see `require_best`)
    best: TrialResult | None
    experiment_path: str
    wall_seconds: float
    seed: int
    space: dict[str, str] = field(default_factory=dict)
    #: the families that had trials, in the order trials were handed out
    families: tuple[str, ...] = (XGBOOST,)
    #: enabled families left out of this search -> why (e.g. warm start without a champion)
    skipped: dict[str, str] = field(default_factory=dict)
    #: trials an earlier, interrupted run of this search had finished: read back, not run
    carried: int = 0
    #: why XGBoost trials trained data-parallel (None: each in one process)
    data_parallel: str | None = None

    def count(self, status: Status) -> int:
        return sum(t.status == status for t in self.trials)

    def require_best(self) -> TrialResult:
        """The best completed trial, or `SearchError` naming what the trials died of."""
        if self.best is not None:
            return self.best
        failed = [t for t in self.trials if t.status == "failed"]
        errors = "; ".join(sorted({t.error for t in failed if t.error}))[:2000]
        raise SearchError(
            f"no trial of {len(self.trials)} completed ({len(failed)} failed). Errors: "
            f"{errors or 'none recorded'}. Check search.space and resources"
        )

    def finalists(self, k: int) -> list[TrialResult]:
        """The ``k`` best completed trials by validation score, best first."""
        self.require_best()
        completed = [t for t in self.trials if t.status == "completed" and t.score is not None]
        return sorted(completed, key=lambda t: t.score, reverse=self.greater_is_better)[:k]

    def load_best(self):
        """The best trial's model, read from its checkpoint."""
        return load_model(self.require_best())


#: what a driver-written record keeps of each report
_REPORT_KEYS = ("round", SCORE_KEY, TRAINED_KEY, AT_KEY, FIT_KEY, BEST_ROUND_KEY, FINAL_KEY,
                "gpu", "trial_id", "time_total_s")


def load_model(trial: TrialResult):
    """A completed trial's final model: an xgboost.Booster, or a fitted scikit-learn
    estimator for the scikit-learn families."""
    import xgboost as xgb

    from serve.loader import load_sklearn

    if trial.checkpoint is None:
        raise SearchError(f"trial {trial.trial_id} ({trial.status}) has no final checkpoint")
    with trial.checkpoint.as_directory() as folder:
        if (Path(folder) / SKLEARN_FILE).exists():
            return load_sklearn(Path(folder) / SKLEARN_FILE)
        return xgb.Booster(model_file=str(Path(folder) / MODEL_FILE))


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


def storage_fs(path: str):
    """(pyarrow filesystem, path on it) of a local folder or any URI pyarrow reads: the
    inference log's own resolver, so both read storage the same way."""
    from serve.inference_log import resolve

    return resolve(path)


def _write_whole(fs, path: str, data: bytes) -> None:
    """Write a file so that readers see it whole or not at all: written under another name
    and moved (a rename on a local or shared file system; an object store's move is a copy
    that makes the object appear whole)."""
    partial = f"{path}.partial-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(partial) as stream:
        stream.write(data)
    fs.move(partial, path)


def save_final(records: str, trial_id: str, folder: Path) -> None:
    """Copy a trial's final checkpoint folder to ``<records>/<trial_id>/``: the model files
    first, METRICS_FILE (whose manifest says their sizes) last, each file written whole."""
    fs, base = storage_fs(records)
    target = f"{base}/{trial_id}"
    fs.create_dir(target, recursive=True)
    files = sorted(folder.iterdir(), key=lambda f: f.name == METRICS_FILE)
    for file in files:
        _write_whole(fs, f"{target}/{file.name}", file.read_bytes())


def _error_text(trial) -> str:
    """The error a failed Tune trial left in its error file ("" when it left none)."""
    if trial.error_file and Path(trial.error_file).exists():
        return Path(trial.error_file).read_text(errors="replace")
    return ""


def _records_callback(records: str):
    """A Tune callback that writes the record of each trial Tune stops (ASHA, or at its
    end) or that fails, on storage, as Tune ends it (see `RECORDS_DIR`)."""
    # Tune pickles callbacks with the experiment state: this one holds only plain data
    from ray import tune

    class Records(tune.Callback):
        def __init__(self) -> None:
            self.reports: dict[str, list[dict[str, Any]]] = {}

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            self.reports.setdefault(trial.trial_id, []).append(
                {k: result[k] for k in _REPORT_KEYS if k in result})

        def _save(self, trial, status: str, error: str | None) -> None:
            fs, base = storage_fs(records)
            fs.create_dir(base, recursive=True)
            record = {"trial_id": trial.trial_id, STATUS_KEY: status, ERROR_KEY: error,
                      CONFIG_KEY: trial.config,
                      REPORTS_KEY: self.reports.pop(trial.trial_id, [])}
            _write_whole(fs, f"{base}/{trial.trial_id}.json",
                         json.dumps(record, default=str).encode())

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._save(trial, "terminated", None)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._save(trial, "error", _last_line(_error_text(trial)))

    return Records()


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
    return FeatureSpec(tuple(frame.columns), kinds, categories).narrow(frame, spec)


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
    plan = settings.data_parallel
    if plan is not None:
        from retrain.distributed import train_data_parallel

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
    base = None if champion is None else xgb.Booster(model_file=bytearray(champion.model))
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

    xgb.train(
        params,
        dtrain,
        num_boost_round=total,
        callbacks=[Report()],
        verbose_eval=False,
        xgb_model=base,
    )


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


def _cluster_totals() -> dict[str, float]:
    import ray

    return ray.cluster_resources()


def trial_resources(config: Config, totals: dict[str, float]) -> dict[str, float]:
    """Per-trial resources, checked against the cluster so a search never waits forever.

    GPUs asked for on a cluster without any fall back to CPU with a warning: the same config
    runs on a laptop and on a GPU cluster.
    """
    cpus, gpus = config.resources.cpus_per_trial, config.resources.gpus_per_trial
    if cpus > totals.get("CPU", 0):
        raise ClusterError(
            f"resources.cpus_per_trial={cpus:g} but the cluster has {totals.get('CPU', 0):g} "
            "CPUs in all; lower it or add nodes"
        )
    if gpus > 0 and totals.get("GPU", 0) == 0:
        warnings.warn(
            f"resources.gpus_per_trial={gpus:g} but the cluster has no GPU: training on CPUs",
            RetrainWarning,
            stacklevel=2,
        )
        gpus = 0.0
    elif gpus > totals.get("GPU", 0):
        raise ClusterError(
            f"resources.gpus_per_trial={gpus:g} but the cluster has {totals['GPU']:g} GPUs; "
            "use a fraction (e.g. 0.5 shares one GPU between two trials) or add GPU nodes"
        )
    return {"cpu": cpus, "gpu": gpus}


#: CPUs a data-parallel trial reserves for itself: it only waits on its Ray Train run, whose
#: workers reserve their own
DATA_PARALLEL_TRIAL_CPUS = 0.25


def _family_resources(resources: dict[str, float], active: tuple[Family, ...],
                      data_parallel: bool = False):
    """The resources argument of `tune.with_resources`: the plain dict, unless scikit-learn
    trials would hold GPUs they cannot use, or XGBoost trials train data-parallel (their
    workers hold the CPUs and GPUs); then a per-trial choice by family."""
    if not data_parallel and (resources["gpu"] == 0 or all(f.flavor == "xgboost"
                                                           for f in active)):
        return resources
    from ray.tune import PlacementGroupFactory

    cpu_only = {f.name for f in active if f.flavor != "xgboost"}

    def by_family(config: dict[str, Any]):
        if config.get(FAMILY_KEY) in cpu_only:
            return PlacementGroupFactory([{"CPU": resources["cpu"]}])
        if data_parallel:
            return PlacementGroupFactory([{"CPU": DATA_PARALLEL_TRIAL_CPUS}])
        return PlacementGroupFactory([{"CPU": resources["cpu"], "GPU": resources["gpu"]}])

    return by_family


def _say(line: str) -> None:
    print(line, flush=True)


def _progress_callback(num_samples: int, start: int = 0):
    """Prints a line per finished trial; ``start``: trials finished before a resume."""
    # Tune pickles callbacks with the experiment state, so this one holds no user callable.
    from ray import tune

    class Progress(tune.Callback):
        done = start

        def _line(self, trial, what: str) -> None:
            self.done += 1
            score = trial.last_result.get(SCORE_KEY)
            shown = f"{score:.4f}" if isinstance(score, float) else "-"
            family = trial.config.get(FAMILY_KEY, XGBOOST)
            _say(f"  trial {self.done}/{num_samples} {what}: {family} score={shown} "
                 f"rounds={trial.last_result.get('round', 0)}")

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._line(trial, "done")

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._line(trial, "FAILED")

    return Progress()


def _placement_watchdog(timeout_s: float):
    """A Tune callback that fails the search with `ClusterError` when trials have waited
    for resources ``timeout_s`` seconds with none running: a trial that cannot be placed
    (other work holds the CPUs, a stopped trial's workers were not released, no node has
    what it asks for) would otherwise keep the search waiting for ever. The error names
    what the trials ask for and what the cluster has free; `run_search` raises it."""
    from ray import tune

    class Placement(tune.Callback):
        def __init__(self) -> None:
            #: since when trials have waited with none running (monotonic seconds)
            self.since: float | None = None
            self.problem: str | None = None

        def on_step_end(self, iteration, trials, **info) -> None:
            waiting = [t for t in trials if t.status == "PENDING"]
            if not waiting or any(t.status == "RUNNING" for t in trials):
                self.since = None
                return
            now = time.monotonic()
            if self.since is None:
                self.since = now
            elif now - self.since >= timeout_s:
                self.problem = _unplaceable(waiting, timeout_s)
                raise ClusterError(self.problem)

        def _unplaced(self, trial) -> None:
            # a data-parallel trial whose Train workers could not be placed: the next trial
            # (or a retry) would wait as long again
            found = [line for line in _error_text(trial).splitlines() if UNPLACED in line]
            if found:
                self.problem = found[-1].split("ClusterError: ", 1)[-1].strip()
                raise ClusterError(self.problem)

        def on_trial_recover(self, iteration, trials, trial, **info) -> None:
            self._unplaced(trial)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._unplaced(trial)

    return Placement()


def _unplaceable(waiting, timeout_s: float) -> str:
    """Why a search stopped waiting: what its trials ask for and what the cluster has."""
    import ray

    def shown(resources: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items())
                         if not k.startswith(("node:", "memory", "object_store_memory"))
                         and v) or "nothing"

    asked = {shown(t.placement_group_factory.required_resources) for t in waiting}
    return (
        f"no trial could be placed for {timeout_s:g} s (resources.placement_timeout_s): "
        f"{len(waiting)} waiting, none running; each asks for {' or '.join(sorted(asked))}, "
        f"and the cluster has {shown(ray.available_resources())} free of "
        f"{shown(ray.cluster_resources())}. Other work holds the rest, or no node has what "
        "a trial asks for: lower resources.cpus_per_trial (or gpus_per_trial, or "
        "search.data_parallel's workers), free or add nodes, or raise "
        "resources.placement_timeout_s"
    )


def _scheduler(config: Config, active: tuple[Family, ...]):
    """ASHA per XGBoost family (each with its own rungs and ``max_t``), FIFO for families
    that report once, all behind one scheduler that routes each trial by its family."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = config.search
    per_family = {}
    for family in active:
        reports = math.ceil(family.rounds / s.report_every)
        per_family[family.name] = (
            # max_t one past the last report: ASHA must never cut a trial at its final
            # checkpoint
            ASHAScheduler(max_t=reports + 1, grace_period=min(s.asha.grace_period, reports),
                          reduction_factor=s.asha.reduction_factor)
            if s.early_stopping and family.flavor == "xgboost" and reports > 1
            else FIFOScheduler()
        )

    class ByFamily(FIFOScheduler):
        def __init__(self, schedulers) -> None:
            super().__init__()
            self.schedulers = schedulers

        def _of(self, trial):
            return self.schedulers[trial.config.get(FAMILY_KEY, XGBOOST)]

        def set_search_properties(self, metric, mode, **spec) -> bool:
            done = [x.set_search_properties(metric, mode, **spec)
                    for x in self.schedulers.values()]
            return all(done) and super().set_search_properties(metric, mode, **spec)

        def on_trial_add(self, tune_controller, trial) -> None:
            self._of(trial).on_trial_add(tune_controller, trial)

        def on_trial_error(self, tune_controller, trial) -> None:
            self._of(trial).on_trial_error(tune_controller, trial)

        def on_trial_result(self, tune_controller, trial, result) -> str:
            return self._of(trial).on_trial_result(tune_controller, trial, result)

        def on_trial_complete(self, tune_controller, trial, result) -> None:
            self._of(trial).on_trial_complete(tune_controller, trial, result)

        def on_trial_remove(self, tune_controller, trial) -> None:
            self._of(trial).on_trial_remove(tune_controller, trial)

        def debug_string(self) -> str:
            return "; ".join(f"{k}: {v.debug_string()}" for k, v in self.schedulers.items())

    return ByFamily(per_family)


def plan_families(
    config: Config, warm_start: WarmStart | None
) -> tuple[tuple[Family, ...], dict[str, str]]:
    """The families this search runs and the enabled ones it leaves out, with the reason.

    Raises `ConfigError` for a scikit-learn space naming a parameter the estimator lacks.
    """
    active, skipped = [], {}
    for family in families(config.search):
        if family.warm_start and (warm_start is None or warm_start.model is None):
            skipped[family.name] = "no champion yet" if warm_start is None \
                else str(warm_start.problem)
            continue
        if family.flavor == "sklearn":
            problem = check_sklearn_space(family, config.task.type)
            if problem is not None:
                raise ConfigError(
                    f"search.families.{family.name}.space: {problem}; fix the parameter name"
                )
        active.append(family)
    return tuple(active), skipped


def run_search(
    config: Config, data: TrainData, *, name: str, progress: bool = False,
    warm_start: WarmStart | None = None, split: Split | None = None, read_only: bool = False,
) -> SearchResult:
    """Run the search over every active family on the connected Ray cluster.

    ``read_only``: only read back the trials of an earlier run of this search (a cycle
    resumed after its search finished: its trials were logged and judged, and the search
    must not grow, e.g. after ending on ``time_budget_s``).

    ``split`` (the cycle's `retrain.data.Split`) lets XGBoost trials train data-parallel
    from the split's Parquet files when ``search.data_parallel`` says so (see
    `retrain.distributed`); without it every trial trains in one process.

    ``warm_start`` carries the champion's booster for the ``xgboost_warm_start`` family; when
    it is None or says why the champion cannot be continued, that family sits this search
    out and `SearchResult.skipped` says why.

    Resuming: when ``<storage_path>/<name>`` already holds a Tune experiment (a driver died
    mid-search, or a cycle resumes after its search), the trials it finished are read back
    from their folders and only the rest of the budget runs, as a new experiment
    ``<name>.resume<k>``. Finished means: a final checkpoint with its result
    (`METRICS_FILE`), which a trial writes itself, so a trial that finished a moment before
    the driver died counts even when Tune's saved experiment state (written every few
    seconds) still calls it running; or stopped early (ASHA) or failed, as that state
    records. Trials that were running are not continued: their samples are handed out
    again. TPE starts the new experiment knowing every finished trial's parameters and
    score. (We read folders instead of ``Tuner.restore`` because a restored experiment
    knows only what its last saved state knew, and would train again a trial that had
    finished after it.)
    """
    from ray import tune

    s, task = config.search, config.task
    metric, greater = task.primary_metric, task.greater_is_better
    mode = "max" if greater else "min"
    active, skipped = plan_families(config, warm_start)
    if progress:
        for family, why in skipped.items():
            _say(f"  {family} skipped: {why}")
    totals = _cluster_totals()
    plan = _data_parallel_plan(config, split, active, warm_start, totals)
    if split is not None and not split.holds_training_rows:
        needy = [f.name for f in active if f.flavor != "xgboost"]
        if plan is None or needy:
            raise SearchError(
                "run_search was given a split loaded without its training rows "
                "(load_split(training_rows=False)), but "
                + ("search.data_parallel.enabled is false" if plan is None else
                   f"the families {needy} fit in one process and need them")
                + ": only data-parallel XGBoost trials read their own; load the split with "
                "training_rows=True"
            )
    if plan is not None and any(f.name == WINDOW for f in active):
        # its weights need the rows in one process; data-parallel workers read their own
        active = tuple(f for f in active if f.name != WINDOW)
        skipped[WINDOW] = "XGBoost trials train data-parallel; window trials need the rows " \
                          "in one process"
    if plan is not None and progress:
        _say(f"  XGBoost trials train data-parallel: {plan.why}")
    storage = config.storage_path
    if "://" not in storage:
        # absolute: trials run in folders of their own
        storage = str(Path(storage).resolve())
        Path(storage).mkdir(parents=True, exist_ok=True)
    earlier = _earlier_experiments(storage, name)
    run_name = name if not earlier else f"{name}.resume{len(earlier)}"
    records = f"{storage.rstrip('/')}/{run_name}/{RECORDS_DIR}"
    settings = TrialSettings(task.type, metric, s.report_every, s.seed,
                             {f.name: f for f in active}, data_key=uuid.uuid4().hex,
                             data_parallel=plan, patience=s.early_stopping_rounds,
                             records=records,
                             placement_timeout_s=config.resources.placement_timeout_s)
    # every active family gets at least one trial; with nothing to search, one each is all
    samples = max(s.num_samples, len(active)) if any(f.searched for f in active) \
        else len(active)
    rounds = {f.name: f.rounds for f in active}
    root = f"{storage.rstrip('/')}/{name}"
    # a family this run leaves out (the config changed) neither counts nor competes
    carried = tuple(t for path in earlier for t in _finished_trials(path, rounds)
                    if t.family in rounds)
    if read_only and not earlier:
        raise SearchError(f"search {name} was to be read back, but {root} holds no Tune "
                          "experiment; was search.storage_path changed? Run a new cycle")
    start = time.perf_counter()
    trials = carried
    if earlier and progress:
        _say(f"  resuming search {name}: {len(carried)} of {samples} trials had finished "
             "and are not run again")
    if len(carried) < samples and not read_only:
        # Ctrl-C must stop the cycle, not end the search early and let the cycle promote from
        # the trials that finished: without Tune's own SIGINT handler the interrupt reaches
        # the cycle, which records where it stopped (resumable) and promotes nothing
        os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
        champion = warm_start if any(f.warm_start for f in active) else None
        resources = trial_resources(config, totals)
        watchdog = _placement_watchdog(config.resources.placement_timeout_s)
        shipped, champion = shipped_to_trials(data, champion, active, plan)
        trainable = tune.with_resources(
            tune.with_parameters(_trial, data=shipped, settings=settings, champion=champion),
            _family_resources(resources, active, plan is not None),
        )
        tuner = _tuner(trainable, config, run_name, storage, active, samples - len(carried),
                       mode, progress, told=carried, offset=len(earlier),
                       concurrent=1 if s.deterministic else _concurrent(config, plan, totals),
                       records=records, watchdog=watchdog)
        try:
            grid = tuner.fit()
        except Exception as exc:
            if watchdog.problem is not None:
                raise ClusterError(watchdog.problem) from None
            if isinstance(exc, ClusterError):
                raise
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ClusterError):
                raise ClusterError(str(cause)) from None
            raise
        trials += tuple(_trial_result(r, rounds) for r in grid)
    wall = time.perf_counter() - start
    completed = [t for t in trials if t.status == "completed" and t.score is not None]
    pick = max if greater else min
    best = pick(completed, key=lambda t: t.score) if completed else None
    return SearchResult(
        metric=metric,
        greater_is_better=greater,
        trials=trials,
        best=best,
        experiment_path=root,
        wall_seconds=wall,
        seed=s.seed,
        space={(k if f.name == XGBOOST else f"{f.name}.{k}"): repr(v)
               for f in active for k, v in f.space.items()},
        families=tuple(f.name for f in active),
        skipped=skipped,
        carried=len(carried),
        data_parallel=None if plan is None else plan.why,
    )


def driver_loads_training_rows(config: Config, train_rows: int,
                               connect: Callable[[], None]) -> bool:
    """Whether a cycle's driver loads the training rows (`retrain.data.load_split`): yes,
    unless every trial will train data-parallel, whose workers read their own. Decided
    from the row count before anything is read, as `run_search` will decide; ``connect``
    attaches to Ray, only when the answer depends on the cluster. Raises `ClusterError`
    when ``search.data_parallel.enabled`` is true on a cluster too small for its workers."""
    from retrain.distributed import use_data_parallel

    section = config.search.data_parallel
    if section.enabled is False or any(f.flavor != "xgboost" for f in families(config.search)):
        return True
    if section.enabled == "auto" and train_rows < section.min_rows:
        return True
    connect()
    use, _ = use_data_parallel(section, train_rows, _cluster_totals(),
                               trial_cpus=DATA_PARALLEL_TRIAL_CPUS)
    return not use


def shipped_to_trials(data: TrainData, champion: WarmStart | None,
                      active: tuple[Family, ...], plan: DataParallelPlan | None,
                      ) -> tuple[TrainData, WarmStart | None]:
    """What goes into the object store for the trials. When every trial trains
    data-parallel (only XGBoost families and a plan), the workers read their own Parquet
    rows: the trials get the frames' columns without rows and the champion without its row
    positions, so data that outgrows a node is not copied into the object store whole."""
    if plan is None or any(f.flavor != "xgboost" for f in active):
        return data, champion
    empty = TrainData(data.x_train.iloc[:0], data.y_train[:0], data.x_valid.iloc[:0],
                      data.y_valid[:0])
    return empty, None if champion is None else replace(champion, rows=None)


def _data_parallel_plan(config: Config, split: Split | None,
                        active: tuple[Family, ...], warm_start: WarmStart | None,
                        totals: dict[str, float]) -> DataParallelPlan | None:
    """The data-parallel plan when ``search.data_parallel`` applies to this search."""
    from retrain.distributed import DataParallelSettings, parquet_rows, use_data_parallel

    section = config.search.data_parallel
    if section.enabled is False or not any(f.flavor == "xgboost" for f in active):
        return None
    if split is None:
        if section.enabled is True:
            raise ConfigError(
                "search.data_parallel.enabled is true, but this search was given no split "
                "to read Parquet rows from; run it through a cycle (retrain run), or pass "
                "split= to run_search"
            )
        return None
    if split.holds_training_rows:
        use, why = use_data_parallel(section, split.train_rows, totals,
                                     trial_cpus=DATA_PARALLEL_TRIAL_CPUS)
        if not use:
            return None
    else:
        # decided once, when the cycle began (`driver_loads_training_rows`): asking the
        # cluster again could answer otherwise (an autoscaler may have removed an idle node
        # while the driver read the holdout), and these trials have no rows but Parquet's.
        # Tune's resource requests bring nodes back.
        why = (f"{split.train_rows} training rows, left to the data-parallel workers when "
               "the cycle began")
    rows = parquet_rows(split, config.data, config.task.type)
    warm = warm_start is not None and warm_start.rows is not None and warm_start.seen
    return DataParallelPlan(
        settings=DataParallelSettings.of(section, totals), rows=rows,
        warm_rows=parquet_rows(split, config.data, config.task.type, skip=warm_start.seen)
        if warm else None,
        why=why,
    )


def _concurrent(config: Config, plan: DataParallelPlan | None,
                totals: dict[str, float]) -> int:
    """Trials at once: ``search.max_concurrent``; with data-parallel trials no more than the
    cluster holds together with one read task each (trials that hold every CPU would starve
    their Ray Data reads and wait forever)."""
    if plan is None:
        return config.search.max_concurrent
    from retrain.distributed import cpus_needed

    each = cpus_needed(config.search.data_parallel, trial_cpus=DATA_PARALLEL_TRIAL_CPUS)
    return max(1, min(config.search.max_concurrent, int(totals.get("CPU", 0) // each)))


def _earlier_experiments(storage: str, name: str) -> list[str]:
    """This search's experiments already on storage: ``name``, then its resumes in order."""
    import pyarrow.fs as pafs
    from ray import tune

    found = []
    for k in range(1000):
        path = f"{storage.rstrip('/')}/{name}" + (f".resume{k}" if k else "")
        fs, base = storage_fs(path)
        # a driver that died before Tune first saved the experiment may have left records
        if not tune.Tuner.can_restore(path) and fs.get_file_info(
                f"{base}/{RECORDS_DIR}").type != pafs.FileType.Directory:
            break
        found.append(path)
    return found


def _finished_trials(path: str, rounds: dict[str, int]) -> list[TrialResult]:
    """The trials of the experiment at ``path`` (a local folder or any URI pyarrow reads)
    that finished (see `run_search`), by trial id: those with a whole final record (the
    trial's own copy in `RECORDS_DIR`, or the one in its Tune checkpoint), then those whose
    end the driver recorded in `RECORDS_DIR`, then those Tune's saved state says ended."""
    import pyarrow.fs as pafs
    from ray import tune
    from ray.tune import Checkpoint, ExperimentAnalysis

    fs, base = storage_fs(path)
    # a trial saved while pending has no folder (and no path) yet; a driver that died before
    # Tune first saved the experiment left no state at all
    saved = {t.relative_logdir: t.status for t in ExperimentAnalysis(path).trials
             if t.relative_logdir} if tune.Tuner.can_restore(path) else {}
    finals: dict[str, TrialResult] = {}
    ended: dict[str, TrialResult] = {}

    def final(folder: str, record: dict[str, Any]) -> None:
        trial_id = str(record.get("trial_id") or folder.rsplit("/", 1)[-1])
        finals.setdefault(trial_id, _result_of(
            record[CONFIG_KEY], record, record.get(REPORTS_KEY, [record]),
            Checkpoint(folder, filesystem=fs), None, rounds, trial_id=trial_id))

    def whole_finals(files: list[str]) -> list[tuple[str, dict[str, Any]]]:
        # only a trial's last round saves a checkpoint, with its record beside the model
        found = [(f.rsplit("/", 1)[0], (_json_lines(_read(fs, f)) or [{}])[0])
                 for f in sorted(files) if f.endswith(f"/{METRICS_FILE}")]
        return [(c, r) for c, r in found
                if CONFIG_KEY in r and _whole(fs, c, r.get(MANIFEST_KEY))]

    records = f"{base}/{RECORDS_DIR}"
    mine = [i for i in fs.get_file_info(pafs.FileSelector(records, allow_not_found=True,
                                                          recursive=True))
            if i.type == pafs.FileType.File]
    for folder, record in whole_finals([i.path for i in mine]):
        final(folder, record)
    for info in mine:
        if info.path.rsplit("/", 2)[-2] != RECORDS_DIR or not info.path.endswith(".json"):
            continue  # a final folder's file, or a file still being written
        record = (_json_lines(_read(fs, info.path)) or [{}])[0]
        if CONFIG_KEY not in record or STATUS_KEY not in record:
            continue
        reports = record.get(REPORTS_KEY) or []
        error = (record.get(ERROR_KEY) or "the trial failed (no error saved)") \
            if record[STATUS_KEY] == "error" else None
        trial_id = str(record.get("trial_id"))
        ended[trial_id] = _result_of(record[CONFIG_KEY], reports[-1] if reports else {},
                                     reports, None, error, rounds, trial_id=trial_id)

    for folder in sorted(i.path for i in fs.get_file_info(pafs.FileSelector(base))
                         if i.type == pafs.FileType.Directory):
        if folder.rsplit("/", 1)[-1] == RECORDS_DIR:
            continue
        files = [i.path for i in fs.get_file_info(pafs.FileSelector(folder, recursive=True))
                 if i.type == pafs.FileType.File]
        whole = whole_finals(files)
        status = saved.get(folder.rsplit("/", 1)[-1])
        if whole:
            final(*whole[-1])
        elif status in ("TERMINATED", "ERROR") and f"{folder}/params.json" in files:
            # stopped early by ASHA, or failed: Tune's saved state says so, and its files
            # were written by then
            reports = _json_lines(_read(fs, f"{folder}/result.json"))
            error = _last_line(_read(fs, f"{folder}/error.txt")) if status == "ERROR" else None
            last = reports[-1] if reports else {}
            trial_id = str(last.get("trial_id") or folder.rsplit("/", 1)[-1])
            ended.setdefault(trial_id, _result_of(
                json.loads(_read(fs, f"{folder}/params.json")), last, reports, None, error,
                rounds, trial_id=trial_id))
        # else it was running: its sample runs again
    return [*(finals[t] for t in sorted(finals)),
            *(ended[t] for t in sorted(ended) if t not in finals)]


def _whole(fs, folder: str, sizes: dict[str, int] | None) -> bool:
    """Whether a checkpoint folder holds every file its manifest names, at full size."""
    import pyarrow.fs as pafs

    if not sizes:
        return False
    infos = fs.get_file_info([f"{folder}/{name}" for name in sizes])
    return all(i.type == pafs.FileType.File and i.size == size
               for i, size in zip(infos, sizes.values(), strict=True))


def _read(fs, path: str) -> str:
    """A small text file, or "" when it is not there."""
    import pyarrow as pa

    try:
        with fs.open_input_stream(path) as stream:
            return stream.read().decode()
    except (FileNotFoundError, pa.ArrowIOError):
        return ""


def _json_lines(text: str) -> list[dict[str, Any]]:
    """A trial's reports from Tune's result log; a line cut short by a crash is left out."""
    reports = []
    for line in text.splitlines():
        try:
            reports.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return reports


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "the trial failed (no error saved)")[:1000]


def _tuner(trainable, config: Config, name: str, storage: str, active: tuple[Family, ...],
           samples: int, mode: str, progress: bool, *, told: tuple[TrialResult, ...] = (),
           offset: int = 0, concurrent: int | None = None, records: str = "",
           watchdog=None):
    """A new Tune experiment: TPE over the families' space, ASHA per family, actor reuse.

    ``told``: finished trials of an earlier run of this search, which TPE learns from before
    it suggests anything; ``offset`` (the number of earlier runs) shifts TPE's seed so its
    random start-up samples are not the ones the earlier run already tried.
    """
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    s = config.search
    space = FamilySpace(active)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=SCORE_KEY,
            mode=mode,
            search_alg=OptunaSearch(space=space, metric=SCORE_KEY, mode=mode,
                                    seed=s.seed + offset,
                                    storage=_told_storage(space, told, mode,
                                                          defaults=s.start_with_defaults)),
            scheduler=_scheduler(config, active),
            num_samples=samples,
            max_concurrent_trials=concurrent or s.max_concurrent,
            time_budget_s=s.time_budget_s,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[
                *([_records_callback(records)] if records else []),
                *([watchdog] if watchdog is not None else []),
                *([_progress_callback(samples + len(told), len(told))] if progress else []),
            ],
            verbose=0,
        ),
    )


def _told_storage(space: FamilySpace, told: tuple[TrialResult, ...], mode: str, *,
                  defaults: bool = False):
    """An in-memory Optuna storage whose study (named as `OptunaSearch` names its own) already
    holds the ``told`` trials; None when there are none and no defaults are asked for. Each
    is replayed through the define-by-run space with its parameters fixed (``enqueue_trial``),
    so it is recorded with the same distributions as a trial TPE suggested.

    ``defaults``: each searched family that no told trial covers gets its default
    configuration enqueued (`retrain.candidates.default_params`), so it is its first trial.
    """
    waiting = [f for f in space.families if f.searched
               and not any(t.family == f.name for t in told)] if defaults else []
    if not told and not waiting:
        return None
    import optuna
    from optuna.trial import TrialState

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="optuna",
                                direction="maximize" if mode == "max" else "minimize")
    for family in waiting:
        study.enqueue_trial(default_params(family), user_attrs={FAMILY_ATTR: family.name})
    by_name = {f.name: f for f in space.families}
    for trial in told:
        family = by_name.get(trial.family)
        if family is None:
            continue  # a family this run leaves out
        distributions = family_distributions(family)
        params = {key: trial.params.get(key.split("/", 1)[1]) for key in distributions}
        state = {"completed": TrialState.COMPLETE, "stopped": TrialState.PRUNED}.get(
            trial.status, TrialState.FAIL)
        try:
            study.add_trial(optuna.trial.create_trial(
                params=params, distributions=distributions, state=state,
                user_attrs={FAMILY_ATTR: trial.family},
                value=trial.score if state is TrialState.COMPLETE else None,
                intermediate_values={int(h["round"]): h["score"] for h in trial.history},
            ))
        except ValueError:
            continue  # the space changed since that trial ran: TPE cannot use it
    return storage


def _describe(error: BaseException) -> str:
    """The trial's own exception in one line (Ray wraps it in a RayTaskError with a traceback)."""
    cause = getattr(error, "cause", None) or error
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:1000]


def _last_run(reports) -> tuple[dict[str, float], ...]:
    """A trial's reports as one run: a trial Tune retried after a failure appends to the same
    result log, starting again from its first round (or reporting its last round again)."""
    history: list[dict[str, float]] = []
    for report in reports:
        if history and report["round"] < history[-1]["round"]:
            history = []
        elif history and report["round"] == history[-1]["round"]:
            history.pop()
        history.append(report)
    return tuple(history)


def _trial_result(result, rounds_by_family: dict[str, int]) -> TrialResult:
    """A trial as Tune's result grid has it."""
    frame = result.metrics_dataframe
    reports = [] if frame is None else frame.to_dict("records")
    metrics = dict(result.metrics or {})
    return _result_of(
        result.config or {}, metrics, reports, result.checkpoint,
        None if result.error is None else _describe(result.error), rounds_by_family,
        trial_id=str(metrics.get("trial_id") or Path(str(result.path)).name),
    )


def _result_of(config: dict[str, Any], metrics: dict[str, Any], reports: list[dict[str, Any]],
               checkpoint, error: str | None, rounds_by_family: dict[str, int], *,
               trial_id: str) -> TrialResult:
    """A trial from its config, last result, every report, final checkpoint and error."""
    family, params = trial_family(config)
    history = _last_run(
        {"round": int(r["round"]), "score": float(r[SCORE_KEY]),
         **{name: float(r[key]) for name, key in (("trained", TRAINED_KEY), ("at", AT_KEY))
            if _number(r.get(key)) is not None}}
        for r in reports
        if _number(r.get("round")) is not None and _number(r.get(SCORE_KEY)) is not None
    )
    rounds = int(_number(metrics.get("round")) or 0)
    kept = int(_number(metrics.get(BEST_ROUND_KEY)) or rounds)
    if error is not None:
        status: Status = "failed"
    elif checkpoint is not None and (_number(metrics.get(FINAL_KEY))
                                     or rounds >= rounds_by_family.get(family, 1)):
        status = "completed"
    else:
        status = "stopped"
    score, fit = _number(metrics.get(SCORE_KEY)), _number(metrics.get(FIT_KEY))
    return TrialResult(
        trial_id=trial_id,
        params=params,
        status=status,
        score=score,
        rounds=kept if status == "completed" else rounds,
        # Tune's own clock when its log has it, else the trial's (a read-back record)
        train_seconds=float(_number(metrics.get("time_total_s"))
                            or _number(metrics.get(TRAINED_KEY)) or 0.0),
        history=history,
        error=error,
        gpu=bool(_number(metrics.get("gpu")) or 0),
        family=family,
        fit_seconds=fit,
        checkpoint=checkpoint,
    )


def _number(value: Any) -> float | None:
    """A reported number, or None for a missing or NaN one (a frame fills gaps with NaN)."""
    if value is None or isinstance(value, bool | str):
        return None if not isinstance(value, bool) else float(value)
    value = float(value)
    return None if math.isnan(value) else value
