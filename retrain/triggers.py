"""When to start a retraining cycle: pure trigger policy, no Ray, no MLflow, no I/O.

`evaluate(config, state, inputs) -> Evaluation` looks at one check's inputs (what the monitor
saw, the champion's evaluated metric, on-demand requests, the time) and the persisted
`TriggerState`, and says which trigger fired, or what held it back, with a reason a person can
read, the inputs, and the NEW state. The controller persists ``evaluation.state`` after every
check and, when it actually starts a cycle, records that with ``state.started(now)``:

    evaluation = evaluate(config.triggers, state, inputs)
    state = evaluation.state
    if evaluation.fired:
        state = state.started(inputs.now)   # also after a cycle started any other way
        ...start the cycle...
    persist(state.to_dict()); ledger.record(evaluation.to_dict())

Triggers, highest priority first (one cycle serves every trigger that is ready at once):

- on demand: any request (CLI, admin HTTP, Ray job). Ignores the cooldown, respects the cap.
- performance: the live metric is worse than the champion's evaluated holdout metric by more
  than ``tolerance`` (below it for higher-is-better metrics such as auc, above it for
  lower-is-better ones such as rmse), resting on at least ``min_samples`` labelled predictions.
- opportunity: a cheap challenger (the champion continued on the older new labels) beats the
  champion on the newest labels with evidence (`retrain.opportunity`): retraining would help
  although nothing degrades.
- drift: the monitor found the live inputs drifted from the champion's training data; with
  ``drift.defer_to_labels`` (default) only while too few labels arrived for the label-based
  triggers to judge (drift is a proxy for what labels show directly).
- schedule: ``interval_s`` after the last cycle start, or a ``cron`` slot that passed since the
  last slot handled. A due slot fires once; if the cooldown or the cap holds it back it stays
  due, and slots that pass meanwhile fold into that one cycle. The first check arms the
  schedule without firing (no catch-up for slots from before the controller ever ran).

Gates: borderline performance and drift conditions must hold on ``debounce`` consecutive
checks (a check where they do not hold, or cannot be judged, resets the count); a drop of
``immediate_factor`` times the tolerance, or a drift in ``drift.immediate_share`` of the
features, fires at the first check; no cycle starts within ``cooldown_s`` of
the last start (on demand excepted); at most ``max_cycles`` starts fall in any sliding window
of ``period_s`` seconds (a start at time s counts while now - s < period_s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from retrain.config import METRIC_DIRECTIONS, TriggersConfig
from retrain.cron import parse_cached
from retrain.errors import ConfigError

#: bump when `TriggerState.to_dict` changes shape; older states are still read
STATE_VERSION = 1


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


# ---------------------------------------------------------------------------------------------
# inputs


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


# ---------------------------------------------------------------------------------------------
# state


def _time_from(raw: Any, key: str) -> datetime | None:
    value = raw.get(key)
    if value is None:
        return None
    try:
        return _utc(datetime.fromisoformat(value), key)
    except (TypeError, ValueError, ConfigError):
        raise ConfigError(
            f"trigger state: {key} must be an ISO time with a UTC offset or null, but got "
            f"{value!r}; fix or delete the state file to start afresh"
        ) from None


def _count_from(raw: Any, key: str) -> int:
    value = raw.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(
            f"trigger state: {key} must be a whole number >= 0, but got {value!r}; fix or "
            f"delete the state file to start afresh"
        )
    return value


@dataclass(frozen=True)
class TriggerState:
    """What the triggers remember between checks; persisted by the controller as JSON.

    Change it only through `evaluate` (returns the next state) and `started` (a cycle began).
    """

    #: when the last cycle started (cooldown and the interval schedule count from it)
    last_start: datetime | None = None
    #: cycle starts that may still count against the cap (pruned to the window by `evaluate`)
    starts: tuple[datetime, ...] = ()
    #: consecutive checks on which the drift / performance condition held
    drift_streak: int = 0
    performance_streak: int = 0
    #: the last schedule slot handled (cron: the slot's time; interval: the time the interval
    #: was due, or when the schedule was armed)
    schedule_slot: datetime | None = None
    #: the schedule ``schedule_slot`` belongs to ("cron:0 3 * * 1", "interval:3600.0"); a
    #: changed schedule is re-armed instead of firing for the old one's slots
    schedule_spec: str | None = None

    def __post_init__(self) -> None:
        if self.last_start is not None:
            object.__setattr__(self, "last_start", _utc(self.last_start, "last_start"))
        if self.schedule_slot is not None:
            object.__setattr__(self, "schedule_slot", _utc(self.schedule_slot, "schedule_slot"))
        object.__setattr__(
            self, "starts", tuple(sorted(_utc(s, "starts") for s in self.starts))
        )

    def started(self, at: datetime) -> TriggerState:
        """The state after a cycle started at ``at``, whatever started it.

        The start counts for cooldown, cap and the interval schedule. Debounce counts restart
        from zero: the condition must build up again against the cycle's outcome.
        """
        at = _utc(at, "at")
        return replace(self, last_start=at, starts=(*self.starts, at), drift_streak=0,
                       performance_streak=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "last_start": _iso(self.last_start),
            "starts": [s.isoformat() for s in self.starts],
            "drift_streak": self.drift_streak,
            "performance_streak": self.performance_streak,
            "schedule_slot": _iso(self.schedule_slot),
            "schedule_spec": self.schedule_spec,
        }

    @classmethod
    def from_dict(cls, raw: Any) -> TriggerState:
        """Read a state written by `to_dict`; a malformed one raises `ConfigError`."""
        if not isinstance(raw, dict):
            raise ConfigError(
                f"trigger state must be a mapping as written by TriggerState.to_dict, but got "
                f"{type(raw).__name__}; fix or delete the state file to start afresh"
            )
        version = raw.get("version", STATE_VERSION)
        if version != STATE_VERSION:
            raise ConfigError(
                f"trigger state has version {version!r}, this retrain reads version "
                f"{STATE_VERSION}; upgrade retrain or delete the state file to start afresh"
            )
        starts = raw.get("starts", [])
        if not isinstance(starts, list):
            raise ConfigError(
                f"trigger state: starts must be a list of ISO times, but got {starts!r}"
            )
        spec = raw.get("schedule_spec")
        if spec is not None and not isinstance(spec, str):
            raise ConfigError(f"trigger state: schedule_spec must be text, but got {spec!r}")
        return cls(
            last_start=_time_from(raw, "last_start"),
            starts=tuple(_time_from({"starts": s}, "starts") for s in starts),
            drift_streak=_count_from(raw, "drift_streak"),
            performance_streak=_count_from(raw, "performance_streak"),
            schedule_slot=_time_from(raw, "schedule_slot"),
            schedule_spec=spec,
        )


# ---------------------------------------------------------------------------------------------
# outcome


@dataclass(frozen=True)
class TriggerCheck:
    """One trigger on one check: does its condition hold, did it fire, if not why not."""

    kind: TriggerKind
    #: the condition holds now (before debounce, cooldown and cap)
    holds: bool
    fired: bool
    #: why it did not fire (None when it fired)
    held_by: Hold | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "holds": self.holds, "fired": self.fired,
                "held_by": None if self.held_by is None else self.held_by.value,
                "detail": self.detail}


@dataclass(frozen=True)
class Evaluation:
    """The outcome of one check: fired or not, why, on what inputs, and the next state."""

    at: datetime
    #: the trigger that asks for a cycle now, or None
    fired: TriggerKind | None
    #: one line a person can read
    reason: str
    #: every trigger, in priority order
    checks: tuple[TriggerCheck, ...]
    #: the gate (cooldown or cap) that held back a trigger that was otherwise ready
    suppressed_by: Hold | None
    #: the on-demand requests the cycle serves (empty unless it starts)
    demand_ids: tuple[str, ...]
    inputs: dict[str, Any]
    #: the policy the check ran under, as configured
    policy: dict[str, Any]
    #: persist this; call ``state.started(now)`` when the cycle actually starts
    state: TriggerState
    #: when the schedule is next due (None: no schedule, or already due)
    next_schedule: datetime | None = None

    def check(self, kind: TriggerKind) -> TriggerCheck:
        return next(c for c in self.checks if c.kind is kind)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "fired": None if self.fired is None else self.fired.value,
            "reason": self.reason,
            "suppressed_by": None if self.suppressed_by is None else self.suppressed_by.value,
            "demand_ids": list(self.demand_ids),
            "checks": [c.to_dict() for c in self.checks],
            "inputs": self.inputs,
            "policy": self.policy,
            "state": self.state.to_dict(),
            "next_schedule": _iso(self.next_schedule),
        }


# ---------------------------------------------------------------------------------------------
# the conditions


@dataclass(frozen=True)
class _Condition:
    """A trigger's own verdict, before the shared gates (cooldown, cap)."""

    kind: TriggerKind
    holds: bool
    ready: bool  # holds and debounced: would fire if the gates allow
    held_by: Hold | None  # why not ready (None when ready)
    detail: str


