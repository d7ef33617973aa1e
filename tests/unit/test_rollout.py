"""The rollout state machine, its plan and its gates: pure, on seeded synthetic observations."""

import json
from dataclasses import replace

import numpy as np
import pytest

from retrain.config import config_from_dict
from retrain.errors import ConfigError
from retrain.ledger import EventKind
from retrain.rollout import (
    GateLimits,
    GateStatus,
    Observation,
    PredictionSummary,
    Rollout,
    RolloutPlan,
    Stage,
    Step,
    VersionStats,
    evaluate_gates,
    ledger_event,
    prediction_shift,
)
from serve.traffic import TrafficSplit

MINIMAL = {
    "project": {"name": "p"},
    "data": {"path": "data", "partition_column": "month", "target": "y"},
    "task": {"type": "classification"},
}
CHAMPION, CHALLENGER = "3", "4"


def _plan(**gates) -> RolloutPlan:
    return RolloutPlan(
        (
            Step(Stage.SMOKE, 0, 0, 50),
            Step(Stage.SHADOW, 0, 60, 200),
            *(Step(Stage.CANARY, p, 60, 200) for p in (5, 25, 50, 100)),
        ),
        GateLimits(**gates),
        sticky_key="x-user-id",
    )


def _stats(rng, n, *, errors=0, p99=20.0, shift=0.0, metric=None, labelled=0, healthy=None):
    # class-1 probabilities of a reasonable model: Beta(2, 5), mean 0.29
    predictions = np.clip(rng.beta(2, 5, n) + shift, 0, 1)
    return VersionStats(n, errors, p99, PredictionSummary.of(predictions), metric, labelled,
                        healthy)


def _obs(seed=0, n=1000, *, since=None, champion=None, **challenger):
    rng = np.random.default_rng(seed)
    base = _stats(rng, n, **(champion or {}))
    return Observation(base, _stats(rng, n, **challenger), since)


def _start(plan=None, now=0.0) -> Rollout:
    return Rollout.start(plan or _plan(), champion=CHAMPION, challenger=CHALLENGER, now=now)


def _walk_to(stage_name: str, rollout: Rollout, now: float) -> tuple[Rollout, float]:
    while rollout.current_step.name != stage_name:
        now += 100
        rollout = rollout.advance(_obs(int(now)), now)
    return rollout, now


# --------------------------------------------------------------------------------------------
# Progression
# --------------------------------------------------------------------------------------------


def test_good_challenger_goes_through_every_step_to_completion():
    rollout = _start()
    assert rollout.stage is Stage.SMOKE and rollout.split == TrafficSplit.single(
        CHAMPION, sticky_key="x-user-id")
    seen = []
    now = 0.0
    while not rollout.done:
        seen.append((rollout.current_step.name, dict(rollout.split.weights),
                     rollout.split.shadow))
        now += 100  # past every bake time
        rollout = rollout.advance(_obs(int(now)), now)
    assert seen == [
        ("smoke", {CHAMPION: 1.0}, None),
        ("shadow", {CHAMPION: 1.0}, CHALLENGER),
        ("canary 5 %", {CHAMPION: 0.95, CHALLENGER: 0.05}, None),
        ("canary 25 %", {CHAMPION: 0.75, CHALLENGER: 0.25}, None),
        ("canary 50 %", {CHAMPION: 0.5, CHALLENGER: 0.5}, None),
        # at 100 % the champion turns shadow, so the last step is still compared with it
        ("canary 100 %", {CHALLENGER: 1.0}, CHAMPION),
    ]
    assert rollout.stage is Stage.COMPLETED
    assert rollout.split == TrafficSplit.single(CHALLENGER, sticky_key="x-user-id")
    assert rollout.last_known_good == CHALLENGER and rollout.retiring == CHAMPION
    assert rollout.retire_at == now + 30.0
    assert [t.to_stage for t in rollout.history] == [
        Stage.SMOKE, Stage.SHADOW, *[Stage.CANARY] * 4, Stage.COMPLETED]
    assert all(g.ok for g in rollout.history[-1].gates)


