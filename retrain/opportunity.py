"""Would retraining help now? A cheap challenger measured against the champion on new labels.

Degradation triggers compare the live metric with a reference that can be stale: on a stream
where the champion holds its level, nothing degrades, yet a model retrained on the new rows
can be clearly better. This answers that question directly, cheaply and with evidence: the
champion's booster is continued for a few rounds (the warm start's default step) on the older
part of the newly labelled rows, and that challenger and the champion are compared on the
newest part with the same paired interval the evaluator uses (`retrain.stats`). The
opportunity trigger fires when the interval's lower bound clears its bar.

Pure but for XGBoost: a loaded champion and labelled rows in, an `Opportunity` out (None when
it cannot be judged: too few labels, a scikit-learn champion, one class only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from retrain.config import Config
    from serve.features import FeatureSpec


class Champion(Protocol):
    """What the estimate reads of a model: a `serve.loader.LoadedModel`, or the backtest's."""

    @property
    def flavor(self) -> str: ...

    @property
    def spec(self) -> FeatureSpec: ...

    @property
    def booster(self) -> Any: ...


@dataclass(frozen=True)
class Opportunity:
    """The cheap challenger minus the champion on the newest labelled rows (> 0: better)."""

    estimate: float
    low: float
    high: float
    #: rows the challenger was fitted on, and rows both were compared on
    fitted: int
    compared: int
    metric: str

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high,
                "fitted": self.fitted, "compared": self.compared, "metric": self.metric}

    def summary(self) -> str:
        return (f"a warm start on {self.fitted} new labelled rows vs the champion on the "
                f"newest {self.compared}: {self.metric} {self.estimate:+.4f} "
                f"[{self.low:+.4f}, {self.high:+.4f}]")


def estimate_opportunity(config: Config, champion: Champion, frame: pd.DataFrame,
                         y: np.ndarray) -> Opportunity | None:
    """The opportunity on ``frame`` (raw feature columns, time-ordered, labels ``y``), or
    None when it cannot be judged (see the module doc)."""
    import xgboost as xgb

    from retrain.candidates import DEFAULTS, WARM_START, xgb_params
    from retrain.config import METRIC_DIRECTIONS
    from retrain.stats import paired_difference

    policy = config.triggers.opportunity
    if not policy.enabled or champion.flavor != "xgboost" or len(y) < policy.min_rows:
        return None
    cut = int(len(y) * policy.fit_share)
    x = champion.spec.frame(frame.reset_index(drop=True))
    y = np.asarray(y)
    if len(np.unique(y[cut:])) < 2 and config.task.type == "classification":
        return None
    params = xgb_params(config.task.type, config.task.primary_metric, DEFAULTS[WARM_START],
                        nthread=1, device="cpu", seed=config.search.seed)
    challenger = xgb.train(params, xgb.DMatrix(x.iloc[:cut], y[:cut], enable_categorical=True),
                           num_boost_round=policy.rounds, xgb_model=champion.booster)
    newest = x.iloc[cut:]
    metric = config.task.primary_metric
    d = paired_difference(
        metric, y[cut:], challenger.inplace_predict(newest),
        champion.booster.inplace_predict(newest), greater_is_better=METRIC_DIRECTIONS[metric],
        confidence=config.evaluation.confidence, samples=config.evaluation.bootstrap_samples,
        seed=config.evaluation.seed)
    if math.isnan(d.low):
        return None
    return Opportunity(float(d.estimate), float(d.low), float(d.high), cut, len(y) - cut,
                       metric)
