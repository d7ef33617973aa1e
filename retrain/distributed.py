"""Data-parallel XGBoost trials: Ray Train's XGBoost trainer over Ray Data shards of the
training Parquet files, for data that outgrows one trial process.

A trial that trains data-parallel is still one Tune trial with the trial interface of
`retrain.search`: the same XGBoost parameters, a report every ``report_every`` rounds with the
same metric keys (so ASHA ranks and stops it like any other), and a final checkpoint holding
``model.ubj``. Only where the rows live changes:

    Tune trial                 _Driver actor               Ray Train workers (rabit collective)
    train_data_parallel ──► trainer.fit() ──────────► rank r: its shard of "train"
          ▲                     │  ▲                          + all of "valid"
          └── tune.report ◄─────┘  └── every report_every rounds, rank 0: metric (+ model)

- Rows: the same training partitions and the same time cut as `retrain.data.load_split`.
  `plan_rows` turns the cut into row ranges of the Parquet files, and Ray Data read tasks
  read them (only the row groups they touch; see `_dataset` for why not `read_parquet`).
  Features and labels are prepared on the workers with the split's `FeatureSpec` and
  `retrain.data.target_values`, so both paths build the same features and categories.
- Shards: the training rows are split across the workers without dropping any (Train's
  default split equalises row counts by dropping rows); every worker holds all validation
  rows. XGBoost's distributed metrics sum per-worker statistics, so copies on every worker
  give exactly the single-process score, while split validation rows would give an
  approximate AUC (it averages per-shard AUCs).
- Reports: Train's `TuneReportCallback` forwards metrics only (a checkpoint becomes a path
  string), so rank 0 sends its reports to the trial's `_Driver` actor instead and the trial
  reports them to Tune itself, the final one with a real Tune checkpoint. When Tune stops
  the trial (ASHA), the trial kills its driver actor, which ends the Train run at once, and
  returns within Tune's 2 s limit for reusing the trial's actor.
- Resources: the trial itself only waits (give it a small CPU fraction; the driver actor
  reserves none); each worker reserves ``cpus_per_worker`` (and ``gpus_per_worker``), and
  each read task ``cpus_per_read_task``. Leave CPUs free for the reads: on a cluster whose
  CPUs are all held by workers the reads never start and the trial hangs.

The decision (`use_data_parallel`) and the row plan (`plan_rows`) are pure; Ray is imported
only by the functions that run it.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrain.errors import (
    ClusterError,
    ConfigError,
    DataError,
    InvalidValueError,
    RetrainWarning,
    SearchError,
)

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from retrain.config import DataConfig, DataParallelConfig
    from retrain.data import Partition, Split
    from serve.features import FeatureSpec

#: the names of the two datasets handed to Ray Train
TRAIN, VALID = "train", "valid"
#: how often the trial asks its driver actor for reports and checks whether Tune stopped it;
#: Tune waits 2 s (TUNE_FUNCTION_THREAD_TIMEOUT_S) for a stopped trial before it gives up
#: reusing the trial's actor
_POLL_S = 0.5
#: rows one read task reads at most (a Ray Data block each)
_ROWS_PER_READ = 1_000_000


# --------------------------------------------------------------------------- decision (pure)


def cpus_needed(section: DataParallelConfig, *, trial_cpus: float = 0.0) -> float:
    """CPUs one data-parallel trial holds at once: its workers, one read task, the trial."""
    return section.num_workers * section.cpus_per_worker + section.cpus_per_read_task \
        + trial_cpus


def use_data_parallel(
    section: DataParallelConfig, n_rows: int, cluster: Mapping[str, float], *,
    trial_cpus: float = 0.0,
) -> tuple[bool, str]:
    """Whether XGBoost trials train data-parallel, and why, for ``n_rows`` training rows on a
    cluster with ``cluster`` resources (`ray.cluster_resources()`); ``trial_cpus`` is what
    the trial itself (the Train driver) reserves.

    ``enabled: true`` on a cluster that cannot hold one trial's workers raises
    `ClusterError` (a search would wait forever); ``auto`` then trains in one process.
    """
    enabled = section.enabled
    if enabled is False:
        return False, "search.data_parallel.enabled is false"
    need, have = cpus_needed(section, trial_cpus=trial_cpus), float(cluster.get("CPU", 0))
    fits = need <= have
    shape = (f"{section.num_workers} workers x {section.cpus_per_worker:g} CPU + "
             f"{section.cpus_per_read_task:g} for a read task + {trial_cpus:g} for the trial "
             f"= {need:g} CPUs, the cluster has {have:g}")
    if enabled is True:
        if not fits:
            raise ClusterError(
                f"search.data_parallel needs {shape}; lower search.data_parallel.num_workers "
                "or cpus_per_worker, or add nodes"
            )
        return True, f"search.data_parallel.enabled is true ({section.num_workers} workers)"
    if n_rows < section.min_rows:
        return False, (f"{n_rows} training rows, fewer than "
                       f"search.data_parallel.min_rows={section.min_rows}")
    if not fits:
        return False, (f"{n_rows} training rows reach search.data_parallel.min_rows="
                       f"{section.min_rows}, but one trial would need {shape}: training in "
                       "one process")
    return True, (f"{n_rows} training rows reach search.data_parallel.min_rows="
                  f"{section.min_rows} ({section.num_workers} workers)")


@dataclass(frozen=True)
class DataParallelSettings:
    """How one data-parallel trial runs: its Ray Train workers and Ray Data reads."""

    num_workers: int
    cpus_per_worker: float
    gpus_per_worker: float = 0.0
    cpus_per_read_task: float = 0.25

    def __post_init__(self) -> None:
        if self.num_workers < 1 or self.cpus_per_worker <= 0 or self.cpus_per_read_task <= 0 \
                or self.gpus_per_worker < 0:
            raise ConfigError(f"data-parallel settings must be positive, but got {self}")
        if self.num_workers > 1 and 0 < self.gpus_per_worker < 1:
            raise ConfigError(
                f"{self.num_workers} workers cannot share GPUs (XGBoost's collective refuses "
                f"two processes on one CUDA device), but got gpus_per_worker="
                f"{self.gpus_per_worker:g}; use 1 or more, or 0"
            )

    @property
    def nthread(self) -> int:
        """XGBoost threads per worker: its CPUs, at least one."""
        return max(1, round(self.cpus_per_worker))

    @classmethod
    def of(cls, section: DataParallelConfig, cluster: Mapping[str, float]) -> DataParallelSettings:
        """From the config section; GPUs asked for on a cluster without any fall back to CPU
        with a warning (as `retrain.search.trial_resources` does for trials)."""
        gpus = section.gpus_per_worker
        have = float(cluster.get("GPU", 0))
        if gpus > 0 and have == 0:
            warnings.warn(
                f"search.data_parallel.gpus_per_worker={gpus:g} but the cluster has no GPU: "
                "data-parallel workers train on CPUs", RetrainWarning, stacklevel=2,
            )
            gpus = 0.0
        elif gpus * section.num_workers > have:
            raise ClusterError(
                f"search.data_parallel asks for {section.num_workers} workers x {gpus:g} GPU "
                f"but the cluster has {have:g} GPUs; use fewer workers or add GPU nodes"
            )
        return cls(num_workers=section.num_workers, cpus_per_worker=section.cpus_per_worker,
                   gpus_per_worker=gpus, cpus_per_read_task=section.cpus_per_read_task)


# --------------------------------------------------------------------------- row plan (pure)


@dataclass(frozen=True)
class FileRows:
    """One Parquet file of a partition, in the order `retrain.data.load_split` reads it."""

    partition: str
    path: str
    rows: int


@dataclass(frozen=True)
class RowRange:
    """Rows ``[start, stop)`` of one Parquet file that holds ``file_rows`` rows."""

    path: str
    start: int
    stop: int
    file_rows: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop == self.file_rows


def plan_rows(
    files: Sequence[FileRows], n_train: int, *, skip: Collection[str] = (),
) -> tuple[tuple[RowRange, ...], tuple[RowRange, ...]]:
    """The training and validation row ranges of time-ordered ``files``.

    The first ``n_train`` rows (in file order) train and the rest validate, as in
    `retrain.data.load_split`. Training rows of partitions in ``skip`` are left out (a warm
    start boosts only on partitions its champion has not seen); validation keeps every row,
    so all trials are ranked on the same rows.
    """
    total = sum(f.rows for f in files)
    if not 0 < n_train < total:
        raise InvalidValueError(f"n_train={n_train} must lie strictly between 0 and {total} rows")
    train: list[RowRange] = []
    valid: list[RowRange] = []
    offset = 0
    for f in files:
        if f.rows == 0:
            continue
        low, high = offset, offset + f.rows
        offset = high
        if low < n_train and f.partition not in skip:
            train.append(RowRange(f.path, 0, min(high, n_train) - low, f.rows))
        if high > n_train:
            valid.append(RowRange(f.path, max(low, n_train) - low, f.rows, f.rows))
    if not train:
        raise DataError(
            f"every training row belongs to a skipped partition ({sorted(skip)}); there is "
            "nothing to train on"
        )
    return tuple(train), tuple(valid)


@dataclass(frozen=True)
class ParquetRows:
    """What a data-parallel trial reads, and how it turns rows into model input."""

    train: tuple[RowRange, ...]
    valid: tuple[RowRange, ...]
    spec: FeatureSpec
    #: the data section: the target column and the messages of `retrain.data.target_values`
    data: DataConfig = field(repr=False)
    task: str

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.spec.names, self.data.target)

    @property
    def train_rows(self) -> int:
        return sum(r.rows for r in self.train)

    @property
    def valid_rows(self) -> int:
        return sum(r.rows for r in self.valid)


def file_rows(partitions: Sequence[Partition]) -> tuple[FileRows, ...]:
    """Each file of ``partitions`` with its row count (from the Parquet footer only)."""
    import pyarrow.parquet as pq

    return tuple(FileRows(p.value, path, pq.read_metadata(path).num_rows)
                 for p in partitions for path in p.files)


def parquet_rows(split: Split, data: DataConfig, task: str, *,
                 skip: Collection[str] = ()) -> ParquetRows:
    """The row plan of ``split``'s training partitions (call it on the driver, once per
    search, and hand the result to the trials). ``skip`` names partitions whose training
    rows are left out (a warm start's ``seen`` partitions with ``rows: new``)."""
    files = file_rows(split.train_partitions)
    loaded = split.train_rows + split.valid_rows
    found = sum(f.rows for f in files)
    if found != loaded:
        raise DataError(
            f"the training partitions' files hold {found} rows but held {loaded} when the "
            f"cycle read them; the data under {data.path} changed during the cycle: run it "
            "again"
        )
    train, valid = plan_rows(files, split.train_rows, skip=skip)
    return ParquetRows(train=train, valid=valid, spec=split.spec, data=data, task=task)


def read_ranges(ranges: Sequence[RowRange], columns: Sequence[str]) -> pa.Table:
    """The rows of ``ranges`` as one Arrow table, reading only the row groups they touch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for r in ranges:
        source = pq.ParquetFile(r.path)
        groups, first, offset = [], None, 0
        for i in range(source.metadata.num_row_groups):
            size = source.metadata.row_group(i).num_rows
            if offset < r.stop and offset + size > r.start:
                groups.append(i)
                first = offset if first is None else first
            offset += size
        table = source.read_row_groups(groups, columns=list(columns))
        tables.append(table.slice(r.start - (first or 0), r.rows))
    return pa.concat_tables(tables, promote_options="permissive")


def read_tasks(ranges: Sequence[RowRange], *, max_rows: int,
               min_tasks: int = 1) -> tuple[RowRange, ...]:
    """``ranges`` cut into read tasks of at most ``max_rows`` rows, and into at least
    ``min_tasks`` (as far as rows allow), so that a few big files still give every worker a
    share: Train splits a dataset between workers block by block, one block per task here."""
    tasks: list[RowRange] = []
    for r in ranges:
        parts = -(-r.rows // max_rows)
        bounds = [r.start + r.rows * i // parts for i in range(parts + 1)]
        tasks += [RowRange(r.path, a, b, r.file_rows) for a, b in pairwise(bounds)]
    while tasks and len(tasks) < min_tasks:
        big = max(range(len(tasks)), key=lambda i: tasks[i].rows)
        r = tasks[big]
        if r.rows < 2:
            break
        middle = r.start + r.rows // 2
        tasks[big:big + 1] = [RowRange(r.path, r.start, middle, r.file_rows),
                              RowRange(r.path, middle, r.stop, r.file_rows)]
    return tuple(tasks)


def frame_rows(table: pa.Table, rows: ParquetRows) -> tuple[pd.DataFrame, Any]:
    """Model input and labels from raw rows, exactly as `retrain.data.load_split` builds
    them: Arrow to pandas, the split's feature spec, the same label checks."""
    from retrain.data import target_values
    from serve.schemas import InvalidInput

    raw = table.to_pandas()
    try:
        x = rows.spec.frame(raw)
    except InvalidInput as exc:
        raise DataError(f"the data does not fit the features: {exc}") from exc
    return x, target_values(rows.data, rows.task, raw[rows.data.target])


# --------------------------------------------------------------------------- Ray adapter


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


@dataclass(frozen=True)
class _Job:
    """Everything a Train worker needs (sent once, with the trainer)."""

    params: dict[str, Any]
    metric: str
    rounds: int
    report_every: int
    rows: ParquetRows
    nthread: int
    base_model: bytes | None
    #: rounds without a better validation score after which training stops (None: never)
    patience: int | None = None
    #: the `_Driver` actor that rank 0 reports to (set by the driver itself)
    driver: Any = None


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


def _datasets(rows: ParquetRows, settings: DataParallelSettings) -> dict[str, Any]:
    return {TRAIN: _dataset(rows.train, rows.columns, settings, 2 * settings.num_workers),
            VALID: _dataset(rows.valid, rows.columns, settings, 1)}


def _dataset(ranges: tuple[RowRange, ...], columns: tuple[str, ...],
             settings: DataParallelSettings, min_tasks: int):
    """A lazy Ray Data dataset of ``ranges``, one read task per `read_tasks` entry, each
    reserving ``cpus_per_read_task``; lazy: the reads run when the workers iterate.

    Not `ray.data.read_parquet`: in Ray 2.60 it lists files in a stage of its own whose
    tasks always reserve a whole CPU (its ``num_cpus`` sets only the read stage), and on a
    cluster whose free CPUs are fractions, held by the trial and the workers, that stage
    never starts and the trial hangs (measured); it also cannot read the part of a file
    that the time cut runs through.
    """
    import ray.data

    items = [{"path": r.path, "start": r.start, "stop": r.stop, "file_rows": r.file_rows}
             for r in read_tasks(ranges, max_rows=_ROWS_PER_READ, min_tasks=min_tasks)]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _read_batch, fn_kwargs={"columns": columns}, batch_size=1, batch_format="pyarrow",
        num_cpus=settings.cpus_per_read_task,
    )