def _demand(inputs: TriggerInputs) -> _Condition:
    if not inputs.demands:
        return _Condition(TriggerKind.ON_DEMAND, False, False, Hold.NOT_MET, "no request")
    asked = ", ".join(
        d.id + (f" ({d.reason})" if d.reason else "") + (f" via {d.source}" if d.source else "")
        for d in inputs.demands
    )
    return _Condition(TriggerKind.ON_DEMAND, True, True, None, f"requested: {asked}")


def _debounced(kind: TriggerKind, streak: int, debounce: int, detail: str, *,
               clear: bool = False) -> _Condition:
    """A condition that held on ``streak`` consecutive checks; ``clear``: far beyond its
    tolerance, it needs no second look (an abrupt change is answered at once)."""
    if clear:
        return _Condition(kind, True, True, None, f"{detail} (clear at the first check)")
    counted = f"{detail} ({min(streak, debounce)}/{debounce} consecutive checks)"
    if streak >= debounce:
        return _Condition(kind, True, True, None, counted)
    return _Condition(kind, True, False, Hold.DEBOUNCE, counted)


def _performance(config: TriggersConfig, streak: int,
                 inputs: TriggerInputs) -> tuple[_Condition, int]:
    """The performance condition and the new streak."""
    policy = config.performance
    kind = TriggerKind.PERFORMANCE
    live, labelled = inputs.monitor.live_metric, inputs.monitor.labelled
    metric, baseline = inputs.metric, inputs.champion_metric
    if not policy.enabled:
        return _Condition(kind, False, False, Hold.OFF, "disabled"), 0
    if baseline is None:
        return _Condition(kind, False, False, Hold.NO_BASELINE,
                          f"no evaluated champion {metric} to compare with"), 0
    if labelled < policy.min_samples:
        return _Condition(kind, False, False, Hold.TOO_FEW_LABELS,
                          f"live {metric} {_num(live)} rests on {labelled} labelled predictions, "
                          f"fewer than min_samples={policy.min_samples}"), 0
    if live is None:
        # enough labels but no figure: e.g. auc when every label so far is one class
        return _Condition(kind, False, False, Hold.NO_BASELINE,
                          f"no live {metric} on {labelled} labelled predictions"), 0
    # signed so that a positive drop is worse whatever the metric's direction
    drop = baseline - live if inputs.greater_is_better else live - baseline
    better = "higher" if inputs.greater_is_better else "lower"
    facts = (f"live {metric} {_num(live)} on {labelled} labels vs champion {_num(baseline)} "
             f"({better} is better): " + (f"{_num(drop)} worse" if drop > 0 else "not worse"))
    tolerance = policy.tolerance if policy.tolerance is not None \
        else policy.relative_tolerance * abs(baseline)
    shown = f"{tolerance:.4g}" + ("" if policy.tolerance is not None
                                  else f" ({policy.relative_tolerance:.1%} of the champion's)")
    # a hair of slack: 0.75 - 0.73 is 0.0200000000000000018 in floating point, not beyond 0.02
    if drop - tolerance > 1e-12:
        clear = drop - config.immediate_factor * tolerance > 1e-12
        return _debounced(kind, streak + 1, config.debounce,
                          f"{facts}, beyond tolerance {shown}", clear=clear), streak + 1
    return _Condition(kind, False, False, Hold.NOT_MET,
                      f"{facts}, within tolerance {shown}"), 0


