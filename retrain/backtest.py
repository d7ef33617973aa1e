"""`retrain backtest`: replay a partitioned history through three retraining policies.

Partitions arrive one per period, oldest first. A model is trained on the first ``initial``
partitions; from then on, each arriving partition is first *served*: every policy's current
model is scored on it (its labels stand for the feedback that arrives later). Then each policy
decides whether to retrain on everything seen so far before the next period:

- ``never``: keeps the first model;
- ``every``: retrains after every period;
- ``triggers``: asks the project's configured triggers (`retrain.triggers.evaluate`, the same
  pure function `retrain watch` runs), fed with what the monitor would have seen: the
  partition's drift against the served model's reference sketch, and its live metric on the
  partition's rows. Periods are ``period_s`` apart on the triggers' clock, so a schedule,
  cooldown and cap behave as they would live.

The report gives, per period, each policy's metric on that period and whether it retrained,
and per policy the mean metric and the number of cycles it cost. No retraining happens after
the last period: there is no later period to serve.

A cycle here (``--mode fit``) is one XGBoost fit with fixed parameters (the space's fixed
values, the middle of each searched range), not a search: it measures *when* to retrain,
cheaply and deterministically, without Ray or MLflow. Like a cycle, it judges the model on the
newest partition (the performance trigger's bar) and then serves one trained on every row.
``--mode cycle`` (`retrain.backtest_cycle`) replays real cycles instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd

from retrain.candidates import xgb_params
from retrain.config import METRIC_DIRECTIONS, Config, ParamRange
from retrain.data import (
    feature_names,
    list_partitions,
    open_dataset,
    read_partition,
    target_values,
)
from retrain.drift import build_reference, compare
from retrain.errors import DataError
from retrain.evaluate import score
from retrain.opportunity import estimate_opportunity
from retrain.triggers import MonitorSignals, TriggerInputs, TriggerState, evaluate
from serve.features import FeatureSpec
from serve.schemas import InvalidInput

POLICIES = ("never", "every", "triggers")


@dataclass(frozen=True)
class Period:
    """One arriving partition, as each policy's served model fared on it."""

    partition: str
    rows: int
    #: policy -> the served model's metric on this partition
    metrics: dict[str, float]
    #: policy -> whether it retrained after this partition
    retrained: dict[str, bool]
    #: what the triggers said after this partition
    trigger_reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"partition": self.partition, "rows": self.rows, "metrics": self.metrics,
                "retrained": self.retrained, "trigger_reason": self.trigger_reason}


