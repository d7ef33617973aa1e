"""How a search is laid out on the cluster: resources per trial, families per sample, the ASHA
scheduler, and whether trials train data-parallel.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from retrain.candidates import FAMILY_KEY, XGBOOST, Family, check_sklearn_space, families
from retrain.config import Config
from retrain.errors import ClusterError, ConfigError, RetrainWarning
from retrain.search.results import DataParallelPlan, TrainData, WarmStart

if TYPE_CHECKING:
    from retrain.data import Split


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


@dataclass(frozen=True)
class DataParallelChoice:
    """Whether a cycle's XGBoost trials train data-parallel, and why: decided once, when the
    cycle begins (`choose_data_parallel`), and passed to what depends on it: the rows the
    driver loads, the holdout's share, the search's plan."""

    use: bool
    why: str
    #: every family of the search is XGBoost (with ``use``, no trial needs the rows in
    #: the driver)
    xgboost_only: bool = True

    @property
    def driver_loads_rows(self) -> bool:
        """Whether the driver loads the training rows (`retrain.data.load_split`): yes,
        unless every trial trains data-parallel, whose workers read their own."""
        return not (self.use and self.xgboost_only)


def choose_data_parallel(config: Config, train_rows: int,
                         totals: Callable[[], Mapping[str, float]]) -> DataParallelChoice:
    """The cycle's `DataParallelChoice` for ``train_rows`` training rows, before anything is
    read. ``totals`` gives the cluster's resources (attaching to Ray), asked only when the
    answer depends on them. Raises `ClusterError` when ``search.data_parallel.enabled`` is
    true on a cluster too small for its workers."""
    from retrain.distributed import use_data_parallel

    flavors = {f.flavor for f in families(config.search)}
    only = flavors == {"xgboost"}
    if "xgboost" not in flavors:
        return DataParallelChoice(False, "no XGBoost family", only)
    use, why = use_data_parallel(config.search.data_parallel, train_rows, totals,
                                 trial_cpus=DATA_PARALLEL_TRIAL_CPUS)
    return DataParallelChoice(use, why, only)


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
                        totals: dict[str, float],
                        choice: DataParallelChoice | None = None) -> DataParallelPlan | None:
    """The data-parallel plan when ``search.data_parallel`` applies to this search: as the
    cycle's ``choice`` says, or (a search run on its own) decided here."""
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
    if choice is None and split.holds_training_rows:
        choice = DataParallelChoice(*use_data_parallel(section, split.train_rows, totals,
                                                       trial_cpus=DATA_PARALLEL_TRIAL_CPUS))
    elif choice is None:
        # the split was loaded without its rows because data-parallel was chosen then:
        # asking the cluster again could answer otherwise (an autoscaler may have removed
        # an idle node while the driver read the holdout), and these trials have no rows
        # but Parquet's. Tune's resource requests bring nodes back.
        choice = DataParallelChoice(True, f"{split.train_rows} training rows, left to the "
                                    "data-parallel workers when the split was loaded")
    if not choice.use:
        return None
    rows = parquet_rows(split, config.data, config.task.type)
    seen = warm_start.seen if warm_start is not None and warm_start.rows is not None else None
    return DataParallelPlan(
        settings=DataParallelSettings.of(section, totals), rows=rows,
        warm_rows=parquet_rows(split, config.data, config.task.type, skip=seen)
        if seen else None,
        why=choice.why,
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