def _opportunity(config: TriggersConfig, inputs: TriggerInputs) -> _Condition:
    """Retraining would help: a cheap challenger beats the champion on new labels with
    evidence. The interval is the evidence, so no debounce."""
    kind, policy = TriggerKind.OPPORTUNITY, config.opportunity
    if not policy.enabled:
        return _Condition(kind, False, False, Hold.OFF, "disabled")
    chance = inputs.monitor.opportunity
    if chance is None:
        return _Condition(kind, False, False, Hold.TOO_FEW_LABELS,
                          f"not judged (needs {policy.min_rows} new labelled rows and an "
                          "XGBoost champion)")
    reference = inputs.champion_metric if inputs.champion_metric is not None \
        else inputs.monitor.live_metric
    bar = max(policy.min_improvement,
              policy.min_relative_improvement * abs(reference or 0.0))
    if chance.low > bar:
        return _Condition(kind, True, True, None,
                          f"{chance.summary()}, lower bound above {bar:.4g}")
    return _Condition(kind, False, False, Hold.NOT_MET,
                      f"{chance.summary()}, lower bound not above {bar:.4g}")


def _drift(config: TriggersConfig, streak: int,
           inputs: TriggerInputs) -> tuple[_Condition, int]:
    """The drift condition and the new streak."""
    kind = TriggerKind.DRIFT
    seen = inputs.monitor
    summary = f": {seen.drift_summary}" if seen.drift_summary else ""
    if not config.drift.enabled:
        return _Condition(kind, False, False, Hold.OFF, "disabled"), 0
    if seen.drift_detected is None:
        return _Condition(kind, False, False, Hold.NO_DRIFT_DATA,
                          f"drift not judged on {seen.rows} live rows{summary}"), 0
    if not seen.drift_detected:
        return _Condition(kind, False, False, Hold.NOT_MET,
                          f"no drift in {seen.rows} live rows{summary}"), 0
    features = ", ".join(seen.drifted_features) or "features not listed"
    labels = config.performance.min_samples
    if config.drift.defer_to_labels and config.performance.enabled \
            and seen.labelled >= labels and seen.live_metric is not None:
        return _Condition(kind, True, False, Hold.DEFERRED,
                          f"live inputs drifted ({features}) in {seen.rows} rows{summary}; "
                          f"{seen.labelled} labels judge instead (drift.defer_to_labels)"), 0
    clear = seen.drifted_share is not None and seen.drifted_share >= config.drift.immediate_share
    return _debounced(kind, streak + 1, config.debounce,
                      f"live inputs drifted ({features}) in {seen.rows} rows{summary}",
                      clear=clear), streak + 1


