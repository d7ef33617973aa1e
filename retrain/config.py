"""The project configuration: one YAML file, validated on load.

This is the only module that reads YAML or environment variables. Everything downstream takes
the frozen `Config` object. Relative paths are resolved against the directory of the YAML file,
so a project folder can be moved (or uploaded as a Ray job's working dir) as a whole.
"""

from __future__ import annotations

import collections.abc
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from retrain.errors import ConfigError, InvalidValueError

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
        allowed = TASK_METRICS.get(task, ())
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


class ParamRange(_Section):
    """One searched hyperparameter: a numeric range or a list of choices."""

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> ParamRange:
        if self.type == "categorical":
            if not self.choices:
                raise InvalidValueError("a categorical parameter needs a non-empty 'choices' list")
            return self
        if self.low is None or self.high is None:
            raise InvalidValueError(f"a {self.type} parameter needs both 'low' and 'high'")
        if self.low >= self.high:
            raise InvalidValueError(
                f"'low' must be below 'high', but got low={self.low}, high={self.high}"
            )
        if self.log and self.low <= 0:
            raise InvalidValueError(f"a log-scaled range needs low > 0, but got low={self.low}")
        return self


def _scalar(value: Any) -> bool | int | float | str:
    if not isinstance(value, (bool, int, float, str)):
        raise InvalidValueError(
            "expected a range like {type: float, low: 0.1, high: 1} or a fixed number, "
            f"string or boolean, but got {value!r}"
        )
    return value


def _space_kind(value: Any) -> str:
    return "range" if isinstance(value, (dict, ParamRange)) else "fixed"


# A mapping is a searched range, anything else a fixed value; the discriminator keeps the
# error of a bad range to the range's own message instead of one line per union member.
SpaceEntry = Annotated[
    Annotated[ParamRange, Tag("range")]
    | Annotated[Annotated[Any, AfterValidator(_scalar)], Tag("fixed")],
    Discriminator(_space_kind),
]
_UNION_TAGS = {"range", "fixed"}


def _default_space() -> dict[str, SpaceEntry]:
    return {
        "max_depth": ParamRange(type="int", low=3, high=10),
        "eta": ParamRange(type="float", low=0.02, high=0.3, log=True),
        "min_child_weight": ParamRange(type="float", low=1.0, high=20.0, log=True),
        "subsample": ParamRange(type="float", low=0.6, high=1.0),
        "colsample_bytree": ParamRange(type="float", low=0.6, high=1.0),
        "lambda": ParamRange(type="float", low=0.1, high=10.0, log=True),
    }


class AshaConfig(_Section):
    #: measured in reports (one report every ``report_every`` boosting rounds)
    grace_period: int = Field(default=2, ge=1)
    reduction_factor: float = Field(default=2.0, gt=1.0)


def _default_warm_start_space() -> dict[str, SpaceEntry]:
    # the added trees correct the champion: small steps, modest depth
    return {
        "eta": ParamRange(type="float", low=0.01, high=0.1, log=True),
        "max_depth": ParamRange(type="int", low=3, high=8),
        "subsample": ParamRange(type="float", low=0.6, high=1.0),
        "lambda": ParamRange(type="float", low=0.1, high=10.0, log=True),
    }


def _default_hgb_space() -> dict[str, SpaceEntry]:
    return {
        "learning_rate": ParamRange(type="float", low=0.02, high=0.3, log=True),
        "max_leaf_nodes": ParamRange(type="int", low=15, high=63),
        "min_samples_leaf": ParamRange(type="int", low=10, high=100, log=True),
        "l2_regularization": ParamRange(type="float", low=0.001, high=10.0, log=True),
        "max_iter": 100,
    }


def _default_linear_space() -> dict[str, SpaceEntry]:
    return {"alpha": ParamRange(type="float", low=0.0001, high=10.0, log=True)}


class XGBoostFamilyConfig(_Section):
    """XGBoost trained from scratch; its space is ``search.space``."""

    enabled: bool = True


class WarmStartFamilyConfig(_Section):
    """XGBoost continuing the champion's booster on this cycle's training data."""

    enabled: bool = False
    #: the most rounds added to the champion's trees (counted from the warm start; early
    #: stopping as in ``search.early_stopping_rounds``)
    num_boost_round: int = Field(default=100, ge=1)
    #: new: boost on only the training rows of partitions the champion did not train on
    #: (continual learning: its cost follows the new data, not the window); new rows that all
    #: fall into the validation share (data.validation_fraction) leave nothing to boost on,
    #: and the family sits out saying so. all: every training row, as from-scratch trials use
    rows: Literal["new", "all"] = "new"
    #: parameters of the added trees; objective and metric stay the champion's
    space: dict[str, SpaceEntry] = Field(default_factory=_default_warm_start_space)


def _default_window_space() -> dict[str, SpaceEntry]:
    return {
        # the newest k training partitions (more than there are: all of them) ...
        "recent_partitions": ParamRange(type="int", low=1, high=12),
        # ... each row weighted 0.5 ** (its partition's age / half_life), age 0 the newest
        "half_life": ParamRange(type="float", low=0.5, high=24.0, log=True),
        "max_depth": ParamRange(type="int", low=4, high=10),
        "eta": ParamRange(type="float", low=0.03, high=0.3, log=True),
        "min_child_weight": ParamRange(type="float", low=1.0, high=20.0, log=True),
    }