@dataclass(frozen=True)
class BacktestResult:
    metric: str
    initial: tuple[str, ...]
    periods: tuple[Period, ...]
    #: policy -> cycles (fits after the initial one)
    cycles: dict[str, int]
    #: the policies replayed, in column order
    policies: tuple[str, ...] = POLICIES
    #: policy -> seconds its retrainings took, the first one included (cycle mode)
    seconds: dict[str, float] | None = None

    def mean(self, policy: str) -> float:
        return float(np.mean([p.metrics[policy] for p in self.periods]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "initial": list(self.initial),
            "periods": [p.to_dict() for p in self.periods],
            "summary": {policy: {"mean": self.mean(policy), "cycles": self.cycles[policy],
                                 **({"seconds": self.seconds[policy]} if self.seconds else {})}
                        for policy in self.policies},
        }

    def table(self) -> str:
        POLICIES = self.policies
        head = f"{'period':<10}{'rows':>8}" + "".join(f"{p:>14}" for p in POLICIES)
        lines = [f"metric: {self.metric} "
                 f"({'higher' if METRIC_DIRECTIONS[self.metric] else 'lower'} is better); "
                 f"initial model on {', '.join(self.initial)}; * = retrained after the period",
                 head, "-" * len(head)]
        for p in self.periods:
            cells = "".join(f"{p.metrics[k]:>13.4f}{'*' if p.retrained[k] else ' '}"
                            for k in POLICIES)
            lines.append(f"{p.partition:<10}{p.rows:>8}{cells}")
        lines.append("-" * len(head))
        lines.append(f"{'mean':<18}" + "".join(f"{self.mean(k):>13.4f} " for k in POLICIES))
        lines.append(f"{'cycles':<18}" + "".join(f"{self.cycles[k]:>13d} " for k in POLICIES))
        if self.seconds:
            lines.append(f"{'seconds':<18}"
                         + "".join(f"{self.seconds[k]:>13.0f} " for k in POLICIES))
        triggered = [f"  after {p.partition}: {p.trigger_reason}" for p in self.periods
                     if p.retrained.get("triggers")]
        if triggered:
            lines += ["triggers retrained:", *triggered]
        return "\n".join(lines)


def fixed_params(space: dict[str, Any]) -> dict[str, Any]:
    """One point of the search space: fixed values as they are, the middle of each range
    (geometric for log ranges, rounded for ints, the first choice of a categorical)."""
    out: dict[str, Any] = {}
    for name, entry in space.items():
        if not isinstance(entry, ParamRange):
            out[name] = entry
        elif entry.type == "categorical":
            out[name] = entry.choices[0]
        else:
            low, high = entry.bounds
            middle = math.sqrt(low * high) if entry.log else (low + high) / 2
            out[name] = round(middle) if entry.type == "int" else middle
    return out


#: boosting rounds of a fit (``search.num_boost_round`` is a cap for early-stopped trials, too
#: many for one fixed-parameter fit)
FIT_ROUNDS = 150


@dataclass
class _Model:
    spec: FeatureSpec
    booster: Any
    reference: Any
    #: its score on the newest partition it was judged on (as a cycle's holdout score at
    #: promotion): the bar the performance trigger holds it to
    evaluated: float
    flavor: str = "xgboost"


class _Trainer:
    def __init__(self, config: Config, names: tuple[str, ...]) -> None:
        self.config = config
        self.names = names
        self.params = xgb_params(config.task.type, config.task.primary_metric,
                                 fixed_params(config.search.space), nthread=2, device="cpu",
                                 seed=config.search.seed)

    def fit(self, frames: list[pd.DataFrame]) -> _Model:
        import xgboost as xgb

        c = self.config
        train = pd.concat(frames, ignore_index=True)
        spec = FeatureSpec.learn(train, self.names, categorical=c.data.categorical)
        # judged as a cycle judges: trained without the newest partition, scored on it (the
        # validation share when there is one partition); then, as a cycle's refit, the
        # served model trains on every row
        cut = len(train) - len(frames[-1]) if len(frames) > 1 \
            else round(len(train) * (1 - c.data.validation_fraction))
        x = spec.frame(train)
        y = target_values(c.data, c.task.type, train[c.data.target])
        rounds = min(c.search.num_boost_round, FIT_ROUNDS)
        judged = xgb.train(self.params, xgb.DMatrix(x.iloc[:cut], y[:cut],
                                                    enable_categorical=True),
                           num_boost_round=rounds)
        evaluated = score(c.task.primary_metric, y[cut:], judged.inplace_predict(x.iloc[cut:]))
        booster = xgb.train(self.params, xgb.DMatrix(x, y, enable_categorical=True),
                            num_boost_round=rounds)
        return _Model(spec, booster, build_reference(train[list(self.names)],
                                                     categorical=c.data.categorical), evaluated)

    def score(self, model: _Model, frame: pd.DataFrame) -> float:
        c = self.config
        y = target_values(c.data, c.task.type, frame[c.data.target])
        try:
            predictions = model.booster.inplace_predict(model.spec.frame(frame))
        except InvalidInput as exc:
            raise DataError(f"a partition does not fit the model's features: {exc}") from exc
        return float(score(c.task.primary_metric, y, predictions))


def backtest(config: Config, *, initial: int = 2, period_s: float = 30 * 86_400.0,
             start: datetime | None = None) -> BacktestResult:
    """Replay the dataset's partitions through the three policies (see the module doc)."""
    if initial < 1:
        raise DataError(f"initial must be >= 1 partition to train the first model, got {initial}")
    partitions = list_partitions(config.data)
    if len(partitions) < initial + 1:
        raise DataError(
            f"found {len(partitions)} partition(s) under {config.data.path}; a backtest with "
            f"initial={initial} needs at least {initial + 1} (the first model's, then one "
            "period to serve)"
        )
    names = feature_names(config.data, open_dataset(config.data).schema.names)
    columns = (*names, config.data.target)
    frames = [read_partition(config.data, p, columns) for p in partitions]
    trainer = _Trainer(config, names)
    first = trainer.fit(frames[:initial])
    models = dict.fromkeys(POLICIES, first)
    cycles = dict.fromkeys(POLICIES, 0)
    state = TriggerState()
    clock = start or datetime(2000, 1, 1, tzinfo=timezone.utc)
    metric = config.task.primary_metric
    periods = []
    for t in range(initial, len(frames)):
        frame = frames[t]
        metrics = {k: trainer.score(models[k], frame) for k in POLICIES}
        last = t == len(frames) - 1
        served = models["triggers"]
        drift = compare(served.reference, frame[list(names)], policy=config.monitor.policy())
        now = clock + timedelta(seconds=period_s * (t - initial + 1))
        labels = target_values(config.data, config.task.type, frame[config.data.target])
        evaluation = evaluate(config.triggers, state, TriggerInputs(
            now=now, metric=metric, champion_metric=served.evaluated,
            monitor=MonitorSignals(
                drift_detected=None if drift.insufficient_data else drift.dataset_drifted,
                drifted_features=tuple(drift.drifted), drifted_share=drift.drifted_share,
                drift_summary=drift.summary().splitlines()[0],
                rows=len(frame), live_metric=metrics["triggers"], labelled=len(frame),
                opportunity=estimate_opportunity(config, served, frame, labels)),
        ))
        state = evaluation.state
        retrained = {"never": False, "every": not last,
                     "triggers": evaluation.fired is not None and not last}
        if retrained["every"]:
            models["every"] = trainer.fit(frames[: t + 1])
            cycles["every"] += 1
        if retrained["triggers"]:
            state = state.started(now)
            # the same fit as "every" after this period: reuse it rather than train twice
            models["triggers"] = models["every"]
            cycles["triggers"] += 1
        periods.append(Period(partitions[t].value, len(frame), metrics, retrained,
                              evaluation.reason))
    return BacktestResult(metric, tuple(p.value for p in partitions[:initial]), tuple(periods),
                          cycles)
