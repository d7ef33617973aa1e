"""The trial's driver actor, which runs Ray Train's XGBoost trainer and hands rank 0's reports to
the trial, and the check that the workers' bundles can be placed at all.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from retrain.distributed.decision import DataParallelSettings
from retrain.distributed.workers import _data_config, _datasets, _Job, _worker
from retrain.errors import ClusterError

if TYPE_CHECKING:

    pass


@dataclass(frozen=True)
class DataParallelRun:
    """What a data-parallel trial did (its reports went to Tune as it went)."""

    #: the last round reported; ``rounds`` when it finished
    rounds: int
    #: Tune stopped it (ASHA) before its last round
    stopped: bool
    #: training rows each worker received, by rank (empty when stopped before all said)
    shard_rows: tuple[int, ...]
    valid_rows: int
    #: seconds from the workers' start (ingest included) to the last round, without reporting
    fit_seconds: float | None = None
    #: the final booster as UBJ bytes; None when stopped
    model: bytes | None = field(default=None, repr=False)


class _Driver:
    """The Train driver of one data-parallel trial (an async Ray actor), and the relay of
    rank 0's reports to the trial.

    An actor of its own rather than a thread of the trial, for two reasons. Killing it ends
    the Train run at once (Train's controller, its workers and their placement group belong
    to it), which is how a trial that Tune stopped frees its workers without waiting for
    their next report. And its runtime environment carries ``RAY_ADDRESS``, which Train's
    controller inherits: Train's placement-group cleaner looks the controller up through the
    state API, and without an address that lookup may pick another Ray instance on the same
    host, not find the controller there and remove the workers' placement group mid-run (it
    did, on a test host running several clusters).
    """

    def __init__(self) -> None:
        self._items: asyncio.Queue = asyncio.Queue()
        self._shards: dict[int, int] = {}
        self._groups: set[str] = set()

    async def placed(self, group: str | None) -> None:
        """A worker started, in placement group ``group`` (hex id; None: none)."""
        self._groups.add(group or "")

    async def groups(self) -> list[str]:
        return sorted(self._groups)

    async def put(self, item: dict[str, Any]) -> None:
        self._items.put_nowait(item)

    async def next(self, timeout: float) -> dict[str, Any] | None:
        if not self._items.empty():
            return self._items.get_nowait()
        try:
            return await asyncio.wait_for(self._items.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def shard(self, rank: int, rows: int) -> None:
        self._shards[rank] = rows

    async def shards(self) -> dict[int, int]:
        return dict(self._shards)

    async def fit(self, job: _Job, settings: DataParallelSettings, name: str,
                  storage_path: str) -> None:
        import ray

        job = replace(job, driver=ray.get_runtime_context().current_actor)
        # trainer.fit blocks until the run ends: off the event loop, which relays reports
        await asyncio.get_running_loop().run_in_executor(
            None, _run_trainer, job, settings, name, storage_path)


def _run_trainer(job: _Job, settings: DataParallelSettings, name: str,
                 storage_path: str) -> None:
    from ray.data import DataContext
    from ray.train import RunConfig, ScalingConfig
    from ray.train.xgboost import XGBoostTrainer

    # the trainer hands this process's DataContext to its workers; a progress bar per read
    # would flood the trial's log
    DataContext.get_current().enable_progress_bars = False
    per_worker = _per_worker(settings)
    XGBoostTrainer(
        _worker,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(num_workers=settings.num_workers,
                                     use_gpu=settings.gpus_per_worker > 0,
                                     resources_per_worker=per_worker),
        # Train keeps only its run state there (the model travels by the driver actor)
        run_config=RunConfig(name=name, storage_path=storage_path),
        datasets=_datasets(job.rows, settings),
        dataset_config=_data_config(),
    ).fit()


def _per_worker(settings: DataParallelSettings) -> dict[str, float]:
    per_worker = {"CPU": settings.cpus_per_worker}
    if settings.gpus_per_worker > 0:
        per_worker["GPU"] = settings.gpus_per_worker
    return per_worker


def _check_placeable(settings: DataParallelSettings, timeout_s: float) -> None:
    """Reserve the workers' resources once, as Train's placement group would (PACK), and free
    them again; raise `ClusterError` when that takes longer than ``timeout_s``.

    Train creates its workers' placement group in its controller actor. A group created by
    an actor outlives it for as long as the job lives, and Train's detached cleaner removes
    only groups that were placed: a trial that gave up on a group still pending, and killed
    its Train run, left that group to grab the CPUs the moment they were free, for the rest
    of the job (measured: a whole test session's later searches could place nothing). This
    group is the trial's own, so whatever happens it is removed here.
    """
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group([_per_worker(settings)] * settings.num_workers, strategy="PACK")
    try:
        placed = group.wait(timeout_seconds=timeout_s)
    finally:
        remove_placement_group(group)
    if not placed:
        raise ClusterError(_unplaced(settings, timeout_s))


def _unplaced(settings: DataParallelSettings, timeout_s: float) -> str:
    import ray

    from retrain.trial_report import UNPLACED

    each = f"CPU {settings.cpus_per_worker:g}" + (
        f", GPU {settings.gpus_per_worker:g}" if settings.gpus_per_worker else "")
    free, total = ray.available_resources(), ray.cluster_resources()
    return (
        f"the data-parallel trial's {settings.num_workers} workers ({each} each): "
        f"{UNPLACED} {timeout_s:g} s (resources.placement_timeout_s); the "
        f"cluster has CPU {free.get('CPU', 0):g} free of {total.get('CPU', 0):g}. Other "
        "work (or trials that were not released) holds the rest: use fewer or smaller "
        "workers (search.data_parallel), add nodes, or raise resources.placement_timeout_s"
    )
