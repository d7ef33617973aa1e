"""The Tune trial of a data-parallel run: it starts the driver actor, forwards its reports to Tune
(the last with a checkpoint), and stops it when Tune stops the trial.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrain.distributed.decision import DataParallelSettings
from retrain.distributed.rows import ParquetRows
from retrain.distributed.trainer import DataParallelRun, _check_placeable, _Driver, _unplaced
from retrain.distributed.workers import _Job
from retrain.errors import ClusterError, SearchError

if TYPE_CHECKING:

    pass


#: how often the trial asks its driver actor for reports and checks whether Tune stopped it;
#: Tune waits 2 s (TUNE_FUNCTION_THREAD_TIMEOUT_S) for a stopped trial before it gives up
#: reusing the trial's actor
_POLL_S = 0.5


def _tune_session():
    """The Tune session of this trial, or None outside Tune.

    Internal Ray API, as Ray's own `TuneReportCallback` uses it: the session's stop event is
    how a trial learns that Tune stopped it while it is not inside `tune.report`.
    """
    from ray.train._internal.session import get_session
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    return get_session() if _in_tune_session() else None


def _stopping(session) -> bool:
    event = getattr(session, "stop_event", None)
    return bool(event is not None and event.is_set())


def _report(item: dict[str, Any], reporter) -> None:
    """One report to Tune through the trial's reporter (`retrain.search.TrialReporter`), with the
    keys of `retrain.search.trial._boost`; the last one carries the model."""
    from retrain.trial_report import (
        AT_KEY,
        BEST_ROUND_KEY,
        FINAL_KEY,
        FIT_KEY,
        MODEL_FILE,
        SCORE_KEY,
        TRAINED_KEY,
    )

    if reporter is None:
        return
    metrics = {SCORE_KEY: item["score"], "round": item["round"], "gpu": int(item["gpu"]),
               TRAINED_KEY: item["trained"], AT_KEY: time.time()}
    if "model" not in item:
        reporter.report(metrics)
        return
    metrics[FIT_KEY], metrics[FINAL_KEY] = item["trained"], 1
    metrics[BEST_ROUND_KEY] = item.get("best_round", item["round"])
    reporter.final(metrics, lambda tmp: Path(tmp, MODEL_FILE).write_bytes(item["model"]))


def _failure(error: BaseException) -> str:
    """The workers' own error in one line (Ray and Train wrap it)."""
    error = getattr(error, "cause", None) or error
    failures = getattr(error, "worker_failures", None) or {}
    cause = next(iter(failures.values()), error)
    cause = getattr(cause, "cause", None) or cause
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:1000]