def _schedule_spec(config: TriggersConfig) -> str | None:
    schedule = config.schedule
    if schedule.cron is not None:
        return f"cron:{schedule.cron}"
    if schedule.interval_s is not None:
        return f"interval:{float(schedule.interval_s)}"
    return None


@dataclass(frozen=True)
class _Due:
    condition: _Condition
    #: the slot this check is about: mark it handled when a cycle fires
    slot: datetime | None
    #: the state's slot after this check when nothing fires (arming)
    armed: datetime | None
    next_at: datetime | None


def _schedule(config: TriggersConfig, state: TriggerState, now: datetime) -> _Due:
    kind = TriggerKind.SCHEDULE
    spec = _schedule_spec(config)
    if spec is None:
        return _Due(_Condition(kind, False, False, Hold.OFF, "no schedule configured"),
                    None, None, None)
    # a schedule that changed since the slot was recorded starts over
    handled = state.schedule_slot if state.schedule_spec == spec else None
    cron_text = config.schedule.cron
    if cron_text is not None:
        cron = parse_cached(cron_text)
        latest = cron.last_at_or_before(now)
        upcoming = cron.next_after(now)
        if handled is None:
            # first check under this schedule: arm at the newest past slot, no catch-up
            return _Due(_Condition(kind, False, False, Hold.NOT_MET,
                                   f"cron {cron_text!r} armed; next slot {upcoming.isoformat()}"),
                        None, latest, upcoming)
        if latest > handled:
            return _Due(_Condition(kind, True, True, None,
                                   f"cron {cron_text!r} slot {latest.isoformat()} is due"),
                        latest, handled, None)
        return _Due(_Condition(kind, False, False, Hold.NOT_MET,
                               f"cron {cron_text!r}: next slot {upcoming.isoformat()}"),
                    None, handled, upcoming)
    interval = timedelta(seconds=config.schedule.interval_s)
    anchors = [t for t in (state.last_start, handled) if t is not None]
    if not anchors:
        # nothing started yet and never armed: the interval runs from this first check
        return _Due(_Condition(kind, False, False, Hold.NOT_MET,
                               f"every {interval} armed; due {(now + interval).isoformat()}"),
                    None, now, now + interval)
    due = max(anchors) + interval
    if now >= due:
        return _Due(_Condition(kind, True, True, None,
                               f"every {interval}: due since {due.isoformat()}"),
                    due, handled, None)
    return _Due(_Condition(kind, False, False, Hold.NOT_MET,
                           f"every {interval}: next due {due.isoformat()}"),
                None, handled, due)


