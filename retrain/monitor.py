"""The monitor: what live traffic says about the champion.

Two questions, answered from the inference log (every prediction the Serve app answered) and
the labels that arrived later through ``POST /feedback``:

- Have live inputs drifted from the champion's training data? The newest logged rows are
  compared with the champion's reference sketch (`retrain.drift.compare`), never with raw
  training data.
- How good is the champion live? Its logged predictions joined with the labels, scored with the
  project's metric, with the number of labelled rows the figure rests on and the holdout score
  the champion earned when it was promoted.

`live_metric` is pure; `check` is the adapter that reads the log and the registry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from retrain.config import Config
from retrain.drift import DriftPolicy, DriftReport, ReferenceSketch, compare
from retrain.evaluate import score

if TYPE_CHECKING:
    from retrain.registry import Registry

#: the join key between a logged prediction and its label
KEY = ["request_id", "row"]


@dataclass(frozen=True)
class LiveMetric:
    metric: str
    #: None while no logged prediction of the champion has a label
    value: float | None
    #: labelled predictions the value rests on
    labelled: int
    #: the champion's holdout score when it was promoted (None if not recorded)
    evaluated: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "labelled": self.labelled,
                "evaluated": self.evaluated}


@dataclass(frozen=True)
class MonitorReport:
    """One look at live traffic. ``drift`` is None when it could not be judged (``notes``)."""

    at: float
    champion: str | None
    #: live rows the drift check read
    rows: int
    drift: DriftReport | None
    live: LiveMetric
    notes: tuple[str, ...] = field(default=())
    #: a cheap challenger against the champion on the new labels (`retrain.opportunity`)
    opportunity: Any = None

    @property
    def drift_detected(self) -> bool | None:
        if self.drift is None or self.drift.insufficient_data:
            return None
        return self.drift.dataset_drifted

    def summary(self) -> str:
        """Lines: the champion; the live inputs' drift, then one line per drifted feature;
        the live metric; each note."""
        lines = [f"champion v{self.champion}" if self.champion else "no champion"]
        if self.drift is not None:
            lines.append(f"inputs ({self.rows} rows): {self.drift.summary()}")
        live = self.live
        if live.value is None:
            lines.append(f"live {live.metric}: no labelled predictions yet")
        else:
            bar = "" if live.evaluated is None else f" (holdout {live.evaluated:.4f})"
            lines.append(f"live {live.metric} {live.value:.4f} on {live.labelled} labels{bar}")
        return "\n".join([*lines, *self.notes])

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "champion": self.champion,
            "rows": self.rows,
            "drift_detected": self.drift_detected,
            "drifted_features": list(self.drift.drifted) if self.drift else [],
            "drifted_share": self.drift.drifted_share if self.drift else None,
            "live": self.live.to_dict(),
            "notes": list(self.notes),
            "opportunity": None if self.opportunity is None else self.opportunity.to_dict(),
        }


def live_metric(task: str, metric: str, predictions: pd.DataFrame, feedback: pd.DataFrame,
                *, version: str | None, evaluated: float | None = None,
                max_rows: int | None = None) -> LiveMetric:
    """Score ``version``'s logged predictions against the labels that arrived for them.

    A label sent twice for one (request_id, row) counts once: the latest wins, as a
    correction would. ``max_rows`` keeps the newest labelled predictions only.
    """
    empty = LiveMetric(metric, None, 0, evaluated)
    if version is None or predictions.empty or feedback.empty:
        return empty
    joined, _ = labelled_rows(predictions[[*KEY, "ts", "model_version", "prediction"]],
                              feedback, version=version)
    joined = joined[np.isfinite(joined["prediction"])]
    if max_rows is not None:
        joined = joined.tail(max_rows)
    if joined.empty:
        return empty
    y = joined["label"].to_numpy(dtype=np.float64)
    p = joined["prediction"].to_numpy(dtype=np.float64)
    if task == "classification" and metric == "auc" and y.min() == y.max():
        return empty  # AUC needs both classes among the labels
    return LiveMetric(metric, float(score(metric, y, p)), len(joined), evaluated)


def answered(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows live callers got: no shadow copies (the same inputs again) and no failed
    predictions (they carry no features and would read as missing values)."""
    keep = pd.Series(True, index=rows.index)
    if "shadow" in rows.columns:
        keep &= ~rows["shadow"].fillna(False).astype(bool)
    if "error" in rows.columns:
        keep &= rows["error"].isna()
    return rows[keep]