class WindowFamilyConfig(_Section):
    """XGBoost from scratch on a training window chosen per cycle by evidence: the newest
    ``recent_partitions`` partitions, rows weighted by recency with a ``half_life`` (in
    partitions). After a concept drift the old rows mislead; on stable data all rows help:
    the search and the holdout decide, cycle by cycle."""

    enabled: bool = True
    space: dict[str, SpaceEntry] = Field(default_factory=_default_window_space)


class HistGradientBoostingFamilyConfig(_Section):
    """scikit-learn HistGradientBoosting{Classifier,Regressor}; categoricals natively."""

    enabled: bool = False
    space: dict[str, SpaceEntry] = Field(default_factory=_default_hgb_space)


class LinearFamilyConfig(_Section):
    """Impute + scale numerics, one-hot categoricals, then LogisticRegression (classification,
    C = 1 / alpha) or Ridge (regression); ``alpha`` is the regularisation strength."""

    enabled: bool = False
    space: dict[str, SpaceEntry] = Field(default_factory=_default_linear_space)


class FamiliesConfig(_Section):
    """Candidate families searched together; ``search.num_samples`` is shared among the
    active ones in turn, and the evaluator picks between them on the holdout."""

    xgboost: XGBoostFamilyConfig = XGBoostFamilyConfig()
    xgboost_window: WindowFamilyConfig = WindowFamilyConfig()
    xgboost_warm_start: WarmStartFamilyConfig = WarmStartFamilyConfig()
    hist_gradient_boosting: HistGradientBoostingFamilyConfig = (
        HistGradientBoostingFamilyConfig()
    )
    linear: LinearFamilyConfig = LinearFamilyConfig()

    @model_validator(mode="after")
    def _one_from_scratch(self) -> FamiliesConfig:
        # the first cycle has no champion to warm-start from
        if not (self.xgboost.enabled or self.hist_gradient_boosting.enabled
                or self.linear.enabled):
            raise InvalidValueError(
                "no family that trains from scratch is enabled; enable xgboost, "
                "hist_gradient_boosting or linear (xgboost_warm_start needs a champion first)"
            )
        return self


class DataParallelConfig(_Section):
    """XGBoost trials that train data-parallel: Ray Train's XGBoost trainer over Ray Data
    shards of the training Parquet files, for data that outgrows one trial process (see
    `retrain.distributed`). scikit-learn families always fit in one process."""

    #: auto: when the training rows reach ``min_rows`` and the cluster holds one trial's
    #: workers; true: always (an error on a cluster too small for the workers); false: never
    enabled: Literal["auto"] | bool = "auto"
    num_workers: int = Field(default=2, ge=1)
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=0.0, ge=0)
    #: training rows from which ``auto`` trains data-parallel (below it one process is faster)
    min_rows: int = Field(default=20_000_000, ge=1)
    #: CPUs each Ray Data read task reserves; workers must leave at least this much free
    cpus_per_read_task: float = Field(default=0.25, gt=0)

    @field_validator("enabled", mode="before")
    @classmethod
    def _auto_or_bool(cls, value: Any) -> Any:
        if isinstance(value, bool) or value == "auto":
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise InvalidValueError(f"enabled must be auto, true or false, but got {value!r}")

    @model_validator(mode="after")
    def _reservable(self) -> DataParallelConfig:
        # Ray accepts fractions of one CPU or GPU, and whole numbers above one
        for name in ("cpus_per_worker", "gpus_per_worker"):
            value = getattr(self, name)
            if value > 1 and not float(value).is_integer():
                raise InvalidValueError(
                    f"{name} must be a fraction up to 1 or a whole number, but got {value}; "
                    f"use {int(value)} or {int(value) + 1}"
                )
        if self.num_workers > 1 and 0 < self.gpus_per_worker < 1:
            raise InvalidValueError(
                f"the {self.num_workers} workers of a trial cannot share GPUs (XGBoost's "
                "collective refuses two processes on one CUDA device), but got "
                f"gpus_per_worker={self.gpus_per_worker}; use 1 or more, or 0"
            )
        return self


class SearchConfig(_Section):
    num_samples: int = Field(default=8, ge=1)
    max_concurrent: int = Field(default=2, ge=1)
    #: one trial at a time, so that the same data and seed give the same trials and the same
    #: champion: with trials in parallel, which results TPE and ASHA have seen when they act
    #: depends on timing (the search is then as good, not identical)
    deterministic: bool = False
    #: the most boosting rounds of one XGBoost trial: a cap, since a trial stops once its
    #: validation score has not improved for ``early_stopping_rounds``
    num_boost_round: int = Field(default=500, ge=1)
    #: a trial stops when its validation score has not improved for this many rounds
    #: (checked at its reports) and keeps its best round; empty: every trial boosts to the cap
    early_stopping_rounds: int | None = Field(default=30, ge=1)
    report_every: int = Field(default=10, ge=1)
    seed: int = 0
    #: ASHA: weak trials are stopped early, compared with the others at the same report
    early_stopping: bool = True
    #: each family's first trial is its default configuration (`retrain.candidates.DEFAULTS`,
    #: clipped to the space), so the search never ends below a sane default
    start_with_defaults: bool = True
    #: training: the finalists are trained again on every training row (validation rows
    #: included) with their parameters and rounds before they are scored on the holdout: the
    #: newest rows, which only validated during the search, are the most relevant ones.
    #: all (default): as training, and a promoted challenger is then trained once more on
    #: the holdout rows too before it is registered, so the served model has seen the newest
    #: partition (the decision was made on the model without them). off: the trials' own
    #: models are judged and registered
    refit: Literal["off", "training", "all"] = "all"
    asha: AshaConfig = AshaConfig()
    #: XGBoost parameters: a ParamRange is searched, a plain value is fixed
    space: dict[str, SpaceEntry] = Field(default_factory=_default_space)
    #: which model families compete (XGBoost from scratch uses ``space`` above)
    families: FamiliesConfig = FamiliesConfig()
    #: how often a trial is retried after a crash (a node dying, say)
    max_failures: int = Field(default=1, ge=0)
    time_budget_s: float | None = Field(default=None, gt=0)
    #: where Ray Tune keeps trial results; on a multi-node cluster use shared storage (s3://...)
    storage_path: str | None = None
    #: data-parallel XGBoost trials (Ray Train over Ray Data shards) for large data
    data_parallel: DataParallelConfig = DataParallelConfig()


