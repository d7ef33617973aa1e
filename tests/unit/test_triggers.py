import json
from datetime import datetime, timedelta, timezone

import pytest

from retrain.config import TriggersConfig
from retrain.errors import ConfigError
from retrain.triggers import (
    DemandRequest,
    Hold,
    MonitorSignals,
    TriggerInputs,
    TriggerKind,
    TriggerState,
    evaluate,
)

UTC = timezone.utc
T0 = datetime(2026, 3, 2, 12, 30, tzinfo=UTC)  # a Monday
QUIET = MonitorSignals(drift_detected=False, rows=1000, live_metric=0.80, labelled=500)
DRIFTED = MonitorSignals(drift_detected=True, drifted_features=("dep_delay",),
                         drift_summary="DRIFT: 1/3 features", rows=1000,
                         live_metric=0.80, labelled=500)
ASK = (DemandRequest("req-1", "new labels", "cli"),)


def policy(**overrides) -> TriggersConfig:
    """Quiet by default: no debounce, no cooldown, a generous cap, no schedule; drift fires
    beside labels (its deferral to them has tests of its own)."""
    raw = {"debounce": 1, "cooldown_s": 0, "max_cycles": 100, "period_s": 86_400,
           "drift": {"defer_to_labels": False}}
    return TriggersConfig.model_validate({**raw, **overrides})


def inputs(now=T0, monitor=QUIET, demands=(), metric="auc", champion=0.80) -> TriggerInputs:
    return TriggerInputs(now=now, metric=metric, champion_metric=champion, monitor=monitor,
                         demands=demands)


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def watch(config, times, monitor=QUIET, state=None, demands_at=()):
    """Run checks at ``times`` like the controller: start a cycle whenever one fires."""
    state = state or TriggerState()
    fired = []
    for now in times:
        ev = evaluate(config, state, inputs(now, monitor,
                                            ASK if now in demands_at else ()))
        state = ev.state
        if ev.fired:
            state = state.started(now)
            fired.append((now, ev.fired))
    return fired, state


# --- each trigger fires when it should and not otherwise ------------------------------------

def test_nothing_fires_on_quiet_inputs_and_every_trigger_says_why():
    ev = evaluate(policy(), TriggerState(), inputs())
    assert ev.fired is None and ev.suppressed_by is None and ev.demand_ids == ()
    assert [c.kind for c in ev.checks] == list(TriggerKind)  # priority order
    assert {c.kind: c.held_by for c in ev.checks} == {
        TriggerKind.ON_DEMAND: Hold.NOT_MET, TriggerKind.PERFORMANCE: Hold.NOT_MET,
        TriggerKind.OPPORTUNITY: Hold.TOO_FEW_LABELS, TriggerKind.DRIFT: Hold.NOT_MET,
        TriggerKind.SCHEDULE: Hold.OFF}
    assert ev.reason.startswith("no trigger:")
    assert "within tolerance 0.016 (2.0% of the champion's)" in ev.reason


def test_on_demand_fires_and_names_the_requests():
    two = (*ASK, DemandRequest("req-2", source="http"))
    ev = evaluate(policy(), TriggerState(), inputs(demands=two))
    assert ev.fired is TriggerKind.ON_DEMAND and ev.demand_ids == ("req-1", "req-2")
    assert "req-1 (new labels) via cli" in ev.reason and "req-2 via http" in ev.reason


def test_on_demand_ignores_the_cooldown_but_respects_the_cap():
    config = policy(cooldown_s=3600, max_cycles=2, period_s=86_400)
    state = TriggerState().started(T0 - minutes(10))
    ev = evaluate(config, state, inputs(demands=ASK))
    assert ev.fired is TriggerKind.ON_DEMAND and "cooldown does not apply" in ev.reason
    state = ev.state.started(T0)
    capped = evaluate(config, state, inputs(T0 + minutes(1), demands=ASK))
    assert capped.fired is None and capped.suppressed_by is Hold.CAP
    assert capped.demand_ids == ()
    assert "respects the cap" in capped.reason and "max_cycles=2" in capped.reason
    # the older start leaves the 24 h window first
    frees = (T0 - minutes(10) + timedelta(days=1)).isoformat()
    assert f"may start at {frees}" in capped.reason