def drift_of(reference: ReferenceSketch | None, inputs: pd.DataFrame,
             policy: DriftPolicy) -> tuple[DriftReport | None, tuple[str, ...]]:
    """Live inputs against the reference; None with the reason when it cannot be judged."""
    if reference is None:
        return None, ("the champion has no reference sketch: drift cannot be judged",)
    missing = [name for name in reference.names if name not in inputs.columns]
    if inputs.empty:
        return None, ("no live inputs logged yet",)
    if missing:
        return None, (f"the inference log lacks feature(s) {missing}: is it from another "
                      "model?",)
    return compare(reference, inputs[list(reference.names)], policy=policy), ()


def check(config: Config, *, registry: Registry | None = None,
          now: float | None = None) -> MonitorReport:
    """Read the inference log and the labels, and judge the champion's live traffic."""
    from retrain.registry import CHAMPION, MlflowRegistry
    from serve.inference_log import read_feedback, read_predictions

    now = time.time() if now is None else now
    registry = registry or MlflowRegistry.from_config(config)
    m, task = config.monitor, config.task
    champion = registry.alias_version(CHAMPION)
    path = config.inference_log_path
    since = None if m.window_s is None else pd.Timestamp(now - m.window_s, unit="s", tz="UTC")
    window = answered(read_predictions(path, since=since, limit=m.window_rows))
    if champion is None:
        return MonitorReport(now, None, len(window), None,
                             LiveMetric(task.primary_metric, None, 0, None),
                             ("no champion yet: nothing to monitor",))
    drift, notes = drift_of(registry.load_reference(champion), window, m.policy())
    feedback = read_feedback(path)
    # the champion answered nothing before it was registered: read no older hours than that
    labelled = (answered(read_predictions(path, since=registry.registered_at(champion)))
                if not feedback.empty else window.iloc[:0])
    live = live_metric(task.type, task.primary_metric, labelled, feedback, version=champion,
                       evaluated=registry.evaluated_score(champion), max_rows=m.metric_rows)
    chance = None
    if config.triggers.opportunity.enabled and live.labelled >= \
            config.triggers.opportunity.min_rows:
        from retrain.opportunity import estimate_opportunity

        frame, y = labelled_rows(labelled, feedback, version=champion,
                                 max_rows=OPPORTUNITY_ROWS)
        chance = estimate_opportunity(config, registry.load(champion), frame, y)
    return MonitorReport(now, champion, len(window), drift, live, notes, opportunity=chance)


#: the newest labelled rows the opportunity estimate reads at most (a cheap fit)
OPPORTUNITY_ROWS = 200_000


def labelled_rows(predictions: pd.DataFrame, feedback: pd.DataFrame, *, version: str,
                  max_rows: int | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """``version``'s logged rows (their raw features) that got a label, oldest first, and
    the labels (the latest label of a row wins)."""
    mine = predictions.loc[predictions["model_version"] == version]
    labels = feedback.sort_values("ts").drop_duplicates(KEY, keep="last")[[*KEY, "label"]]
    joined = mine.merge(labels, on=KEY, how="inner").sort_values("ts")
    joined = joined[np.isfinite(joined["label"])]
    if max_rows is not None:
        joined = joined.tail(max_rows)
    return joined.reset_index(drop=True), joined["label"].to_numpy()
