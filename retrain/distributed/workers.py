"""What each Ray Train worker runs: its shard of the training rows and all validation rows read
through Ray Data, then XGBoost's collective training with reports from rank 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from retrain.distributed.decision import DataParallelSettings
from retrain.distributed.rows import ParquetRows, RowRange, frame_rows, read_ranges, read_tasks
from retrain.errors import SearchError

if TYPE_CHECKING:
    import pyarrow as pa


#: the names of the two datasets handed to Ray Train
TRAIN, VALID = "train", "valid"
#: rows one read task reads at most (a Ray Data block each)
_ROWS_PER_READ = 1_000_000


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
    dtrain, dvalid = _worker_matrices(job, rank)
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    params = {**job.params, "nthread": job.nthread, "device": device}
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


def _worker_matrices(job: _Job, rank: int):
    """This worker's training matrix (its shard) and validation matrix (every row)."""
    import ray
    import ray.train
    import xgboost as xgb

    valid = _shard_table(ray.train.get_dataset_shard(VALID))
    if valid is None:  # every worker is handed every validation row
        raise SearchError("a data-parallel worker was handed no validation rows")
    # a worker handed no training rows still joins the collective with an empty matrix
    table = _shard_table(ray.train.get_dataset_shard(TRAIN))
    table = valid.slice(0, 0) if table is None else table
    ray.get(job.driver.shard.remote(rank, table.num_rows))
    x, y = frame_rows(table, job.rows)
    valid_x, valid_y = frame_rows(valid, job.rows)
    del table, valid
    return (xgb.DMatrix(x, y, enable_categorical=True, nthread=job.nthread),
            xgb.DMatrix(valid_x, valid_y, enable_categorical=True, nthread=job.nthread))