@pytest.mark.parametrize(("metric", "champion", "live", "fires"), [
    ("auc", 0.80, 0.77, True),     # 0.03 below, tolerance 0.02
    ("auc", 0.80, 0.78, False),    # exactly the tolerance: not beyond it
    ("auc", 0.80, 0.79, False),
    ("auc", 0.80, 0.90, False),    # better
    ("rmse", 10.0, 10.03, True),   # lower is better: above by 0.03
    ("rmse", 10.0, 10.02, False),
    ("rmse", 10.0, 9.0, False),    # better
    ("logloss", 0.40, 0.45, True),
    ("accuracy", 0.90, 0.85, True),
])
def test_performance_fires_beyond_tolerance_in_the_metrics_direction(metric, champion, live,
                                                                     fires):
    seen = MonitorSignals(drift_detected=False, rows=1000, live_metric=live, labelled=300)
    ev = evaluate(policy(performance={"tolerance": 0.02, "min_samples": 200}), TriggerState(),
                  inputs(monitor=seen, metric=metric, champion=champion))
    assert (ev.fired is TriggerKind.PERFORMANCE) is fires
    check = ev.check(TriggerKind.PERFORMANCE)
    assert check.holds is fires and check.held_by is (None if fires else Hold.NOT_MET)
    assert ("beyond tolerance 0.02" if fires else "within tolerance 0.02") in check.detail


def test_performance_needs_min_samples_labels_and_a_champion_metric():
    config = policy(performance={"tolerance": 0.02, "min_samples": 200})
    bad = dict(drift_detected=False, rows=1000, live_metric=0.60)
    few = evaluate(config, TriggerState(), inputs(monitor=MonitorSignals(**bad, labelled=199)))
    assert few.fired is None
    assert few.check(TriggerKind.PERFORMANCE).held_by is Hold.TOO_FEW_LABELS
    assert "199 labelled predictions, fewer than min_samples=200" in few.reason
    enough = evaluate(config, TriggerState(), inputs(monitor=MonitorSignals(**bad, labelled=200)))
    assert enough.fired is TriggerKind.PERFORMANCE
    no_champion = evaluate(config, TriggerState(),
                           inputs(monitor=MonitorSignals(**bad, labelled=500), champion=None))
    assert no_champion.check(TriggerKind.PERFORMANCE).held_by is Hold.NO_BASELINE
    for missing in (None, float("nan")):  # nan: e.g. auc while every label is one class
        no_value = MonitorSignals(drift_detected=False, rows=1000, live_metric=missing,
                                  labelled=500)
        ev = evaluate(config, TriggerState(), inputs(monitor=no_value))
        assert ev.fired is None and ev.check(TriggerKind.PERFORMANCE).held_by is Hold.NO_BASELINE
        assert json.loads(json.dumps(ev.to_dict()))["inputs"]["monitor"]["live_metric"] is None
    nan_champion = inputs(monitor=MonitorSignals(**bad, labelled=500), champion=float("nan"))
    assert evaluate(config, TriggerState(), nan_champion).fired is None
    off = policy(performance={"enabled": False})
    assert evaluate(off, TriggerState(), inputs(monitor=MonitorSignals(**bad, labelled=500))
                    ).check(TriggerKind.PERFORMANCE).held_by is Hold.OFF


def test_drift_fires_on_detected_drift_only():
    ev = evaluate(policy(), TriggerState(), inputs(monitor=DRIFTED))
    assert ev.fired is TriggerKind.DRIFT
    assert "dep_delay" in ev.reason and "DRIFT: 1/3 features" in ev.reason
    assert evaluate(policy(), TriggerState(), inputs()).fired is None
    unknown = MonitorSignals(drift_detected=None, rows=40, live_metric=0.8, labelled=500)
    ev = evaluate(policy(), TriggerState(), inputs(monitor=unknown))
    assert ev.fired is None and ev.check(TriggerKind.DRIFT).held_by is Hold.NO_DRIFT_DATA
    off = evaluate(policy(drift={"enabled": False}), TriggerState(), inputs(monitor=DRIFTED))
    assert off.fired is None and off.check(TriggerKind.DRIFT).held_by is Hold.OFF


def test_priority_on_demand_then_performance_then_drift_then_schedule():
    config = policy(schedule={"interval_s": 60})
    due = TriggerState(schedule_slot=T0 - minutes(5), schedule_spec="interval:60.0")
    worse = MonitorSignals(drift_detected=True, rows=1000, live_metric=0.50, labelled=500)
    ev = evaluate(config, due, inputs(monitor=worse, demands=ASK))
    assert ev.fired is TriggerKind.ON_DEMAND
    assert [c.held_by for c in ev.checks[1:]] == [Hold.OUTRANKED, Hold.TOO_FEW_LABELS,
                                                  Hold.OUTRANKED, Hold.OUTRANKED]
    assert "also ready: performance, drift, schedule" in ev.reason
    assert evaluate(config, due, inputs(monitor=worse)).fired is TriggerKind.PERFORMANCE
    assert evaluate(config, due, inputs(monitor=DRIFTED)).fired is TriggerKind.DRIFT
    assert evaluate(config, due, inputs()).fired is TriggerKind.SCHEDULE