def _read_batch(batch: pa.Table, columns: tuple[str, ...]) -> pa.Table:
    return read_ranges([RowRange(**row) for row in batch.to_pylist()], columns)


def _data_config():
    """Train's DataConfig, but splitting only "train", and without dropping rows: Train's
    own split hands every worker exactly the same number of rows by dropping the rest."""
    from ray.train import DataConfig

    class SplitTrainKeepAll(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            if TRAIN not in datasets:
                return super().configure(datasets, world_size, worker_handles,
                                         worker_node_ids, **kwargs)
            ds = datasets[TRAIN]
            ds = ds.copy(ds)
            ds.context.execution_options = self.default_ingest_options()
            hints = worker_node_ids if self._enable_shard_locality else None
            splits = ds.streaming_split(world_size, equal=False, locality_hints=hints)
            return [{TRAIN: split} for split in splits]

    return SplitTrainKeepAll(datasets_to_split=[TRAIN])


def _shard_table(shard) -> pa.Table | None:
    """A worker's rows of one dataset as one table; None when it was handed none."""
    import pyarrow as pa

    tables = list(shard.iter_batches(batch_size=None, batch_format="pyarrow"))
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: its shard of the training rows, every validation row, and
    XGBoost in the collective Ray's XGBoost backend set up."""
    import ray
    import ray.train
    import xgboost as xgb

    from retrain.candidates import XGB_METRICS
    from retrain.config import METRIC_DIRECTIONS
    from retrain.trial_report import BestRound

    job: _Job = config["job"]
    start = time.perf_counter()
    # placed: the trial stops waiting for its workers, and can remove their group itself
    group = ray.util.get_current_placement_group()
    ray.get(job.driver.placed.remote(None if group is None else group.id.hex()))
    rank = ray.train.get_context().get_world_rank()
    valid = _shard_table(ray.train.get_dataset_shard(VALID))
    # a worker handed no training rows still joins the collective with an empty matrix
    table = _shard_table(ray.train.get_dataset_shard(TRAIN))
    table = valid.slice(0, 0) if table is None else table
    ray.get(job.driver.shard.remote(rank, table.num_rows))
    x, y = frame_rows(table, job.rows)
    valid_x, valid_y = frame_rows(valid, job.rows)
    del table, valid
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    params = {**job.params, "nthread": job.nthread, "device": device}
    dtrain = xgb.DMatrix(x, y, enable_categorical=True, nthread=job.nthread)
    dvalid = xgb.DMatrix(valid_x, valid_y, enable_categorical=True, nthread=job.nthread)
    del x, y, valid_x, valid_y
    convert = XGB_METRICS[job.metric][1]
    total, every = job.rounds, job.report_every
    reporting = [0.0]
    base = None if job.base_model is None else xgb.Booster(model_file=bytearray(job.base_model))
    base_rounds = 0 if base is None else base.num_boosted_rounds()
    # every worker sees the same reduced metric, so every worker stops at the same round
    tracker = BestRound(greater=METRIC_DIRECTIONS[job.metric], patience=job.patience)

    class Report(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log) -> bool:
            done = epoch + 1  # counts this call's rounds, also when continuing a booster
            if done % every and done != total:
                return False
            # every worker evaluates: the metric is reduced over the collective
            line = model.eval(dvalid, "valid", epoch)
            value = float(convert(float(line.rsplit(":", 1)[1])))
            stop = tracker.add(done, value) or done == total
            if rank == 0:
                began = time.perf_counter()
                item = {"round": done, "score": value,
                        "gpu": device == "cuda", "trained": began - start - reporting[0]}
                if stop:
                    best, score = tracker.kept(done, value)
                    kept = model[: base_rounds + best] if best < done else model
                    item.update(best_round=best, score=score, final=True,
                                model=bytes(kept.save_raw("ubj")))
                ray.get(job.driver.put.remote(item))
                reporting[0] += time.perf_counter() - began
            return stop

    xgb.train(params, dtrain, num_boost_round=total, callbacks=[Report()],
              verbose_eval=False, xgb_model=base)


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
               rows=rows, nthread=settings.nthread, base_model=base_model,
               patience=patience)
    done = driver.fit.remote(job, settings, name, storage_path)
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


def _trial_dir(session) -> str:
    if session is not None:
        from ray import tune

        return tune.get_context().get_trial_dir()
    return tempfile.mkdtemp(prefix="retrain-data-parallel-")