def train_data_parallel(
    params: dict[str, Any], rows: ParquetRows, *, metric: str, rounds: int, report_every: int,
    settings: DataParallelSettings, base_model: bytes | None = None,
    storage_path: str | None = None, reporter=None, patience: int | None = None,
    placement_timeout_s: float | None = None,
) -> DataParallelRun:
    """Train one XGBoost candidate data-parallel, from inside a Tune function trial.

    ``params`` are `retrain.candidates.xgb_params` (``nthread`` and ``device`` are set per
    worker from ``settings`` and its GPUs); ``base_model`` is a booster (UBJ bytes) to boost
    on. Reports to Tune every ``report_every`` rounds and at round ``rounds`` as
    `retrain.search.trial._boost` does; returns when the run ends, or at once when Tune stops the
    trial (its Train run is ended then too). Raises `SearchError` when the workers fail.
    Reports go through ``reporter`` (the trial's `retrain.search.TrialReporter`: ``report``
    and ``final``); without one nothing is reported and the final model is only returned.

    ``placement_timeout_s``: when the workers' resources cannot be reserved within that many
    seconds (`_check_placeable`, before Train starts), or no worker has started that many
    seconds after the run began (another trial took the resources in between), raises
    `ClusterError` naming what they ask for.
    A trial that ends before its run (stopped by Tune, failed, timed out) kills its driver
    actor and removes its workers' placement group itself, so their CPUs are free at once
    rather than when Train's own cleaner notices.
    """
    import ray

    session = _tune_session()
    if placement_timeout_s is not None:
        _check_placeable(settings, placement_timeout_s)
    name = f"data-parallel-{uuid.uuid4().hex[:8]}"
    if storage_path is None:
        # the controller runs on the trial's node, so the trial's own folder is reachable
        storage_path = os.path.join(_trial_dir(session), "train")
    driver = ray.remote(_Driver).options(
        num_cpus=0,
        runtime_env={"env_vars": {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}},
    ).remote()
    job = _Job(params=dict(params), metric=metric, rounds=rounds, report_every=report_every,
               rows=rows, nthread=settings.nthread, base_model=base_model, patience=patience)
    done = driver.fit.remote(job, settings, name, storage_path)
    last, final, stopped = _follow(driver, done, session, reporter, rounds, settings,
                                   placement_timeout_s)
    if stopped:
        return DataParallelRun(rounds=last, stopped=True, shard_rows=(),
                               valid_rows=rows.valid_rows)
    try:
        ray.get(done)
    except Exception as exc:
        raise SearchError(
            f"data-parallel training on {settings.num_workers} Ray Train workers failed: "
            f"{_failure(exc)}"
        ) from exc
    if final is None:
        raise SearchError(f"data-parallel training ended at round {last} of {rounds} "
                          "without its final report")
    shards = ray.get(driver.shards.remote())
    return DataParallelRun(
        rounds=last, stopped=False, shard_rows=tuple(shards[r] for r in sorted(shards)),
        valid_rows=rows.valid_rows, fit_seconds=final["trained"], model=final["model"],
    )


def _follow(driver, done, session, reporter, rounds: int, settings: DataParallelSettings,
            placement_timeout_s: float | None) -> tuple[int, dict[str, Any] | None, bool]:
    """Forward the driver actor's reports to Tune until the run ends or Tune stops the
    trial: (the last round reported, the final report, whether Tune stopped it). A trial
    that leaves early ends its Train run here."""
    import ray

    last, final, ended, stopped = 0, None, False, False
    began, placed = time.monotonic(), False
    try:
        while True:
            item = ray.get(driver.next.remote(_POLL_S))
            if item is None:
                if not ray.wait([done], timeout=0)[0]:
                    if _stopping(session):
                        stopped = True
                        break
                    if not placed and placement_timeout_s is not None \
                            and time.monotonic() - began > placement_timeout_s:
                        placed = bool(ray.get(driver.groups.remote()))
                        if not placed:
                            raise ClusterError(_unplaced(settings, placement_timeout_s))
                    continue
                ended = True
                item = ray.get(driver.next.remote(0.0))  # one put just before the end
                if item is None:
                    break
            _report(item, reporter)
            last = item["round"]
            final = item if "model" in item else final
    except ray.exceptions.RayActorError as exc:
        ended = True  # nothing left to kill
        raise SearchError(
            f"the data-parallel trial lost its Ray Train driver actor at round {last} of "
            f"{rounds} (its node died?): {_failure(exc)}; Tune retries the trial "
            "(search.max_failures)"
        ) from exc
    finally:
        # Tune stopped the trial (seen here, or raised by tune.report): end its Train run now
        if not ended:
            _end(driver)
    return last, final, stopped


def _end(driver) -> None:
    """Kill a trial's driver actor (which ends its Train run) and remove its workers'
    placement group: Train's own cleaner removes it only when it notices the controller
    is gone, which took over 30 s on a loaded machine, and a search with no CPUs left
    waited that long or for ever for its next trial's workers."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    try:
        groups = ray.get(driver.groups.remote(), timeout=1.0)
    except Exception:  # the actor is gone or busy: Train's cleaner is left to do it
        groups = []
    ray.kill(driver)
    for group in groups:
        if not group:
            continue
        try:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group))))
        except Exception:  # already removed (by Train's cleaner)
            continue


def _trial_dir(session) -> str:
    if session is not None:
        from ray import tune

        return tune.get_context().get_trial_dir()
    return tempfile.mkdtemp(prefix="retrain-data-parallel-")