def test_next_split_is_what_advancing_applies():
    rollout = _start()
    now = 0.0
    while not rollout.done:
        expected = rollout.next_split()
        now += 100
        rollout = rollout.advance(_obs(int(now)), now)
        assert rollout.split == expected
    with pytest.raises(ValueError, match="no next step"):
        rollout.next_split()


def test_bake_time_and_min_requests_must_both_hold():
    rollout, now = _walk_to("canary 25 %", _start(), 0.0)
    started = now
    # enough requests, bake not over: waits
    waiting = rollout.advance(_obs(1, since=started), started + 30)
    assert waiting.stage is Stage.CANARY and waiting.current_step.name == "canary 25 %"
    assert "bake 30/60 s" in waiting.reason and waiting.split == rollout.split
    # bake over, too few requests: waits, neither passes nor fails
    few = waiting.advance(_obs(2, n=150, since=started), started + 90)
    assert few.current_step.name == "canary 25 %" and few.stage is Stage.CANARY
    assert "error_rate: 150/200 requests so far" in few.reason
    assert {g.name for g in few.gates if g.status is GateStatus.WAIT} == {
        "error_rate", "latency_p99", "prediction_shift"}
    assert len(few.history) == len(rollout.history)  # waiting is not a transition
    # both hold: advances
    moved = few.advance(_obs(3, n=200, since=started), started + 90)
    assert moved.current_step.name == "canary 50 %"
    assert moved.step_started_at == started + 90


def test_plan_without_smoke_and_shadow_starts_at_the_first_canary():
    plan = RolloutPlan((Step(Stage.CANARY, 10, 0, 100), Step(Stage.CANARY, 100, 0, 100)))
    rollout = _start(plan)
    assert rollout.stage is Stage.CANARY and rollout.split.weight(CHALLENGER) == 0.1
    rollout = rollout.advance(_obs(), 1.0).advance(_obs(2), 2.0)
    assert rollout.stage is Stage.COMPLETED


# --------------------------------------------------------------------------------------------
# Gates that fail roll back, with the reason
# --------------------------------------------------------------------------------------------


def _assert_rolled_back(rollout: Rollout, gate: str) -> None:
    assert rollout.stage is Stage.ROLLED_BACK
    assert rollout.split == TrafficSplit.single(CHAMPION, sticky_key=rollout.plan.sticky_key)
    assert rollout.last_known_good == CHAMPION and rollout.retiring == CHALLENGER
    failed = [g.name for g in rollout.gates if g.status is GateStatus.FAIL]
    assert failed == [gate]
    assert f"{gate}:" in rollout.reason
    assert rollout.history[-1].rolled_back and rollout.history[-1].reason == rollout.reason
    with pytest.raises(ValueError, match="start a new rollout"):
        rollout.advance(_obs(), 1e9)


@pytest.mark.parametrize("stage", ["smoke", "shadow", "canary 5 %", "canary 50 %",
                                   "canary 100 %"])
def test_errors_roll_back_at_any_step(stage):
    rollout, now = _walk_to(stage, _start(), 0.0)
    failed = rollout.advance(_obs(9, errors=40), now + 100)  # 4 % > 0 % + 1 %
    _assert_rolled_back(failed, "error_rate")
    assert "40/1000 requests failed (4.00%)" in failed.reason
    assert failed.reason.startswith(stage)


def test_error_rate_is_judged_against_the_champions_on_the_same_traffic():
    rollout, now = _walk_to("canary 50 %", _start(), 0.0)
    # bad inputs fail both versions alike: 3 % each is not the challenger's fault
    same = rollout.advance(_obs(champion={"errors": 30}, errors=30), now + 100)
    assert same.stage is Stage.CANARY and same.current_step.name == "canary 100 %"
    worse = rollout.advance(_obs(champion={"errors": 30}, errors=45), now + 100)
    _assert_rolled_back(worse, "error_rate")


