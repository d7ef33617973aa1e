"""Each trigger's condition on one check: demand, performance, opportunity, drift and schedule,
with the debounce that borderline ones need.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from retrain.config import TriggersConfig
from retrain.cron import parse_cached
from retrain.triggers.inputs import Hold, TriggerInputs, TriggerKind, _num
from retrain.triggers.state import TriggerState


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


_NO_SCHEDULE = _Due(_Condition(TriggerKind.SCHEDULE, False, False, Hold.OFF,
                               "no schedule configured"), None, None, None)


def _schedule(config: TriggersConfig, state: TriggerState, now: datetime) -> _Due:
    kind = TriggerKind.SCHEDULE
    spec = _schedule_spec(config)
    if spec is None:
        return _NO_SCHEDULE
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
    interval_s = config.schedule.interval_s
    if interval_s is None:  # _schedule_spec is None then, answered above
        return _NO_SCHEDULE
    interval = timedelta(seconds=interval_s)
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