# --- debounce, cooldown, cap ----------------------------------------------------------------

# borderline: beyond the tolerance (0.016 on 0.80), short of the immediate 2x
WORSE = MonitorSignals(drift_detected=False, rows=1000, live_metric=0.775, labelled=500)
UNKNOWN = MonitorSignals(drift_detected=None, rows=10, live_metric=None, labelled=0)


@pytest.mark.parametrize(("kind", "bad"), [(TriggerKind.DRIFT, DRIFTED),
                                           (TriggerKind.PERFORMANCE, WORSE)])
def test_debounce_needs_n_consecutive_checks_and_a_break_resets(kind, bad):
    config = policy(debounce=3)

    def run(sequence):
        state, outcomes = TriggerState(), []
        for i, seen in enumerate(sequence):
            ev = evaluate(config, state, inputs(T0 + minutes(i), seen))
            state = ev.state
            outcomes.append(ev.fired)
        return outcomes, ev

    outcomes, ev = run([bad, bad])
    assert outcomes == [None, None]
    assert ev.check(kind).held_by is Hold.DEBOUNCE and "(2/3 consecutive checks)" in ev.reason
    assert run([bad, bad, bad])[0] == [None, None, kind]
    # a check where it does not hold, or cannot be judged, starts the count again
    for gap in (QUIET, UNKNOWN):
        assert run([bad, bad, gap, bad, bad])[0] == [None] * 5
        assert run([bad, bad, gap, bad, bad, bad])[0] == [None] * 5 + [kind]


def test_a_started_cycle_resets_debounce():
    config = policy(debounce=2)
    fired, _ = watch(config, [T0 + minutes(i) for i in range(6)], monitor=DRIFTED)
    # fires on the 2nd check, then must build up again: 4th, 6th
    assert [t for t, _ in fired] == [T0 + minutes(1), T0 + minutes(3), T0 + minutes(5)]


def test_cooldown_holds_until_it_ends_and_the_condition_keeps_counting():
    config = policy(cooldown_s=3600, debounce=2)
    state = TriggerState().started(T0)
    state = evaluate(config, state, inputs(T0 + minutes(30), DRIFTED)).state
    held = evaluate(config, state, inputs(T0 + minutes(59.99), DRIFTED))
    assert held.fired is None and held.suppressed_by is Hold.COOLDOWN
    assert held.check(TriggerKind.DRIFT).held_by is Hold.COOLDOWN
    assert f"lasts until {(T0 + minutes(60)).isoformat()}" in held.reason
    # debounced during the cooldown: fires the moment it ends
    ev = evaluate(config, held.state, inputs(T0 + minutes(60), DRIFTED))
    assert ev.fired is TriggerKind.DRIFT


def test_cap_counts_starts_in_a_sliding_window():
    config = policy(max_cycles=3, period_s=3600, cooldown_s=0)
    times = [T0 + minutes(m) for m in (0, 10, 20, 30, 59, 60, 65, 70, 80, 81)]
    fired, state = watch(config, times, monitor=DRIFTED)
    # three in the first hour; the 0-minute start leaves the window at 60, the 10 at 70, ...
    assert [t for t, _ in fired] == [T0 + minutes(m) for m in (0, 10, 20, 60, 70, 80)]
    assert state.starts == tuple(T0 + minutes(m) for m in (60, 70, 80))
    ev = evaluate(config, state, inputs(T0 + minutes(90), DRIFTED))
    assert ev.suppressed_by is Hold.CAP and ev.state.starts == state.starts
    # more starts than the cap (cycles started outside the watcher): wait for enough to leave
    busy = TriggerState(starts=tuple(T0 + minutes(m) for m in (0, 10, 20, 30)))
    held = evaluate(policy(max_cycles=2, period_s=3600), busy,
                    inputs(T0 + minutes(40), demands=ASK))
    assert held.suppressed_by is Hold.CAP
    assert f"4 cycles started in the last 3600 s (max_cycles=2); the next may start at " \
           f"{(T0 + minutes(80)).isoformat()}" in held.reason