def test_a_clearly_broken_challenger_is_rolled_back_before_min_requests():
    rollout, now = _walk_to("canary 5 %", _start(), 0.0)
    # 20 of 30 failed: over 200 requests the rate cannot get under 1 % any more
    broken = rollout.advance(_obs(n=30, errors=20), now + 1)
    _assert_rolled_back(broken, "error_rate")
    # 1 of 30 could still end under 1 % of 200 (2 errors allowed): wait
    unsure = rollout.advance(_obs(n=30, errors=1), now + 1)
    assert unsure.stage is Stage.CANARY and "error_rate" in unsure.reason


def test_slow_p99_rolls_back():
    rollout, now = _walk_to("canary 25 %", _start(), 0.0)
    slow = rollout.advance(_obs(champion={"p99": 20.0}, p99=41.0), now + 100)
    _assert_rolled_back(slow, "latency_p99")
    assert "1.5 x champion's 20.0 ms + 5 ms = 35.0 ms" in slow.reason
    # within ratio and slack passes
    ok = rollout.advance(_obs(champion={"p99": 20.0}, p99=34.0), now + 100)
    assert ok.current_step.name == "canary 50 %"


def test_absolute_latency_limit_applies_too():
    plan = _plan(max_latency_ratio=None, max_latency_ms=30.0)
    rollout, now = _walk_to("canary 5 %", _start(plan), 0.0)
    slow = rollout.advance(_obs(champion={"p99": 40.0}, p99=31.0), now + 100)
    _assert_rolled_back(slow, "latency_p99")
    assert "max_latency_ms 30" in slow.reason


def test_shifted_predictions_roll_back_in_shadow():
    rollout, now = _walk_to("shadow", _start(), 0.0)
    shifted = rollout.advance(_obs(shift=0.15), now + 100)
    _assert_rolled_back(shifted, "prediction_shift")
    gate = next(g for g in shifted.gates if g.name == "prediction_shift")
    assert gate.inputs["psi"] > 0.2 and gate.inputs["p_value"] < 0.01
    assert gate.inputs["mean_shift"] == pytest.approx(0.15, abs=0.03)  # 4 sd of n=1000


def test_nan_predictions_roll_back():
    rollout, now = _walk_to("canary 5 %", _start(), 0.0)
    rng = np.random.default_rng(0)
    bad = rng.beta(2, 5, 1000)
    bad[:5] = np.nan
    obs = Observation(_stats(rng, 1000), VersionStats(1000, 0, 20.0, PredictionSummary.of(bad)))
    failed = rollout.advance(obs, now + 100)
    _assert_rolled_back(failed, "prediction_shift")
    assert "5 NaN or infinite" in failed.reason


@pytest.mark.parametrize(("task", "champion", "challenger", "fails"), [
    ("classification", 0.80, 0.75, True),  # auc: higher is better, 0.05 worse
    ("classification", 0.80, 0.79, False),  # within tolerance 0.02
    ("regression", 10.0, 10.5, True),  # rmse: lower is better, 0.5 worse
    ("regression", 10.0, 9.0, False),  # better
])
def test_live_metric_worse_than_the_champions_rolls_back(task, champion, challenger, fails):
    config = config_from_dict({**MINIMAL, "task": {"type": task}})
    plan = RolloutPlan.from_config(config)
    rollout = _start(replace(plan, steps=plan.steps[2:]))  # from the first canary step
    obs = _obs(champion={"metric": champion, "labelled": 500}, metric=challenger, labelled=500)
    after = rollout.advance(obs, 1000.0)
    if fails:
        _assert_rolled_back(after, "live_metric")
    else:
        assert after.stage is Stage.CANARY and after.step == 1