class ResourcesConfig(_Section):
    #: CPUs Ray reserves per trial; XGBoost runs max(1, round(cpus)) threads
    cpus_per_trial: float = Field(default=1.0, gt=0)
    gpus_per_trial: float = Field(default=0.0, ge=0)
    #: seconds a search may have trials waiting for resources and none running before it
    #: fails with `retrain.errors.ClusterError` naming what they wait for (and a
    #: data-parallel trial may wait for its Ray Train workers to be placed)
    placement_timeout_s: float = Field(default=300.0, gt=0)


class SliceConfig(_Section):
    """Groups of ``column`` whose primary metric must not regress against the champion."""

    column: str = Field(min_length=1)
    #: groups with fewer holdout rows are too noisy to judge and are skipped
    min_rows: int = Field(default=200, ge=1)
    #: largest allowed regression of a group's metric (in the metric's better direction)
    tolerance: float = Field(default=0.01, ge=0)


class GuardrailConfig(_Section):
    """Limits on serving cost; ratios are challenger / champion, measured in the same run."""

    max_latency_ratio: float | None = Field(default=2.0, gt=0)
    max_batch_latency_ratio: float | None = Field(default=2.0, gt=0)
    max_size_ratio: float | None = Field(default=10.0, gt=0)
    #: floors: a ratio is checked only when the challenger's value is above its floor (a
    #: 1.5 MB model ten times a 150 kB one, or 0.4 ms against 0.1 ms, costs nothing)
    min_latency_ms: float = Field(default=5.0, ge=0)
    min_batch_ms_per_1k: float = Field(default=50.0, ge=0)
    min_size_mb: float = Field(default=20.0, ge=0)
    #: absolute limits, also applied to the very first model
    max_latency_ms: float | None = Field(default=None, gt=0)
    max_size_mb: float | None = Field(default=None, gt=0)