def test_the_cap_holds_on_demand_but_the_window_is_pruned_in_the_state():
    config = policy(max_cycles=1, period_s=3600, cooldown_s=3600)
    state = TriggerState().started(T0)
    assert evaluate(config, state, inputs(T0 + minutes(59), demands=ASK)).fired is None
    later = evaluate(config, state, inputs(T0 + minutes(60), demands=ASK))
    assert later.fired is TriggerKind.ON_DEMAND and later.state.starts == ()


# --- schedule -------------------------------------------------------------------------------

def test_interval_schedule_arms_then_fires_once_per_interval():
    config = policy(schedule={"interval_s": 3600})
    times = [T0 + minutes(m) for m in (0, 30, 59, 60, 61, 90, 119, 120, 121)]
    fired, _ = watch(config, times)
    assert fired == [(T0 + minutes(60), TriggerKind.SCHEDULE),
                     (T0 + minutes(120), TriggerKind.SCHEDULE)]


def test_interval_counts_from_any_cycle_start():
    config = policy(schedule={"interval_s": 3600})
    times = [T0 + minutes(m) for m in (0, 30, 60, 89, 90)]
    fired, _ = watch(config, times, demands_at={T0 + minutes(30)})
    assert fired == [(T0 + minutes(30), TriggerKind.ON_DEMAND),
                     (T0 + minutes(90), TriggerKind.SCHEDULE)]


def test_a_due_slot_does_not_fire_twice_even_if_no_cycle_was_recorded():
    for schedule in ({"interval_s": 3600}, {"cron": "0 * * * *"}):
        config = policy(schedule=schedule)
        state = evaluate(config, TriggerState(), inputs(T0)).state  # arms
        # interval: an hour after arming; cron: the 13:00 slot
        due = T0 + (minutes(60) if "interval_s" in schedule else minutes(30))
        assert evaluate(config, state, inputs(due - minutes(1))).fired is None
        ev = evaluate(config, state, inputs(due))
        assert ev.fired is TriggerKind.SCHEDULE, schedule
        # the controller never called started(): the same slot still fires no second time
        again = evaluate(config, ev.state, inputs(due + minutes(1)))
        assert again.fired is None, schedule
        assert again.check(TriggerKind.SCHEDULE).held_by is Hold.NOT_MET


def test_cron_schedule_fires_once_per_slot_and_folds_missed_slots():
    config = policy(schedule={"cron": "0 * * * *"})  # hourly
    times = [T0 + minutes(m) for m in (0, 29, 30, 30.5, 31, 89, 90, 91)] + [
        T0 + minutes(60 * 4)]  # the controller was down for three slots
    fired, state = watch(config, times)
    hour = T0.replace(minute=0)
    assert fired == [(T0 + minutes(30), TriggerKind.SCHEDULE),
                     (T0 + minutes(90), TriggerKind.SCHEDULE),
                     (T0 + minutes(240), TriggerKind.SCHEDULE)]
    assert state.schedule_slot == hour + timedelta(hours=4)
    ev = evaluate(config, state, inputs(T0 + minutes(241)))
    assert ev.fired is None and ev.next_schedule == hour + timedelta(hours=5)


def test_first_check_arms_the_cron_without_catching_up():
    config = policy(schedule={"cron": "0 3 * * 1"})
    ev = evaluate(config, TriggerState(), inputs(T0))  # Monday 12:30, slot 03:00 passed
    assert ev.fired is None and "armed" in ev.reason
    assert ev.next_schedule == datetime(2026, 3, 9, 3, tzinfo=UTC)


def test_a_slot_held_by_the_cooldown_stays_due_and_fires_once():
    config = policy(schedule={"cron": "0 * * * *"}, cooldown_s=7200)
    state = evaluate(config, TriggerState(), inputs(T0)).state  # armed at 12:00
    state = state.started(T0 + minutes(20))  # a cycle at 12:50, say on demand
    held = evaluate(config, state, inputs(T0 + minutes(31)))  # 13:01
    assert held.suppressed_by is Hold.COOLDOWN
    times = [T0 + minutes(m) for m in (60, 90, 140, 141, 150)]
    fired, _ = watch(config, times, state=held.state)
    assert fired == [(T0 + minutes(140), TriggerKind.SCHEDULE)]  # 14:50, once


def test_a_cycle_for_another_trigger_serves_the_due_slot():
    config = policy(schedule={"cron": "0 * * * *"})
    times = [T0, T0 + minutes(31), T0 + minutes(32)]
    fired, _ = watch(config, times, demands_at={T0 + minutes(31)})
    assert fired == [(T0 + minutes(31), TriggerKind.ON_DEMAND)]


