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
last round; a scikit-learn trial fits once and reports once (skops). A trial that raises is
recorded as failed with its error; the search fails only when no trial completes.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from retrain.candidates import (
    FAMILY_KEY,
    FLAVORS,
    XGB_METRICS,
    XGBOOST,
    Family,
    FamilySpace,
    build_sklearn,
    check_sklearn_space,
    families,
    trial_family,
    warm_start_problem,
    xgb_params,
)
from retrain.config import Config
from retrain.errors import ClusterError, ConfigError, RetrainWarning, SearchError

Status = Literal["completed", "stopped", "failed"]


@dataclass(frozen=True)
class TrainData:
    """What every trial reads from the object store."""

    x_train: pd.DataFrame
    y_train: np.ndarray
    x_valid: pd.DataFrame
    y_valid: np.ndarray


@dataclass(frozen=True)
class TrialSettings:
    task: str
    metric: str
    report_every: int
    seed: int
    #: the active families by name
    families: dict[str, Family]


@dataclass(frozen=True)
class WarmStart:
    """The champion that warm-start trials continue from, or why they cannot."""

    version: str
    #: the champion's booster as UBJ bytes (None when ``problem`` says why not)
    model: bytes | None = field(default=None, repr=False)
    problem: str | None = None
    #: positions in ``TrainData.x_train`` of the rows to boost on; None: all of them
    rows: np.ndarray | None = field(default=None, repr=False, compare=False)

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
            positions = new_rows(split.train_partitions, seen, len(split.x_train),
                                 len(split.x_train) + len(split.x_valid))
            if positions is not None and len(positions) == 0:
                return cls(version=version, problem=(
                    f"every training row outside the validation share comes from partitions "
                    f"champion version {version} was trained on; nothing new to continue on "
                    "(lower data.validation_fraction, or set "
                    "search.families.xgboost_warm_start.rows: all)"))
        return cls(version=version, model=bytes(champion.booster.save_raw("ubj")),
                   rows=positions)


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
    rounds: int
    train_seconds: float
    #: one entry per report: {"round": n, "<metric>": value}
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


MODEL_FILE = "model.ubj"
SKLEARN_FILE = "model.skops"
SCORE_KEY = "valid_score"
FIT_KEY = "fit_seconds"


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
    resources = tune.get_context().get_trial_resources().required_resources
    nthread = max(1, round(resources.get("CPU", 1)))
    if family.flavor == "sklearn":
        _fit_sklearn(family, params, data, settings, nthread)
        return
    if family.warm_start and (champion is None or champion.model is None):
        raise SearchError("a warm-start trial was started without the champion's booster")
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    _boost(family, params, data, settings, nthread, device,
           champion if family.warm_start else None)


def _boost(family: Family, config: dict[str, Any], data: TrainData, settings: TrialSettings,
           nthread: int, device: str, champion: WarmStart | None) -> None:
    """Train XGBoost (continuing the champion's booster when given, on its rows), report per
    N rounds, checkpoint the final booster."""
    import xgboost as xgb
    from ray import tune

    start = time.perf_counter()
    params = xgb_params(
        settings.task, settings.metric, config, nthread=nthread, device=device, seed=settings.seed
    )
    x, y = data.x_train, data.y_train
    if champion is not None and champion.rows is not None:
        x, y = x.iloc[champion.rows], y[champion.rows]
    dtrain = xgb.DMatrix(x, y, enable_categorical=True, nthread=nthread)
    dvalid = xgb.DMatrix(data.x_valid, data.y_valid, enable_categorical=True, nthread=nthread)
    base = None if champion is None else xgb.Booster(model_file=bytearray(champion.model))
    convert = XGB_METRICS[settings.metric][1]
    total, every = family.rounds, settings.report_every
    reporting = [0.0]  # seconds spent in tune.report: Ray's cost, not training

    class Report(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log) -> bool:
            # epoch counts this call's rounds from 0, also when continuing a booster
            done = epoch + 1
            if done % every and done != total:
                return False
            value = float(convert(evals_log["valid"][params["eval_metric"]][-1]))
            metrics = {SCORE_KEY: value, "round": done, "gpu": int(device == "cuda")}
            began = time.perf_counter()
            if done == total:
                metrics[FIT_KEY] = began - start - reporting[0]
                with tempfile.TemporaryDirectory() as tmp:
                    model.save_model(os.path.join(tmp, MODEL_FILE))
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
            else:
                tune.report(metrics)
            reporting[0] += time.perf_counter() - began
            return False

    xgb.train(
        params,
        dtrain,
        num_boost_round=total,
        evals=[(dvalid, "valid")],
        callbacks=[Report()],
        verbose_eval=False,
        xgb_model=base,
    )


def _fit_sklearn(family: Family, params: dict[str, Any], data: TrainData,
                 settings: TrialSettings, nthread: int) -> None:
    """Fit a scikit-learn family once, score it on the validation rows, report once."""
    import skops.io
    from ray import tune
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
    metrics = {SCORE_KEY: float(value), "round": 1, "gpu": 0,
               FIT_KEY: time.perf_counter() - start}
    with tempfile.TemporaryDirectory() as tmp:
        skops.io.dump(model, os.path.join(tmp, SKLEARN_FILE))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


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