class EvaluationConfig(_Section):
    #: value: the challenger's holdout score must reach this (for a lower-is-better metric:
    #: stay at or below it); with no champion yet it is the only bar besides the guardrails
    min_score: float | None = None
    #: superiority: promote only when the lower confidence bound of (challenger - champion),
    #: signed so that > 0 is better, exceeds this
    min_improvement: float = 0.0
    #: optional relative bar: the lower bound must also exceed this share of the champion's
    #: score (0.01 = 1 %)
    min_relative_improvement: float | None = Field(default=None, ge=0)
    #: non_inferiority: promote when the challenger is at most ``non_inferiority_margin`` worse
    #: (lower bound > -margin), e.g. to refresh a model on new data at no loss
    mode: Literal["superiority", "non_inferiority"] = "superiority"
    non_inferiority_margin: float = Field(default=0.0, ge=0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    bootstrap_samples: int = Field(default=1000, ge=100)
    #: fixed seed: the same data and models give the same decision
    seed: int = 0
    #: top trials (by validation score) scored on the holdout; intervals are Bonferroni-
    #: adjusted for the number of finalists, so picking the best of them stays honest
    finalists: int = Field(default=3, ge=1)
    slices: tuple[SliceConfig, ...] = ()
    guardrails: GuardrailConfig = GuardrailConfig()


class AdmissionConfig(_Section):
    """Checks on new partitions (those the champion never saw) before any training."""

    enabled: bool = True
    min_rows: int = Field(default=100, ge=1)
    #: numeric values may exceed the reference's [min, max] by this share of its range
    range_margin: float = Field(default=0.1, ge=0)
    max_out_of_range_share: float = Field(default=0.01, ge=0, lt=1)
    #: values outside that range warn (real data moves), or quarantine the partition;
    #: infinite, overflowing and entirely missing values always quarantine
    on_out_of_range: Literal["quarantine", "warn"] = "warn"
    #: a dataset-level distribution drift only warns (drift is information for the model and
    #: evidence for the drift trigger), or quarantines the partition
    on_drift: Literal["quarantine", "warn"] = "warn"
    psi_threshold: float = Field(default=0.2, gt=0)
    alpha: float = Field(default=0.01, gt=0, lt=1)
    #: the partition has drifted when more than this share of its features has
    max_drifted_share: float = Field(default=0.3, ge=0, lt=1)
    missing_rate_jump: float = Field(default=0.1, gt=0, le=1)

    def policy(self):
        from retrain.admit import AdmissionPolicy
        from retrain.drift import DriftPolicy

        return AdmissionPolicy(
            min_rows=self.min_rows, range_margin=self.range_margin,
            max_out_of_range_share=self.max_out_of_range_share, on_drift=self.on_drift,
            on_out_of_range=self.on_out_of_range,
            drift=DriftPolicy(psi_threshold=self.psi_threshold, alpha=self.alpha,
                              max_drifted_share=self.max_drifted_share,
                              missing_rate_jump=self.missing_rate_jump),
        )


class MlflowConfig(_Section):
    #: any MLflow tracking URI; default: a SQLite file in the workdir
    tracking_uri: str | None = None
    #: default: <workdir>/mlartifacts (used only when the experiment is created)
    artifact_location: str | None = None
    experiment: str | None = None
    model_name: str | None = None


class ServingConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    app_name: str = Field(default="retrain", min_length=1)
    route_prefix: str = "/"
    num_replicas: int = Field(default=1, ge=1)
    #: CPUs Ray reserves per model replica (light models answer fine on a fraction)
    cpus_per_replica: float = Field(default=1.0, gt=0)
    #: how often each replica checks the registry for a new champion
    poll_interval_s: float = Field(default=2.0, gt=0)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    #: a request body must arrive whole within this many seconds (else 408)
    body_timeout_s: float = Field(default=10.0, gt=0)
    max_rows: int = Field(default=10_000, ge=1)
    #: columns one request may name, and values (rows x columns) it may hold
    max_columns: int = Field(default=1024, ge=1)
    max_cells: int = Field(default=1_000_000, ge=1)
    #: false: a row in which every feature is missing or null is refused (400)
    allow_all_missing_rows: bool = False
    #: Serve's per-request access log (off by default: it costs throughput)
    access_log: bool = False
    #: the environment variable holding the bearer token of /feedback and /admin/* (read
    #: where `retrain serve` runs; without it those endpoints answer 403)
    admin_token_env: str = Field(default="RETRAIN_ADMIN_TOKEN", min_length=1)
    #: requests one replica holds at once (Serve's max_ongoing_requests); an upload still
    #: arriving holds one too, so keep it well above the slow clients you expect
    max_ongoing_requests: int = Field(default=256, ge=1)
    #: each model version predicts in its own pool of this many threads per replica ...
    version_threads: int = Field(default=2, ge=1)
    #: ... with at most this many requests waiting for it (more: 503) ...
    version_queue: int = Field(default=64, ge=0)
    #: ... each for at most this long (longer: 504, counted as that version's error)
    version_timeout_s: float = Field(default=10.0, gt=0)
    #: shadow copies in flight per replica; more are dropped (and counted), never waited for
    shadow_max_pending: int = Field(default=64, ge=1)
    #: > 1: concurrent requests to one version are predicted together (Serve batching), up
    #: to this many, waiting at most batch_wait_s for a batch to fill; 0: off
    batch_max_size: int = Field(default=0, ge=0)
    batch_wait_s: float = Field(default=0.002, ge=0)


class InferenceLogConfig(_Section):
    """Every prediction the Serve app answers, written to partitioned Parquet for the monitor."""

    enabled: bool = True
    #: a folder (or any pyarrow URI, e.g. s3://bucket/log) that the replicas and the
    #: controller both reach; default: <workdir>/inference
    path: str | None = None
    #: a replica writes a Parquet file when this many rows are buffered, or ...
    flush_rows: int = Field(default=5000, ge=1)
    #: ... when the oldest buffered row is this old
    flush_interval_s: float = Field(default=5.0, gt=0)
    #: memory bound: rows beyond this (a stalled disk) are dropped and counted in /health
    max_buffer_rows: int = Field(default=100_000, ge=1)


class MonitorConfig(_Section):
    """Live inputs against the champion's training-data reference, and the live metric."""

    #: the newest logged rows the drift check reads (at most)
    window_rows: int = Field(default=5000, ge=1)
    #: and only rows this recent (empty: no age limit)
    window_s: float | None = Field(default=None, gt=0)
    #: fewer live rows than this: too little to judge drift
    min_rows: int = Field(default=500, ge=1)
    #: the live metric uses the newest this-many labelled predictions of the champion
    metric_rows: int = Field(default=5000, ge=1)
    psi_threshold: float = Field(default=0.2, gt=0)
    alpha: float = Field(default=0.01, gt=0, lt=1)
    #: live inputs have drifted when more than this share of the features has
    max_drifted_share: float = Field(default=0.3, ge=0, lt=1)
    missing_rate_jump: float = Field(default=0.1, gt=0, le=1)

    def policy(self):
        from retrain.drift import DriftPolicy

        return DriftPolicy(psi_threshold=self.psi_threshold, alpha=self.alpha,
                           max_drifted_share=self.max_drifted_share,
                           missing_rate_jump=self.missing_rate_jump, min_rows=self.min_rows)


class ScheduleTrigger(_Section):
    #: start a cycle this long after the last one started ...
    interval_s: float | None = Field(default=None, gt=0)
    #: ... or at these times: five cron fields "minute hour day-of-month month day-of-week" (UTC)
    cron: str | None = None

    @model_validator(mode="after")
    def _one_valid_schedule(self) -> ScheduleTrigger:
        from retrain.cron import CronSchedule

        if self.interval_s is not None and self.cron is not None:
            raise InvalidValueError(
                f"set either interval_s or cron, not both, but got interval_s={self.interval_s} "
                f"and cron={self.cron!r}; remove one of them"
            )
        if self.cron is not None:
            try:
                CronSchedule.parse(self.cron)
            except ValueError as exc:
                raise InvalidValueError(
                    f"{exc}; e.g. cron: \"0 3 * * 1\" (Mondays 03:00 UTC)") from None
        return self


class PerformanceTrigger(_Section):
    enabled: bool = True
    #: fire when the live metric is worse than the champion's evaluated holdout metric by more
    #: than this share of it (0.02: 2 %, so one default fits an AUC of 0.8 and an RMSE of 100)
    relative_tolerance: float = Field(default=0.02, ge=0)
    #: ... or, when set, by more than this in the metric's own units (replaces the share)
    tolerance: float | None = Field(default=None, ge=0)
    #: labelled predictions the live metric must rest on before it can fire
    min_samples: int = Field(default=200, ge=1)


class DriftTrigger(_Section):
    enabled: bool = True
    #: drift is a proxy for what labels show directly: with at least
    #: ``performance.min_samples`` labels the performance and opportunity triggers judge, and
    #: drift alone does not fire (seasonal inputs drift every month without always costing
    #: accuracy); false: drift fires whatever the labels say
    defer_to_labels: bool = True
    #: when at least this share of the features drifted, the drift is beyond doubt and
    #: fires at the first check (debounce is for borderline drift)
    immediate_share: float = Field(default=0.5, gt=0, le=1)


class OpportunityTrigger(_Section):
    """Fire when retraining would help, even though nothing degrades: the champion continued
    on the older part of the new labelled rows beats it on the newest part, with evidence
    (see `retrain.opportunity`)."""

    enabled: bool = True
    #: new labelled rows needed before it is judged
    min_rows: int = Field(default=1000, ge=10)
    #: the older share of them the cheap challenger is fitted on; the rest compares
    fit_share: float = Field(default=0.5, gt=0, lt=1)
    #: boosting rounds added to the champion for the cheap challenger
    rounds: int = Field(default=20, ge=1)
    #: fires when the interval's lower bound exceeds this (the metric's units; > 0 better) ...
    min_improvement: float = Field(default=0.0, ge=0)
    #: ... and this share of the champion's metric (0.001: 0.0007 AUC at 0.7, 0.1 RMSE at
    #: 100), so that a gain too small to pay for a cycle does not fire (on flights, 0 fired a
    #: cycle after November on a lower bound of +0.0002 and kept the champion)
    min_relative_improvement: float = Field(default=0.001, ge=0)


class TriggersConfig(_Section):
    """When `retrain watch` starts a cycle. Every evaluation is recorded in the ledger."""

    schedule: ScheduleTrigger = ScheduleTrigger()
    performance: PerformanceTrigger = PerformanceTrigger()
    drift: DriftTrigger = DriftTrigger()
    opportunity: OpportunityTrigger = OpportunityTrigger()
    #: a borderline performance or drift condition must hold on this many consecutive
    #: checks; one far beyond its tolerance (``immediate_factor`` times it, or a drift in
    #: ``drift.immediate_share`` of the features) fires at once. 1 by default: in the
    #: flights backtest a second check cost a period on a stale model (AUC 0.7073 instead
    #: of 0.7368 for May), while the cooldown and the cap already bound flapping
    debounce: int = Field(default=1, ge=1)
    immediate_factor: float = Field(default=2.0, ge=1)
    #: no cycle starts within this many seconds after the last one started (on demand excepted)
    cooldown_s: float = Field(default=3600.0, ge=0)
    #: at most this many cycles ...
    max_cycles: int = Field(default=6, ge=1)
    #: ... per this many seconds (a sliding window); on demand counts too
    period_s: float = Field(default=86_400.0, gt=0)
    #: how often `retrain watch` checks
    check_interval_s: float = Field(default=60.0, gt=0)


class SmokeConfig(_Section):
    """Before any live request: health, then a sample batch sent to champion and challenger."""

    enabled: bool = True
    #: requests of the sample batch (recent inputs), sent to both versions alike
    requests: int = Field(default=50, ge=1)


class ShadowConfig(_Section):
    """Live requests mirrored to the challenger; its answers are compared, never served."""

    enabled: bool = True
    duration_s: float = Field(default=300.0, ge=0)
    min_requests: int = Field(default=500, ge=1)


class CanaryStep(_Section):
    #: the challenger's share of live traffic, in percent
    percent: float = Field(gt=0, le=100)
    #: empty: the canary section's bake_s / min_requests
    bake_s: float | None = Field(default=None, ge=0)
    min_requests: int | None = Field(default=None, ge=1)


class CanaryConfig(_Section):
    #: the challenger's percent of live traffic, step by step, ending at 100; an entry is a
    #: number or {percent, bake_s, min_requests}
    steps: tuple[CanaryStep, ...] = tuple(CanaryStep(percent=p) for p in (5, 25, 50, 100))
    #: each step lasts at least this long ...
    bake_s: float = Field(default=300.0, ge=0)
    #: ... and until the challenger answered this many requests
    min_requests: int = Field(default=500, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_percents(cls, raw: Any) -> Any:
        steps = raw.get("steps") if isinstance(raw, dict) else None
        if isinstance(steps, (list, tuple)):
            raw = {**raw, "steps": [
                {"percent": s} if isinstance(s, (int, float)) and not isinstance(s, bool) else s
                for s in steps
            ]}
        return raw

    @model_validator(mode="after")
    def _rising_to_full(self) -> CanaryConfig:
        percents = [s.percent for s in self.steps]
        if not percents or percents[-1] != 100:
            raise InvalidValueError(f"steps must end at 100 (full traffic), but got {percents}; "
                                    "add 100 as the last step")
        if percents != sorted(set(percents)):
            raise InvalidValueError(f"steps must rise strictly, but got {percents}")
        return self


class GatesConfig(_Section):
    """Checked at every rollout step against the champion on the same traffic."""

    #: the challenger's error rate may exceed the champion's by at most this
    max_error_rate: float = Field(default=0.01, ge=0, lt=1)
    #: p99 latency: challenger <= max_latency_ratio x champion + latency_slack_ms (empty: off)
    max_latency_ratio: float | None = Field(default=1.5, gt=0)
    latency_slack_ms: float = Field(default=5.0, ge=0)
    #: absolute p99 limit of the challenger (empty: none)
    max_latency_ms: float | None = Field(default=None, gt=0)
    #: prediction shift against the champion's: fails when PSI reaches this and a KS test is
    #: significant at shift_alpha (empty: off)
    max_prediction_psi: float | None = Field(default=0.2, gt=0)
    shift_alpha: float = Field(default=0.01, gt=0, lt=1)
    #: where labels have arrived: the challenger's live metric may be worse by this (empty: off)
    live_metric_tolerance: float | None = Field(default=0.02, ge=0)
    #: labelled predictions per version before the live metric counts
    min_labelled: int = Field(default=200, ge=1)


class RolloutConfig(_Section):
    """How a promoted version reaches live traffic: smoke, shadow, canary steps, gates."""

    #: false: a promoted version takes all traffic at once (the alias moves in the cycle);
    #: true: the cycle registers it under the ``challenger`` alias and `retrain watch` (or
    #: `retrain rollout start`) walks it through the steps below; the ``champion`` alias
    #: moves only when the last step passes
    enabled: bool = False
    #: a request header (or body field) whose value keeps one caller on one version
    sticky_key: str | None = Field(default=None, pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    smoke: SmokeConfig = SmokeConfig()
    shadow: ShadowConfig = ShadowConfig()
    canary: CanaryConfig = CanaryConfig()
    gates: GatesConfig = GatesConfig()
    #: the old version retires this long after the last step (in-flight requests drain)
    drain_s: float = Field(default=30.0, ge=0)


class RayConfig(_Section):
    #: Ray cluster address; empty: RAY_ADDRESS, a local cluster started by ``ray start``, or a
    #: new local runtime
    address: str | None = None
    #: CPUs of a new local runtime (ignored when connecting to a cluster)
    num_cpus: int | None = Field(default=None, ge=1)


class Config(_Section):
    project: ProjectConfig
    data: DataConfig
    task: TaskConfig
    search: SearchConfig = SearchConfig()
    resources: ResourcesConfig = ResourcesConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    admission: AdmissionConfig = AdmissionConfig()
    mlflow: MlflowConfig = MlflowConfig()
    serving: ServingConfig = ServingConfig()
    inference_log: InferenceLogConfig = InferenceLogConfig()
    monitor: MonitorConfig = MonitorConfig()
    triggers: TriggersConfig = TriggersConfig()
    rollout: RolloutConfig = RolloutConfig()
    ray: RayConfig = RayConfig()

    # Derived values: defaults that depend on other fields live here, in one place.
    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.project.workdir / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str:
        return self.mlflow.artifact_location or (self.project.workdir / "mlartifacts").as_uri()

    @property
    def experiment_name(self) -> str:
        return self.mlflow.experiment or self.project.name

    @property
    def model_name(self) -> str:
        return self.mlflow.model_name or self.project.name

    @property
    def ledger_path(self) -> Path:
        return self.project.ledger or self.project.workdir / "ledger.db"

    @property
    def inference_log_path(self) -> str:
        return self.inference_log.path or str(self.project.workdir / "inference")

    @property
    def storage_path(self) -> str:
        return self.search.storage_path or str(self.project.workdir / "tune")

    # The project's own files under its workdir, named here only.
    @property
    def cycles_dir(self) -> Path:
        """Each cycle's resumable stage record."""
        return Path(self.project.workdir) / "cycles"

    @property
    def quarantine_path(self) -> Path:
        return Path(self.project.workdir) / "quarantine.jsonl"

    @property
    def reports_dir(self) -> Path:
        return Path(self.project.workdir) / "reports"

    @property
    def watch_dir(self) -> Path:
        """`retrain watch`'s state."""
        return Path(self.project.workdir) / "watch"

    @property
    def rollout_state_path(self) -> Path:
        return Path(self.project.workdir) / "rollout" / "state.json"


def _resolve(base: Path, path: Path) -> Path:
    path = Path(os.path.expandvars(str(path))).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _format_problem(
    error: dict[str, Any], known: collections.abc.Callable[[tuple[str, ...]], set[str]]
) -> str:
    # drop union tags and validator names that pydantic puts into the location
    loc = tuple(
        str(part) for part in error["loc"]
        if part not in _UNION_TAGS and not str(part).startswith("function-")
    )
    where = ".".join(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        parent, name = loc[:-1], loc[-1]
        keys = sorted(known(parent))
        close = difflib.get_close_matches(name, keys, n=1)
        hint = (f"; did you mean {close[0]!r}?" if close
                else f"; remove it (known here: {', '.join(keys)})" if keys else "; remove it")
        return f"{where}: unknown key{hint}"
    if error["type"] == "missing":
        return f"{where}: required but missing; add it to the config"
    message = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    shown = ("" if isinstance(got, dict) or "got" in message or repr(got) in message
             else f" (got {got!r})")
    return f"{where}: {message}{shown}"


def _keys_at(annotation: Any, path: tuple[str, ...]) -> set[str]:
    """The keys a mapping at ``path`` below a value of type ``annotation`` may have, through
    nested sections, lists of sections (``evaluation.slices.0``), mappings of sections
    (``search.space.eta``), unions and Optional; empty where the path leads to no section."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _keys_at(args[0], path)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_keys_at(member, path) for member in args))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if not path:
            return set(annotation.model_fields)
        field = annotation.model_fields.get(path[0])
        return _keys_at(field.annotation, path[1:]) if field is not None else set()
    if not path:
        return set()
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence) and args:
        return _keys_at(args[0], path[1:])
    if origin in (dict, collections.abc.Mapping) and len(args) == 2:
        return _keys_at(args[1], path[1:])
    return set()


def config_from_dict(raw: Any, *, base_dir: Path | str = ".", source: str = "config") -> Config:
    """Validate a plain mapping (as read from YAML) into a `Config`.

    Relative paths are resolved against ``base_dir``. Raises `ConfigError` listing every
    problem at once, each naming the field, what was wrong and how to fix it.
    """
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping with sections project, data, task, ..., "
            f"but got {type(raw).__name__}; see `retrain init` for an example"
        )
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems = tuple(_format_problem(e, lambda parent: _keys_at(Config, parent))
                         for e in exc.errors())
        listing = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(
            f"{source} is invalid ({len(problems)} problem(s)):\n{listing}", problems=problems
        ) from None
    base = Path(base_dir).resolve()
    return config.model_copy(
        update={
            "project": config.project.model_copy(
                update={
                    "workdir": _resolve(base, config.project.workdir),
                    "ledger": config.project.ledger and _resolve(base, config.project.ledger),
                }
            ),
            "data": config.data.model_copy(update={"path": _resolve(base, config.data.path)}),
        }
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a project YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {str(path)!r} does not exist; create one with `retrain init {path}`"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return config_from_dict(raw, base_dir=path.parent, source=str(path))


EXAMPLE_YAML = """\
# retrain project configuration. Relative paths are resolved against this file's folder.
project:
  name: {name}                 # names the MLflow experiment and registered model by default
  workdir: .retrain            # MLflow store (SQLite + artifacts) and search results live here

data:
  path: data                   # hive-partitioned Parquet: data/<partition_column>=<value>/*.parquet
  partition_column: month      # partitions sort by this value; the newest form the holdout
  target: late                 # the column to predict
  features: []                 # empty: every column except target, partition column and exclude
  exclude: []
  categorical: []              # string columns are categorical anyway
  holdout_partitions: 1        # newest N partitions: champion and challenger are compared there
  holdout_share: 0.5           # ... on their newest half; the older half trains
  validation_fraction: 0.2     # newest share of the training rows, used to rank trials

task:
  type: classification         # classification | regression
  metric: auc                  # classification: auc | logloss | accuracy; regression: rmse | mae

search:
  num_samples: 8               # trials per cycle
  max_concurrent: 2            # trials at once (bounded by the cluster's CPUs/GPUs too)
  num_boost_round: 100
  report_every: 10             # rounds between reports; ASHA decides at reports
  early_stopping: true         # ASHA stops weak trials early
  seed: 0
  max_failures: 1              # retries of a crashed trial (a node dying, say)
  data_parallel:               # XGBoost trials on Ray Train workers over Ray Data shards
    enabled: auto              # auto: from min_rows training rows on; or true / false
    min_rows: 20000000
    num_workers: 2
    cpus_per_worker: 1         # leave CPUs free for Ray Data's reads (cpus_per_read_task)
  space:                       # a range is searched, a plain value is fixed
    max_depth: {{type: int, low: 3, high: 10}}
    eta: {{type: float, low: 0.02, high: 0.3, log: true}}
    min_child_weight: {{type: float, low: 1, high: 20, log: true}}
    subsample: {{type: float, low: 0.6, high: 1.0}}
    colsample_bytree: {{type: float, low: 0.6, high: 1.0}}
    lambda: {{type: float, low: 0.1, high: 10, log: true}}
  families:                    # candidates searched together; num_samples is shared in turn
    xgboost:                   # XGBoost from scratch, over search.space above
      enabled: true
    xgboost_window:            # XGBoost on the newest partitions, weighted by recency: the
      enabled: true            # training window as a searched choice (after a drift, old
      space:                   # rows mislead; on stable data they help)
        recent_partitions: {{type: int, low: 1, high: 12}}
        half_life: {{type: float, low: 0.5, high: 24, log: true}}
        max_depth: {{type: int, low: 4, high: 10}}
        eta: {{type: float, low: 0.03, high: 0.3, log: true}}
    xgboost_warm_start:        # continue the champion's booster on the new data (needs a
      enabled: true            # champion with the same features; skipped, with the reason, if not)
      num_boost_round: 20      # rounds added to the champion's trees
      rows: new                # new: only rows the champion never trained on; or all
      space:
        eta: {{type: float, low: 0.01, high: 0.1, log: true}}
        max_depth: {{type: int, low: 3, high: 8}}
    hist_gradient_boosting:    # scikit-learn HistGradientBoosting (categoricals natively)
      enabled: false
      space:
        learning_rate: {{type: float, low: 0.02, high: 0.3, log: true}}
        max_leaf_nodes: {{type: int, low: 15, high: 63}}
        max_iter: 100
    linear:                    # impute, scale, one-hot + LogisticRegression / Ridge
      enabled: false
      space:
        alpha: {{type: float, low: 0.0001, high: 10, log: true}}  # regularisation strength

resources:
  cpus_per_trial: 1            # XGBoost threads per trial
  gpus_per_trial: 0            # > 0 trains on the GPU (device=cuda); fractions share one GPU
  placement_timeout_s: 300     # trials waiting for resources this long, none running: fail

evaluation:
  min_score: 0.6               # value: the holdout score every promoted model must reach
  min_improvement: 0.0         # change: lower bound of (challenger - champion) must exceed it
  mode: superiority            # or non_inferiority (with non_inferiority_margin)
  confidence: 0.95             # paired interval: DeLong for auc, bucketed bootstrap otherwise
  finalists: 3                 # top trials scored on the holdout (Bonferroni-adjusted)
  slices: []                   # e.g. [{{column: origin, min_rows: 200, tolerance: 0.01}}]
  guardrails:                  # challenger / champion, measured in the same run
    max_latency_ratio: 2.0
    max_batch_latency_ratio: 2.0
    max_size_ratio: 10.0

admission:                     # new partitions vs the champion's training data
  enabled: true
  on_drift: warn               # or quarantine; drift is information, not a data defect
  on_out_of_range: warn        # or quarantine; schema, row-count, infinite and all-missing
                               # values always quarantine (`retrain readmit` releases one)
  max_drifted_share: 0.3       # the partition drifted when more features than this drifted

mlflow:
  tracking_uri:                # empty: sqlite file in the workdir; or http://mlflow:5000, ...
  experiment:                  # empty: project name
  model_name:                  # empty: project name

serving:
  host: 127.0.0.1
  port: 8000
  app_name: retrain
  num_replicas: 1
  poll_interval_s: 2           # replicas pick up a new champion within this time
  admin_token_env: RETRAIN_ADMIN_TOKEN  # bearer token of POST /feedback and /admin/*

inference_log:                 # every prediction, to Parquet, for the monitor
  enabled: true
  path:                        # empty: <workdir>/inference; replicas and `retrain watch` share it

monitor:                       # live inputs vs the champion's training data
  window_rows: 5000
  min_rows: 500
  max_drifted_share: 0.3

triggers:                      # when `retrain watch` starts a cycle
  schedule:
    interval_s:                # e.g. 604800 (weekly); or cron: "0 3 * * 1" (UTC)
  performance:
    relative_tolerance: 0.02   # live metric 2 % worse than the champion's holdout metric
    min_samples: 200           # labelled predictions it must rest on
  drift:
    enabled: true
    defer_to_labels: true      # with enough labels, the label-based triggers judge instead
    immediate_share: 0.5       # this share of features drifted: fire at the first check
  opportunity:                 # the champion continued on new labels beats it, with evidence
    enabled: true
    min_rows: 1000
  debounce: 1                  # consecutive checks a borderline condition must hold
  immediate_factor: 2.0        # a drop of 2x the tolerance fires at the first check
  cooldown_s: 3600             # quiet time after a cycle starts
  max_cycles: 6                # at most this many cycles ...
  period_s: 86400              # ... per day
  check_interval_s: 60

rollout:                       # how a promoted version reaches live traffic on Ray Serve
  enabled: false               # true: champion moves only after smoke, shadow and canaries
  sticky_key:                  # e.g. x-user-id: header/body field; one caller, one version
  smoke:
    requests: 50               # a sample batch to champion and challenger: errors, latency
  shadow:
    duration_s: 300            # live requests mirrored to the challenger, compared, not served
    min_requests: 500
  canary:
    steps: [5, 25, 50, 100]    # percent of live traffic; or {{percent: 5, bake_s: 600}}
    bake_s: 300                # each step lasts at least this long ...
    min_requests: 500          # ... and until the challenger answered this many requests
  gates:                       # against the champion on the same traffic; a failure rolls back
    max_error_rate: 0.01       # challenger's error rate above the champion's
    max_latency_ratio: 1.5     # p99: challenger <= 1.5 x champion + latency_slack_ms
    latency_slack_ms: 5
    max_prediction_psi: 0.2    # prediction shift (with KS significant at shift_alpha)
    live_metric_tolerance: 0.02  # once min_labelled labels arrived per version
    min_labelled: 200
  drain_s: 30                  # the old version retires this long after the last step

ray:
  address:                     # empty: RAY_ADDRESS, a running local cluster, or a new one
  num_cpus:                    # CPUs for a new local runtime
"""


def example_yaml(name: str = "my-project") -> str:
    """The commented example written by `retrain init`."""
    return EXAMPLE_YAML.format(name=name)