def test_live_metric_without_enough_labels_does_not_hold_a_step():
    rollout, now = _walk_to("canary 25 %", _start(), 0.0)
    # far worse, but on 20 labels: skipped, the step passes on the other gates
    obs = _obs(champion={"metric": 0.9, "labelled": 20}, metric=0.5, labelled=20)
    after = rollout.advance(obs, now + 100)
    assert after.current_step.name == "canary 50 %"
    gate = next(g for g in after.history[-1].gates if g.name == "live_metric")
    assert gate.status is GateStatus.SKIP and "labels not arrived" in gate.reason


def test_failed_health_check_rolls_back_in_smoke():
    rollout = _start()
    failed = rollout.advance(_obs(n=50, healthy=False), 1.0)
    _assert_rolled_back(failed, "health")
    passed = rollout.advance(_obs(n=50, healthy=True), 1.0)
    assert passed.stage is Stage.SHADOW


def test_operator_rollback_and_its_checks():
    rollout, now = _walk_to("canary 50 %", _start(), 0.0)
    with pytest.raises(ValueError, match="needs a reason"):
        rollout.roll_back("  ", now)
    back = rollout.roll_back("operator: customer complaints", now + 5)
    assert back.stage is Stage.ROLLED_BACK and back.split.versions == (CHAMPION,)
    assert back.reason == "operator: customer complaints" and back.retire_at == now + 35
    with pytest.raises(ValueError, match="already rolled_back"):
        back.roll_back("again", now + 6)


def test_an_observation_from_before_the_step_is_refused():
    rollout, now = _walk_to("canary 25 %", _start(), 0.0)
    with pytest.raises(ValueError, match="collect counts from the step's start"):
        rollout.advance(_obs(since=now - 50), now + 100)
    assert rollout.advance(_obs(since=now), now + 100).current_step.name == "canary 50 %"


def test_a_clock_that_went_back_counts_as_no_bake_time():
    rollout, now = _walk_to("canary 25 %", _start(), 0.0)
    after = rollout.advance(_obs(), now - 500)
    assert after.step == rollout.step and "bake 0/60 s" in after.reason


# --------------------------------------------------------------------------------------------
# The prediction shift statistic
# --------------------------------------------------------------------------------------------


def test_summary_cdf_matches_the_empirical_cdf():
    rng = np.random.default_rng(0)
    values = rng.normal(size=20_000)
    summary = PredictionSummary.of(values)
    points = np.linspace(-3, 3, 61)
    empirical = np.searchsorted(np.sort(values), points, side="right") / values.size
    assert np.max(np.abs(summary.cdf(points) - empirical)) < 0.005
    assert summary.cdf(np.array([-10.0, 10.0])).tolist() == [0.0, 1.0]


def test_summary_of_discrete_predictions_keeps_their_masses():
    values = np.array([0.0] * 700 + [1.0] * 300)
    summary = PredictionSummary.of(values)
    assert summary.cdf(np.array([0.0]))[0] == pytest.approx(0.7, abs=0.01)
    flipped = PredictionSummary.of(1.0 - values)
    # bins (-inf, 0], (0, 1], (1, inf): shares 0.7, 0.3, 0 against 0.3, 0.7, 0
    psi = 2 * (0.7 - 0.3) * np.log(0.7 / 0.3)
    assert prediction_shift(summary, flipped)["psi"] == pytest.approx(psi, rel=1e-9)


def test_identical_predictions_show_no_shift():
    summary = PredictionSummary.of(np.random.default_rng(1).beta(2, 5, 500))
    stats = prediction_shift(summary, summary)
    assert stats["psi"] == pytest.approx(0.0, abs=1e-12) and stats["ks_statistic"] == 0.0
    assert stats["p_value"] == 1.0 and stats["mean_shift"] == 0.0