# ---------------------------------------------------------------------------------------------
# the gates


def _cap(config: TriggersConfig, starts: tuple[datetime, ...],
         now: datetime) -> tuple[bool, str]:
    """Whether the cap blocks a start now, and the words for it. ``starts``: within window."""
    if len(starts) < config.max_cycles:
        return False, ""
    frees = starts[len(starts) - config.max_cycles] + timedelta(seconds=config.period_s)
    return True, (f"{len(starts)} cycles started in the last {config.period_s:g} s "
                  f"(max_cycles={config.max_cycles}); the next may start at {frees.isoformat()}")


def _cooldown(config: TriggersConfig, last_start: datetime | None,
              now: datetime) -> tuple[bool, str]:
    if last_start is None:
        return False, ""
    ends = last_start + timedelta(seconds=config.cooldown_s)
    if now >= ends:
        return False, ""
    return True, (f"the last cycle started at {last_start.isoformat()}, cooldown "
                  f"{config.cooldown_s:g} s lasts until {ends.isoformat()}")


def evaluate(config: TriggersConfig, state: TriggerState, inputs: TriggerInputs) -> Evaluation:
    """Decide whether a cycle should start now; pure. See the module docstring for the rules."""
    now = inputs.now
    window_start = now - timedelta(seconds=config.period_s)
    # a start after `now` (the clock stepped back) still counts: err towards fewer cycles
    starts = tuple(s for s in state.starts if s > window_start)

    performance, performance_streak = _performance(config, state.performance_streak, inputs)
    drift, drift_streak = _drift(config, state.drift_streak, inputs)
    schedule = _schedule(config, state, now)
    conditions = (_demand(inputs), performance, _opportunity(config, inputs), drift,
                  schedule.condition)

    capped, cap_text = _cap(config, starts, now)
    cooling, cooldown_text = _cooldown(config, state.last_start, now)

    fired: TriggerKind | None = None
    suppressed_by: Hold | None = None
    gate_text = ""
    checks: list[TriggerCheck] = []
    for c in conditions:
        if not c.ready:
            checks.append(TriggerCheck(c.kind, c.holds, False, c.held_by, c.detail))
            continue
        if fired is not None:
            checks.append(TriggerCheck(c.kind, c.holds, False, Hold.OUTRANKED,
                                       f"{c.detail}; served by the {fired} cycle"))
            continue
        if capped:
            gate, text = Hold.CAP, cap_text
            if c.kind is TriggerKind.ON_DEMAND:
                text += "; on demand ignores the cooldown but respects the cap"
        elif cooling and c.kind is not TriggerKind.ON_DEMAND:
            gate, text = Hold.COOLDOWN, cooldown_text
        else:
            fired = c.kind
            note = ("; cooldown does not apply on demand"
                    if c.kind is TriggerKind.ON_DEMAND and cooling else "")
            checks.append(TriggerCheck(c.kind, c.holds, True, None, c.detail + note))
            continue
        if suppressed_by is None:
            suppressed_by, gate_text = gate, f"{c.kind} ready ({c.detail}) but held: {text}"
        checks.append(TriggerCheck(c.kind, c.holds, False, gate, f"{c.detail}; held: {text}"))

    # the cycle serves a due schedule slot whichever trigger fired; a held slot stays due
    slot = schedule.slot if fired is not None and schedule.slot is not None else schedule.armed
    new_state = replace(state, starts=starts, drift_streak=drift_streak,
                        performance_streak=performance_streak, schedule_slot=slot,
                        schedule_spec=_schedule_spec(config))

    if fired is not None:
        reason = f"{fired} fired: {next(c.detail for c in checks if c.fired)}"
        outranked = [str(c.kind) for c in checks if c.held_by is Hold.OUTRANKED]
        if outranked:
            reason += f" (also ready: {', '.join(outranked)})"
    elif suppressed_by is not None:
        reason = gate_text
    else:
        reason = "no trigger: " + "; ".join(f"{c.kind} {c.detail}" for c in checks)

    demand_ids = tuple(d.id for d in inputs.demands) if fired is TriggerKind.ON_DEMAND else ()
    return Evaluation(
        at=now, fired=fired, reason=reason, checks=tuple(checks), suppressed_by=suppressed_by,
        demand_ids=demand_ids, inputs=inputs.to_dict(),
        policy=config.model_dump(mode="json"), state=new_state,
        next_schedule=schedule.next_at,
    )
