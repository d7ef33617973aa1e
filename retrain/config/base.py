"""What every section shares (unknown keys refused), the metrics each task may use, and the
project, data and task sections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from retrain.errors import InvalidValueError

#: metric name -> True when larger is better
METRIC_DIRECTIONS: dict[str, bool] = {
    "auc": True,
    "accuracy": True,
    "logloss": False,
    "rmse": False,
    "mae": False,
}
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("auc", "logloss", "accuracy"),
    "regression": ("rmse", "mae"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectConfig(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    #: where the MLflow store, search results and reports live (default: .retrain beside the YAML)
    workdir: Path = Path(".retrain")
    #: the append-only ledger of decisions, alias moves, traffic steps and rollbacks
    #: (SQLite; default: <workdir>/ledger.db)
    ledger: Path | None = None


class DataConfig(_Section):
    #: root of a hive-partitioned Parquet dataset (``<partition_column>=<value>/*.parquet``)
    path: Path
    partition_column: str = Field(min_length=1)
    target: str = Field(min_length=1)
    #: model inputs; empty means every column except target, partition column and ``exclude``
    features: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    #: columns treated as categorical; string columns are categorical anyway
    categorical: tuple[str, ...] = ()
    #: the newest N partitions form the holdout on which champion and challenger are compared
    holdout_partitions: int = Field(default=1, ge=1)
    #: the newest share of the holdout partitions' rows judges champion and challengers; the
    #: older rest trains (as the newest training rows). After an abrupt change the holdout
    #: partition holds the only rows of the new regime: challengers must learn from some of
    #: them to show they are better on the rest. 1: the whole partitions judge (data-parallel
    #: cycles always judge on whole partitions)
    holdout_share: float = Field(default=0.5, gt=0.0, le=1.0)
    #: share of the (time-ordered) training rows kept for validation during the search
    validation_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)
    min_rows_per_partition: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _target_not_a_feature(self) -> DataConfig:
        clash = {self.target, self.partition_column} & set(self.features)
        if clash:
            raise InvalidValueError(
                f"features must not contain the target or the partition column, but got "
                f"{sorted(clash)}; remove them from data.features"
            )
        return self


class TaskConfig(_Section):
    type: Literal["classification", "regression"]
    metric: str | None = None

    @field_validator("metric")
    @classmethod
    def _metric_fits_task(cls, metric: str | None, info: ValidationInfo) -> str | None:
        task = info.data.get("type")  # absent when the type itself is invalid
        allowed = TASK_METRICS.get(task, ()) if isinstance(task, str) else ()
        if metric is not None and task is not None and metric not in allowed:
            raise InvalidValueError(
                f"metric {metric!r} does not fit task type {task!r}; use one of {list(allowed)}"
            )
        return metric

    @property
    def primary_metric(self) -> str:
        return self.metric or TASK_METRICS[self.type][0]

    @property
    def greater_is_better(self) -> bool:
        return METRIC_DIRECTIONS[self.primary_metric]
