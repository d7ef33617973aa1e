"""What `retrain watch` watches and when it starts a cycle: the monitor and the schedule,
performance, drift and opportunity triggers.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from retrain.config.base import _Section
from retrain.errors import InvalidValueError


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