def test_a_changed_schedule_is_armed_afresh():
    interval = policy(schedule={"interval_s": 60})
    state = evaluate(interval, TriggerState(), inputs(T0)).state
    cron = policy(schedule={"cron": "*/5 * * * *"})
    ev = evaluate(cron, state, inputs(T0 + minutes(2)))
    assert ev.fired is None and "armed" in ev.reason
    assert evaluate(cron, ev.state, inputs(T0 + minutes(5))).fired is TriggerKind.SCHEDULE


# --- state and record -----------------------------------------------------------------------

def test_state_round_trips_through_json_and_a_restart_resumes_exactly():
    config = policy(debounce=3, schedule={"cron": "*/10 * * * *"}, max_cycles=5,
                    cooldown_s=300)
    times = [T0 + minutes(m) for m in range(0, 45, 3)]
    _, state = watch(config, times, monitor=DRIFTED, demands_at={T0 + minutes(6)})
    state = evaluate(config, state, inputs(T0 + minutes(46), DRIFTED)).state
    assert state.starts and state.drift_streak > 0 and state.schedule_slot is not None
    restored = TriggerState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored == state
    later = inputs(T0 + minutes(50), DRIFTED)
    assert evaluate(config, restored, later) == evaluate(config, state, later)


def test_evaluation_record_is_json_with_inputs_policy_and_outcome():
    ev = evaluate(policy(debounce=2), TriggerState(), inputs(monitor=DRIFTED, demands=ASK))
    record = json.loads(json.dumps(ev.to_dict()))
    assert record["fired"] == "on_demand" and record["demand_ids"] == ["req-1"]
    assert record["inputs"]["monitor"]["drifted_features"] == ["dep_delay"]
    assert record["inputs"]["now"] == T0.isoformat() and record["policy"]["debounce"] == 2
    assert {c["kind"]: c["held_by"] for c in record["checks"]}["drift"] == "debounce"
    assert record["state"]["drift_streak"] == 1


@pytest.mark.parametrize(("raw", "words"), [
    ([], "must be a mapping"),
    ({"version": 99}, "version 99"),
    ({"last_start": "yesterday"}, "last_start must be an ISO time"),
    ({"last_start": "2026-03-02T12:00:00"}, "with a UTC offset"),
    ({"starts": "2026-03-02T12:00:00+00:00"}, "starts must be a list"),
    ({"drift_streak": -1}, "drift_streak must be a whole number"),
])
def test_a_malformed_state_is_refused_with_the_fix(raw, words):
    with pytest.raises(ConfigError, match="trigger state") as info:
        TriggerState.from_dict(raw)
    assert words in str(info.value)


def test_inputs_are_checked():
    with pytest.raises(ConfigError, match="timezone-aware"):
        inputs(now=datetime(2026, 3, 2, 12))
    with pytest.raises(ConfigError, match="no known direction"):
        inputs(metric="f1")
    with pytest.raises(ConfigError, match="timezone-aware"):
        TriggerState().started(datetime(2026, 3, 2))
    plus_one = timezone(timedelta(hours=1))
    assert inputs(now=datetime(2026, 3, 2, 13, 30, tzinfo=plus_one)).now == T0


# -- tolerances that fit every metric, evidence-based debounce, opportunity ------------------
@pytest.mark.parametrize("metric, champion, live, fires", [
    ("auc", 0.80, 0.785, False),   # 0.015 below: within 2 % (0.016)
    ("auc", 0.80, 0.78, True),     # 0.02 below: beyond it
    ("rmse", 100.0, 101.5, False),  # 1.5 above: within 2 % of 100 (an absolute 0.02 fired)
    ("rmse", 100.0, 103.0, True),
])
def test_the_default_tolerance_is_relative_so_one_default_fits_auc_and_rmse(metric, champion,
                                                                          live, fires):
    monitor = MonitorSignals(drift_detected=False, rows=1000, live_metric=live, labelled=500)
    ev = evaluate(policy(), TriggerState(), inputs(monitor=monitor, metric=metric,
                                                   champion=champion))
    assert (ev.fired is TriggerKind.PERFORMANCE) is fires


