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

from retrain.distributed.decision import DataParallelSettings, cpus_needed, use_data_parallel
from retrain.distributed.rows import (
    FileRows,
    ParquetRows,
    RowRange,
    frame_rows,
    parquet_rows,
    plan_rows,
    read_ranges,
    read_tasks,
)
from retrain.distributed.trial import train_data_parallel

__all__ = [
    "DataParallelSettings",
    "FileRows",
    "ParquetRows",
    "RowRange",
    "cpus_needed",
    "frame_rows",
    "parquet_rows",
    "plan_rows",
    "read_ranges",
    "read_tasks",
    "train_data_parallel",
    "use_data_parallel",
]
