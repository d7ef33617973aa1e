"""The only module that drives Ray Tune: trials, OptunaSearch (TPE), ASHA, resources, failures.

The training arrays go into Ray's object store once (`tune.with_parameters`) and every trial
reads them from there. A trial reports every ``report_every`` boosting rounds, so ASHA can stop
weak ones early, and checkpoints its booster (UBJ) at its last round. A trial that raises is
recorded as failed with its error; the search fails only when no trial completes.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from retrain.candidates import XGB_METRICS, tune_space, xgb_params
from retrain.config import Config
from retrain.errors import ClusterError, RetrainWarning, SearchError

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
    num_boost_round: int
    report_every: int
    seed: int


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
    #: the Tune checkpoint holding the final booster (completed trials only)
    checkpoint: Any = field(default=None, repr=False, compare=False)


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
        """The best trial's booster, read from its checkpoint."""
        return load_booster(self.require_best())


def load_booster(trial: TrialResult):
    """A completed trial's final booster, read from its Tune checkpoint."""
    import xgboost as xgb

    if trial.checkpoint is None:
        raise SearchError(f"trial {trial.trial_id} ({trial.status}) has no final checkpoint")
    with trial.checkpoint.as_directory() as folder:
        return xgb.Booster(model_file=str(Path(folder) / MODEL_FILE))


MODEL_FILE = "model.ubj"
SCORE_KEY = "valid_score"


def _trial(config: dict[str, Any], data: TrainData, settings: TrialSettings) -> None:
    """One candidate: train XGBoost, report per N rounds, checkpoint the final booster."""
    import ray
    import xgboost as xgb
    from ray import tune

    context = tune.get_context()
    resources = context.get_trial_resources().required_resources
    nthread = max(1, round(resources.get("CPU", 1)))
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    params = xgb_params(
        settings.task, settings.metric, config, nthread=nthread, device=device, seed=settings.seed
    )
    dtrain = xgb.DMatrix(data.x_train, data.y_train, enable_categorical=True, nthread=nthread)
    dvalid = xgb.DMatrix(data.x_valid, data.y_valid, enable_categorical=True, nthread=nthread)
    convert = XGB_METRICS[settings.metric][1]
    total, every = settings.num_boost_round, settings.report_every

    class Report(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log) -> bool:
            done = epoch + 1
            if done % every and done != total:
                return False
            value = float(convert(evals_log["valid"][params["eval_metric"]][-1]))
            metrics = {SCORE_KEY: value, "round": done, "gpu": int(device == "cuda")}
            if done == total:
                with tempfile.TemporaryDirectory() as tmp:
                    model.save_model(os.path.join(tmp, MODEL_FILE))
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
            else:
                tune.report(metrics)
            return False

    xgb.train(
        params,
        dtrain,
        num_boost_round=total,
        evals=[(dvalid, "valid")],
        callbacks=[Report()],
        verbose_eval=False,
    )


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
            _say(f"  trial {self.done}/{num_samples} {what}: score={shown} "
                 f"rounds={trial.last_result.get('round', 0)}")

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._line(trial, "done")

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._line(trial, "FAILED")

    return Progress()


def run_search(
    config: Config, data: TrainData, *, name: str, progress: bool = False
) -> SearchResult:
    """Run the hyperparameter search on the connected Ray cluster."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.search.sample import Domain

    s, task = config.search, config.task
    metric, greater = task.primary_metric, task.greater_is_better
    mode = "max" if greater else "min"
    settings = TrialSettings(task.type, metric, s.num_boost_round, s.report_every, s.seed)
    reports = math.ceil(s.num_boost_round / s.report_every)
    scheduler = (
        # max_t one past the last report: ASHA must never cut a trial at its final checkpoint
        ASHAScheduler(
            max_t=reports + 1,
            grace_period=min(s.asha.grace_period, reports),
            reduction_factor=s.asha.reduction_factor,
        )
        if s.early_stopping
        else FIFOScheduler()
    )
    resources = trial_resources(config, _cluster_totals())
    trainable = tune.with_resources(
        tune.with_parameters(_trial, data=data, settings=settings), resources
    )
    space = tune_space(s.space)
    searched = any(isinstance(v, Domain) for v in space.values())
    storage = config.storage_path
    if "://" not in storage:
        Path(storage).mkdir(parents=True, exist_ok=True)
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=SCORE_KEY,
            mode=mode,
            # With nothing to search, one trial of the fixed parameters is the whole search.
            search_alg=OptunaSearch(seed=s.seed) if searched else None,
            scheduler=scheduler,
            num_samples=s.num_samples if searched else 1,
            max_concurrent_trials=s.max_concurrent,
            time_budget_s=s.time_budget_s,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[_progress_callback(s.num_samples)] if progress else [],
            verbose=0,
        ),
    )
    start = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - start
    trials = tuple(_trial_result(r, s.num_boost_round) for r in grid)
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
        space={k: repr(v) for k, v in s.space.items()},
    )


def _describe(error: BaseException) -> str:
    """The trial's own exception in one line (Ray wraps it in a RayTaskError with a traceback)."""
    cause = getattr(error, "cause", None) or error
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:1000]


def _trial_result(result, total_rounds: int) -> TrialResult:
    metrics = result.metrics or {}
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
    elif rounds >= total_rounds and result.checkpoint is not None:
        status = "completed"
    else:
        status = "stopped"
    score = metrics.get(SCORE_KEY)
    return TrialResult(
        trial_id=str(metrics.get("trial_id") or Path(str(result.path)).name),
        params=dict(result.config or {}),
        status=status,
        score=float(score) if score is not None else None,
        rounds=rounds,
        train_seconds=float(metrics.get("time_total_s", 0.0) or 0.0),
        history=history,
        error=None if result.error is None else _describe(result.error),
        gpu=bool(metrics.get("gpu", 0)),
        checkpoint=result.checkpoint,
    )