def _family_resources(resources: dict[str, float], active: tuple[Family, ...]):
    """The resources argument of `tune.with_resources`: the plain dict, unless scikit-learn
    trials would hold GPUs they cannot use; then a per-trial choice by family."""
    if resources["gpu"] == 0 or all(f.flavor == "xgboost" for f in active):
        return resources
    from ray.tune import PlacementGroupFactory

    cpu_only = {f.name for f in active if f.flavor != "xgboost"}

    def by_family(config: dict[str, Any]):
        gpu = 0 if config.get(FAMILY_KEY) in cpu_only else resources["gpu"]
        return PlacementGroupFactory([{"CPU": resources["cpu"], "GPU": gpu}])

    return by_family


def _say(line: str) -> None:
    print(line, flush=True)


def _progress_callback(num_samples: int):
    # Tune pickles callbacks with the experiment state, so this one holds no user callable.
    from ray import tune

    class Progress(tune.Callback):
        done = 0

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
    warm_start: WarmStart | None = None,
) -> SearchResult:
    """Run the search over every active family on the connected Ray cluster.

    ``warm_start`` carries the champion's booster for the ``xgboost_warm_start`` family; when
    it is None or says why the champion cannot be continued, that family sits this search
    out and `SearchResult.skipped` says why.
    """
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    s, task = config.search, config.task
    metric, greater = task.primary_metric, task.greater_is_better
    mode = "max" if greater else "min"
    active, skipped = plan_families(config, warm_start)
    if progress:
        for family, why in skipped.items():
            _say(f"  {family} skipped: {why}")
    settings = TrialSettings(task.type, metric, s.report_every, s.seed,
                             {f.name: f for f in active})
    # every active family gets at least one trial; with nothing to search, one each is all
    samples = max(s.num_samples, len(active)) if any(f.searched for f in active) \
        else len(active)
    champion = warm_start if any(f.warm_start for f in active) else None
    resources = trial_resources(config, _cluster_totals())
    trainable = tune.with_resources(
        tune.with_parameters(_trial, data=data, settings=settings, champion=champion),
        _family_resources(resources, active),
    )
    storage = config.storage_path
    if "://" not in storage:
        Path(storage).mkdir(parents=True, exist_ok=True)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=SCORE_KEY,
            mode=mode,
            search_alg=OptunaSearch(space=FamilySpace(active), metric=SCORE_KEY, mode=mode,
                                    seed=s.seed),
            scheduler=_scheduler(config, active),
            num_samples=samples,
            max_concurrent_trials=s.max_concurrent,
            time_budget_s=s.time_budget_s,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[_progress_callback(samples)] if progress else [],
            verbose=0,
        ),
    )
    start = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - start
    rounds = {f.name: f.rounds for f in active}
    trials = tuple(_trial_result(r, rounds) for r in grid)
    completed = [t for t in trials if t.status == "completed" and t.score is not None]
    pick = max if greater else min
    best = pick(completed, key=lambda t: t.score) if completed else None
    return SearchResult(
        metric=metric,
        greater_is_better=greater,
        trials=trials,
        best=best,
        experiment_path=str(grid.experiment_path),
        wall_seconds=wall,
        seed=s.seed,
        space={(k if f.name == XGBOOST else f"{f.name}.{k}"): repr(v)
               for f in active for k, v in f.space.items()},
        families=tuple(f.name for f in active),
        skipped=skipped,
    )


def _describe(error: BaseException) -> str:
    """The trial's own exception in one line (Ray wraps it in a RayTaskError with a traceback)."""
    cause = getattr(error, "cause", None) or error
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:1000]


def _trial_result(result, rounds_by_family: dict[str, int]) -> TrialResult:
    metrics = result.metrics or {}
    family, params = trial_family(result.config or {})
    history: tuple[dict[str, float], ...] = ()
    frame = result.metrics_dataframe
    if frame is not None and SCORE_KEY in frame:
        rows = frame[["round", SCORE_KEY]].dropna()
        history = tuple(
            {"round": int(r), "score": float(v)}
            for r, v in zip(rows["round"], rows[SCORE_KEY], strict=True)
        )
    rounds = int(metrics.get("round", 0) or 0)
    if result.error is not None:
        status: Status = "failed"
    elif rounds >= rounds_by_family.get(family, 1) and result.checkpoint is not None:
        status = "completed"
    else:
        status = "stopped"
    score = metrics.get(SCORE_KEY)
    fit = metrics.get(FIT_KEY)
    return TrialResult(
        trial_id=str(metrics.get("trial_id") or Path(str(result.path)).name),
        params=params,
        status=status,
        score=float(score) if score is not None else None,
        rounds=rounds,
        train_seconds=float(metrics.get("time_total_s", 0.0) or 0.0),
        history=history,
        error=None if result.error is None else _describe(result.error),
        gpu=bool(metrics.get("gpu", 0)),
        family=family,
        fit_seconds=float(fit) if fit is not None and not math.isnan(fit) else None,
        checkpoint=result.checkpoint,
    )