def test_shift_gate_is_not_fooled_by_small_samples_of_one_distribution():
    # Between two samples of 50 from one distribution PSI averages ~ 9 * (2/50) = 0.36, over
    # the 0.2 limit; the KS condition keeps the false alarms near alpha.
    plan = _plan()
    psis, fails = [], 0
    for seed in range(200):
        obs = _obs(seed, n=50)
        psis.append(prediction_shift(obs.champion.predictions, obs.challenger.predictions)["psi"])
        gates = evaluate_gates(plan, obs, min_requests=50)
        fails += next(g for g in gates if g.name == "prediction_shift").status is GateStatus.FAIL
    assert np.mean(np.array(psis) >= 0.2) > 0.5  # PSI alone would fail most of them
    assert fails <= 5  # alpha 0.01 of 200 is 2; binomial room


def test_shift_gate_catches_a_real_shift_on_a_sample_batch():
    plan = _plan()
    caught = sum(
        next(g for g in evaluate_gates(plan, _obs(seed, n=200, shift=0.15), min_requests=50)
             if g.name == "prediction_shift").status is GateStatus.FAIL
        for seed in range(50)
    )
    assert caught == 50


# --------------------------------------------------------------------------------------------
# Plan, config, serialisation, ledger
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("steps", "message"), [
    ((Step(Stage.CANARY, 5, 0, 1), Step(Stage.CANARY, 50, 0, 1)), "end with a canary step at 100"),
    ((Step(Stage.SMOKE, 0, 0, 1),), "end with a canary step at 100"),
    ((Step(Stage.CANARY, 50, 0, 1), Step(Stage.CANARY, 25, 0, 1), Step(Stage.CANARY, 100, 0, 1)),
     "rise strictly"),
    ((Step(Stage.CANARY, 100, 0, 1), Step(Stage.SHADOW, 0, 0, 1), Step(Stage.CANARY, 100, 0, 1)),
     "at most one smoke"),
    ((Step(Stage.SHADOW, 0, 0, 1), Step(Stage.SHADOW, 0, 0, 1), Step(Stage.CANARY, 100, 0, 1)),
     "at most one smoke"),
])
def test_invalid_plans_are_refused(steps, message):
    with pytest.raises(ValueError, match=message):
        RolloutPlan(steps)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"stage": Stage.CANARY, "percent": 0}, r"in \(0, 100\]"),
    ({"stage": Stage.CANARY, "percent": 120}, r"in \(0, 100\]"),
    ({"stage": Stage.SHADOW, "percent": 5}, "percent must be 0"),
    ({"stage": Stage.COMPLETED, "percent": 0}, "stage is one of"),
    ({"stage": Stage.CANARY, "percent": 5, "min_requests": 0}, "min_requests must be"),
    ({"stage": Stage.CANARY, "percent": 5, "bake_s": -1}, "bake_s must be >= 0"),
])
def test_invalid_steps_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Step(**{"bake_s": 0, "min_requests": 1, **kwargs})


def test_plan_from_config_numbers_and_overrides():
    raw = {**MINIMAL, "rollout": {
        "sticky_key": "x-user-id",
        "smoke": {"requests": 20},
        "shadow": {"enabled": False},
        "canary": {"steps": [10, {"percent": 50, "bake_s": 600}, 100], "bake_s": 120,
                   "min_requests": 300},
        "gates": {"max_latency_ratio": None, "max_prediction_psi": 0.1},
        "drain_s": 5,
    }}
    plan = RolloutPlan.from_config(config_from_dict(raw))
    assert plan.steps == (
        Step(Stage.SMOKE, 0, 0, 20),
        Step(Stage.CANARY, 10, 120, 300),
        Step(Stage.CANARY, 50, 600, 300),
        Step(Stage.CANARY, 100, 120, 300),
    )
    assert plan.sticky_key == "x-user-id" and plan.drain_s == 5
    assert plan.gates.max_latency_ratio is None and plan.gates.max_prediction_psi == 0.1
    assert plan.greater_is_better
    # the config's gates section is the plan's value itself: one definition per limit
    section = config_from_dict(raw).rollout.gates
    assert isinstance(section, GateLimits) and plan.gates == section


