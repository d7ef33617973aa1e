"""The Tune driver: one experiment over every active family, resumed when a saved one exists."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from retrain.candidates import WINDOW, XGBOOST, Family, FamilySpace
from retrain.config import Config
from retrain.errors import ClusterError, SearchError
from retrain.search.plan import (
    DataParallelChoice,
    _cluster_totals,
    _concurrent,
    _data_parallel_plan,
    _family_resources,
    _scheduler,
    plan_families,
    shipped_to_trials,
    trial_resources,
)
from retrain.search.progress import _placement_watchdog, _progress_callback, _say
from retrain.search.records import _records_callback
from retrain.search.results import (
    DataParallelPlan,
    SearchResult,
    TrainData,
    TrialResult,
    TrialSettings,
    WarmStart,
    by_score,
)
from retrain.search.resume import (
    _earlier_experiments,
    _finished_trials,
    _told_storage,
    _trial_result,
)
from retrain.search.trial import _trial
from retrain.trial_report import RECORDS_DIR, SCORE_KEY

if TYPE_CHECKING:
    from retrain.data import Split


def run_search(
    config: Config, data: TrainData, *, name: str, progress: bool = False,
    warm_start: WarmStart | None = None, split: Split | None = None, read_only: bool = False,
    data_parallel: DataParallelChoice | None = None,
) -> SearchResult:
    """Run the search over every active family on the connected Ray cluster.

    ``read_only``: only read back the trials of an earlier run of this search (a cycle
    resumed after its search finished: its trials were logged and judged, and the search
    must not grow, e.g. after ending on ``time_budget_s``). ``split`` (the cycle's
    `retrain.data.Split`) lets XGBoost trials train data-parallel from its Parquet files
    (`retrain.distributed`) as ``data_parallel``, the cycle's choice, says; without that
    choice the search decides from the split and the cluster; without a split every trial
    trains in one process. ``warm_start`` carries the champion's booster for the
    ``xgboost_warm_start`` family; when it is None or says why the champion cannot be
    continued, that family sits this search out and `SearchResult.skipped` says why.
    A search whose experiment already exists under ``search.storage_path`` runs only the
    rest of its budget (`retrain.search.resume`).
    """
    s, task = config.search, config.task
    metric, greater = task.primary_metric, task.greater_is_better
    mode = "max" if greater else "min"
    active, skipped = plan_families(config, warm_start)
    if progress:
        for family, why in skipped.items():
            _say(f"  {family} skipped: {why}")
    totals = _cluster_totals()
    active, plan = _lay_out(config, split, active, skipped, warm_start, totals, progress,
                            data_parallel)
    storage = _storage(config)
    earlier = _earlier_experiments(storage, name)
    run_name = name if not earlier else f"{name}.resume{len(earlier)}"
    records = f"{storage.rstrip('/')}/{run_name}/{RECORDS_DIR}"
    settings = TrialSettings(
        task.type, metric, s.report_every, s.seed, {f.name: f for f in active},
        data_key=uuid.uuid4().hex, data_parallel=plan, patience=s.early_stopping_rounds,
        records=records, placement_timeout_s=config.resources.placement_timeout_s)
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
        trials += _fit(config, data, warm_start, active, plan, settings, totals, run_name,
                       storage, samples - len(carried), mode, progress, carried, len(earlier),
                       records, rounds)
    wall = time.perf_counter() - start
    return _result(config, trials, active, skipped, plan, root, wall, len(carried))


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



def _lay_out(config: Config, split: Split | None, active: tuple[Family, ...],
             skipped: dict[str, str], warm_start: WarmStart | None,
             totals: dict[str, float], progress: bool,
             choice: DataParallelChoice | None = None,
             ) -> tuple[tuple[Family, ...], DataParallelPlan | None]:
    """Whether XGBoost trials train data-parallel, decided once, and the families that can
    take part given that (``skipped`` gains the others, with why)."""
    plan = _data_parallel_plan(config, split, active, warm_start, totals, choice)
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
    return active, plan


def _storage(config: Config) -> str:
    storage = config.storage_path
    if "://" not in storage:
        # absolute: trials run in folders of their own
        storage = str(Path(storage).resolve())
        Path(storage).mkdir(parents=True, exist_ok=True)
    return storage


def _fit(config: Config, data: TrainData, warm_start: WarmStart | None,
         active: tuple[Family, ...], plan: DataParallelPlan | None, settings: TrialSettings,
         totals: dict[str, float], run_name: str, storage: str, samples: int, mode: str,
         progress: bool, carried: tuple[TrialResult, ...], offset: int, records: str,
         rounds: dict[str, int]) -> tuple[TrialResult, ...]:
    """One Tune experiment of ``samples`` trials; the trials it ran."""
    from ray import tune

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
    concurrent = 1 if config.search.deterministic else _concurrent(config, plan, totals)
    tuner = _tuner(trainable, config, run_name, storage, active, samples, mode, progress,
                   told=carried, offset=offset, concurrent=concurrent, records=records,
                   watchdog=watchdog)
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
    return tuple(_trial_result(r, rounds) for r in grid)


def _result(config: Config, trials: tuple[TrialResult, ...], active: tuple[Family, ...],
            skipped: dict[str, str], plan: DataParallelPlan | None, root: str, wall: float,
            carried: int) -> SearchResult:
    metric, greater = config.task.primary_metric, config.task.greater_is_better
    completed = [t for t in trials if t.status == "completed" and t.score is not None]
    pick = max if greater else min
    best = pick(completed, key=by_score) if completed else None
    return SearchResult(
        metric=metric,
        greater_is_better=greater,
        trials=trials,
        best=best,
        experiment_path=root,
        wall_seconds=wall,
        seed=config.search.seed,
        space={(k if f.name == XGBOOST else f"{f.name}.{k}"): repr(v)
               for f in active for k, v in f.space.items()},
        families=tuple(f.name for f in active),
        skipped=skipped,
        carried=carried,
        data_parallel=None if plan is None else plan.why,
    )
