"""What one trigger check looks at: the monitor's signals, on-demand requests, the champion's
metric and the time, and the kinds of triggers and holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from retrain.config import METRIC_DIRECTIONS
from retrain.errors import ConfigError


class TriggerKind(str, Enum):
    """The triggers, in priority order."""

    ON_DEMAND = "on_demand"
    PERFORMANCE = "performance"
    OPPORTUNITY = "opportunity"
    DRIFT = "drift"
    SCHEDULE = "schedule"

    def __str__(self) -> str:
        return self.value


class Hold(str, Enum):
    """Why a trigger did not fire on this check."""

    OFF = "off"  # not configured or disabled
    NOT_MET = "not_met"  # the condition does not hold
    NO_DRIFT_DATA = "no_drift_data"  # the monitor could not judge drift (too few live rows)
    TOO_FEW_LABELS = "too_few_labels"  # the live metric rests on fewer than min_samples
    NO_BASELINE = "no_baseline"  # no champion metric, or no live metric, to compare
    DEBOUNCE = "debounce"  # holds, but not yet on `debounce` consecutive checks
    COOLDOWN = "cooldown"  # ready, but the last cycle started too recently
    CAP = "cap"  # ready, but max_cycles already started within period_s
    OUTRANKED = "outranked"  # ready, but served by the cycle a higher-priority trigger started
    DEFERRED = "deferred"  # drift, while enough labels let the label-based triggers judge

    def __str__(self) -> str:
        return self.value


def _utc(t: datetime, what: str) -> datetime:
    if not isinstance(t, datetime) or t.tzinfo is None or t.utcoffset() is None:
        raise ConfigError(
            f"{what} must be a timezone-aware datetime in UTC (datetime.now(timezone.utc)), "
            f"but got {t!r}"
        )
    return t.astimezone(timezone.utc)


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@dataclass(frozen=True)
class MonitorSignals:
    """What the monitor saw on this check."""

    #: None when drift could not be judged (too few live rows, no reference sketch)
    drift_detected: bool | None = None
    drifted_features: tuple[str, ...] = ()
    drift_summary: str = ""
    #: live rows the drift check read
    rows: int = 0
    #: the champion's metric on labelled live predictions; None while there are none
    live_metric: float | None = None
    #: labelled predictions ``live_metric`` rests on
    labelled: int = 0
    #: the share of features that drifted (None: not judged)
    drifted_share: float | None = None
    #: the cheap challenger against the champion on new labels (`retrain.opportunity`;
    #: None: not judged)
    opportunity: Any = None

    def __post_init__(self) -> None:
        if self.rows < 0 or self.labelled < 0:
            raise ConfigError(
                f"rows and labelled count rows, so must be >= 0, but got rows={self.rows}, "
                f"labelled={self.labelled}"
            )
        # NaN is how numeric code says "no figure" (auc on labels of one class): same as None
        if self.live_metric is not None and not math.isfinite(self.live_metric):
            object.__setattr__(self, "live_metric", None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "drift_detected": self.drift_detected,
            "drifted_features": list(self.drifted_features),
            "drift_summary": self.drift_summary,
            "rows": self.rows,
            "live_metric": self.live_metric,
            "labelled": self.labelled,
            "drifted_share": self.drifted_share,
            "opportunity": None if self.opportunity is None else self.opportunity.to_dict(),
        }


@dataclass(frozen=True)
class DemandRequest:
    """One on-demand request: ``retrain run``, the admin HTTP endpoint or a Ray job."""

    id: str
    reason: str = ""
    #: who asked: "cli", "http", "job", ...
    source: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            raise ConfigError("an on-demand request needs a non-empty id to be traced by")

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "reason": self.reason, "source": self.source}


@dataclass(frozen=True)
class TriggerInputs:
    """Everything one check looks at besides the persisted state."""

    #: the time of the check (timezone-aware; normalised to UTC)
    now: datetime
    #: the project's primary metric; its direction comes from METRIC_DIRECTIONS
    metric: str
    #: the champion's evaluated holdout metric; None when there is no champion yet
    champion_metric: float | None = None
    monitor: MonitorSignals = field(default_factory=MonitorSignals)
    demands: tuple[DemandRequest, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "now", _utc(self.now, "now"))
        if self.metric not in METRIC_DIRECTIONS:
            raise ConfigError(
                f"metric {self.metric!r} has no known direction; use one of "
                f"{sorted(METRIC_DIRECTIONS)}"
            )
        if self.champion_metric is not None and not math.isfinite(self.champion_metric):
            object.__setattr__(self, "champion_metric", None)  # as for MonitorSignals
        object.__setattr__(self, "demands", tuple(self.demands))

    @property
    def greater_is_better(self) -> bool:
        return METRIC_DIRECTIONS[self.metric]

    def to_dict(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "metric": self.metric,
            "greater_is_better": self.greater_is_better,
            "champion_metric": self.champion_metric,
            "monitor": self.monitor.to_dict(),
            "demands": [d.to_dict() for d in self.demands],
        }