def test_a_plan_saved_with_the_direction_among_its_gates_reads_back():
    """Plans saved before the metric's direction moved from the gates to the plan (a rollout
    in progress across an upgrade) read back with it."""
    plan = RolloutPlan.from_config(config_from_dict({**MINIMAL, "task": {"type": "regression"}}))
    assert plan.greater_is_better is False
    saved = plan.to_dict()
    assert RolloutPlan.from_dict(saved) == plan
    older = {**saved, "gates": {**saved.pop("gates"), "greater_is_better": False}}
    del older["greater_is_better"]
    assert RolloutPlan.from_dict(older) == plan


def test_default_config_plan_is_smoke_shadow_and_four_canary_steps():
    plan = RolloutPlan.from_config(config_from_dict(MINIMAL))
    assert [s.name for s in plan.steps] == [
        "smoke", "shadow", "canary 5 %", "canary 25 %", "canary 50 %", "canary 100 %"]


@pytest.mark.parametrize(("canary", "message"), [
    ({"steps": [5, 50]}, "must end at 100"),
    ({"steps": [50, 25, 100]}, "rise strictly"),
    ({"steps": [0, 100]}, "greater than 0"),
    ({"steps": [{"percent": 50, "bake": 1}, 100]}, "unknown key"),
])
def test_bad_canary_config_names_the_field(canary, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict({**MINIMAL, "rollout": {"canary": canary}})
    assert any(p.startswith("rollout.canary") and message in p for p in info.value.problems), \
        info.value.problems


def test_everything_round_trips_through_json():
    rollout, now = _walk_to("canary 50 %", _start(), 0.0)
    rollout = rollout.advance(_obs(n=10), now + 1)  # waiting, with gate results
    rollout = rollout.advance(_obs(shift=0.2), now + 100)  # rolled back
    text = json.dumps(rollout.to_dict(), allow_nan=False)
    assert Rollout.from_dict(json.loads(text)) == rollout
    obs = _obs(since=5.0, champion={"metric": 0.8, "labelled": 300}, healthy=True)
    assert Observation.from_dict(json.loads(json.dumps(obs.to_dict()))) == obs
    with pytest.raises(ValueError, match="unknown keys"):
        Rollout.from_dict({**rollout.to_dict(), "extra": 1})


def test_every_transition_makes_a_valid_ledger_event():
    rollout, now = _walk_to("canary 25 %", _start(), 0.0)
    rollout = rollout.advance(_obs(errors=100), now + 100)
    events = [ledger_event(rollout, t, model_name="flights") for t in rollout.history]
    assert all(e.kind is EventKind.TRAFFIC_STEP for e in events)
    assert [e.traffic for e in events] == [
        {CHAMPION: 1.0}, {CHAMPION: 1.0}, {CHAMPION: 0.95, CHALLENGER: 0.05},
        {CHAMPION: 0.75, CHALLENGER: 0.25}, {CHAMPION: 1.0}]
    assert events[-1].details["rolled_back"] and "error_rate" in events[-1].reasons[0]
    assert not events[-2].details["rolled_back"]


def test_start_checks_versions():
    with pytest.raises(ValueError, match="same version"):
        Rollout.start(_plan(), champion="3", challenger="3", now=0)
    with pytest.raises(ValueError, match="registry version number"):
        Rollout.start(_plan(), champion="3", challenger="v4", now=0)


def test_version_stats_are_validated():
    with pytest.raises(ValueError, match="cannot exceed requests"):
        VersionStats(requests=3, errors=4)
    with pytest.raises(ValueError, match="latency_p99_ms must be"):
        VersionStats(requests=3, latency_p99_ms=float("nan"))
