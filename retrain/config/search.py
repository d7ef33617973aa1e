"""The search section: each candidate family's space (ranges and fixed values), ASHA, data-parallel
training, and the resources trials take.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Discriminator, Field, Tag, field_validator, model_validator

from retrain.config.base import _Section
from retrain.errors import InvalidValueError


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

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high) of a numeric range; both are set once it validated."""
        if self.low is None or self.high is None:
            raise InvalidValueError(f"a {self.type} parameter has no range")
        return float(self.low), float(self.high)


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