def test_a_drop_far_beyond_tolerance_fires_at_once_and_a_borderline_one_waits():
    config = policy(debounce=2)  # tolerance 0.016 on 0.80; immediate at 0.032
    borderline = MonitorSignals(drift_detected=False, rows=1000, live_metric=0.775,
                                labelled=500)
    first = evaluate(config, TriggerState(), inputs(monitor=borderline))
    assert first.fired is None and first.check(TriggerKind.PERFORMANCE).held_by is Hold.DEBOUNCE
    second = evaluate(config, first.state, inputs(T0 + minutes(1), monitor=borderline))
    assert second.fired is TriggerKind.PERFORMANCE
    abrupt = MonitorSignals(drift_detected=False, rows=1000, live_metric=0.70, labelled=500)
    ev = evaluate(config, TriggerState(), inputs(monitor=abrupt))
    assert ev.fired is TriggerKind.PERFORMANCE and "clear at the first check" in ev.reason


def test_a_drift_in_most_features_fires_at_once():
    config = policy(debounce=3, drift={"defer_to_labels": False})
    some = MonitorSignals(drift_detected=True, drifted_features=("a",), drifted_share=0.34,
                          rows=1000, live_metric=0.80, labelled=500)
    assert evaluate(config, TriggerState(), inputs(monitor=some)).fired is None
    most = MonitorSignals(drift_detected=True, drifted_features=("a", "b"), drifted_share=0.67,
                          rows=1000, live_metric=0.80, labelled=500)
    assert evaluate(config, TriggerState(), inputs(monitor=most)).fired is TriggerKind.DRIFT


def test_opportunity_fires_on_evidence_alone_when_nothing_degrades():
    from retrain.opportunity import Opportunity

    clear = Opportunity(0.012, 0.004, 0.020, 5000, 5000, "auc")
    unsure = Opportunity(0.004, -0.002, 0.010, 5000, 5000, "auc")
    for chance, fires in ((clear, True), (unsure, False)):
        monitor = MonitorSignals(drift_detected=False, rows=1000, live_metric=0.81,
                                 labelled=10_000, opportunity=chance)
        ev = evaluate(policy(debounce=3), TriggerState(), inputs(monitor=monitor))
        assert (ev.fired is TriggerKind.OPPORTUNITY) is fires
        assert "[+0.0040, +0.0200]" in ev.reason if fires else "not above 0.0008" in ev.reason
    # a gain too small to pay for a cycle: with the default bar of 0.1 % of the champion's
    # metric (0.0008 on 0.80), a lower bound of +0.0005 does not fire; with no bar it does
    tiny = Opportunity(0.004, 0.0005, 0.008, 5000, 5000, "auc")
    monitor = MonitorSignals(drift_detected=False, rows=1000, live_metric=0.81,
                             labelled=10_000, opportunity=tiny)
    ev = evaluate(policy(), TriggerState(), inputs(monitor=monitor))
    assert ev.fired is None and "lower bound not above 0.0008" in ev.reason
    anything = policy(opportunity={"min_relative_improvement": 0.0})
    assert evaluate(anything, TriggerState(), inputs(monitor=monitor)).fired is \
        TriggerKind.OPPORTUNITY
    # a bar above zero asks for more
    monitor = MonitorSignals(drift_detected=False, rows=1000, live_metric=0.81,
                             labelled=10_000, opportunity=clear)
    ev = evaluate(policy(opportunity={"min_improvement": 0.005}), TriggerState(),
                  inputs(monitor=monitor))
    assert ev.fired is None


def test_drift_defers_to_labels_when_enough_arrived_and_fires_without_them():
    config = policy(drift={"defer_to_labels": True})
    with_labels = MonitorSignals(drift_detected=True, drifted_features=("temp",),
                                 drifted_share=0.36, rows=1000, live_metric=0.80,
                                 labelled=500)
    ev = evaluate(config, TriggerState(), inputs(monitor=with_labels))
    assert ev.fired is None and ev.check(TriggerKind.DRIFT).held_by is Hold.DEFERRED
    assert "500 labels judge instead" in ev.reason
    # the labels show the drift hurts: the performance trigger fires on them
    hurt = MonitorSignals(drift_detected=True, drifted_features=("temp",), rows=1000,
                          live_metric=0.70, labelled=500)
    assert evaluate(config, TriggerState(), inputs(monitor=hurt)).fired is \
        TriggerKind.PERFORMANCE
    # too few labels to judge: drift is the only evidence, and fires
    blind = MonitorSignals(drift_detected=True, drifted_features=("temp",), rows=1000,
                           live_metric=None, labelled=20)
    assert evaluate(config, TriggerState(), inputs(monitor=blind)).fired is TriggerKind.DRIFT
