import numpy as np
import pandas as pd
import pytest

from retrain.rollout import Rollout, RolloutPlan, Stage, Step
from retrain.traffic_control import observe, version_stats


def _rows(version, n, *, shadow=False, latency=2.0, error_every=0, start=0, mean=0.3,
          seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(start, start + n):
        failed = bool(error_every) and i % error_every == 0
        rows.append({
            "request_id": f"r{i}", "row": -1 if failed else 0, "model_version": version,
            "shadow": shadow, "latency_ms": latency + (i % 100) / 100,
            "prediction": np.nan if failed else float(np.clip(rng.normal(mean, 0.1), 0, 1)),
            "error": "ValueError: boom" if failed else None,
            "ts": pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(seconds=i),
        })
    return pd.DataFrame(rows)


def test_version_stats_count_requests_errors_p99_and_predictions():
    rows = pd.concat([_rows("1", 200), _rows("2", 100, error_every=10, latency=50.0),
                      _rows("2", 300, shadow=True, start=1000)])
    one = version_stats(rows, "1", shadow=False)
    assert (one.requests, one.errors) == (200, 0)
    assert one.latency_p99_ms == pytest.approx(2.0 + 0.99 * 0.99 + 0.0099, abs=0.02)
    assert one.predictions.count == 200
    two = version_stats(rows, "2", shadow=False)
    assert (two.requests, two.errors) == (100, 10) and two.latency_p99_ms > 50
    assert two.predictions.count == 90  # the failed rows carry no prediction
    assert version_stats(rows, "2", shadow=True).requests == 300
    assert version_stats(rows, "3", shadow=False).requests == 0


def _rollout(stage_index: int) -> Rollout:
    plan = RolloutPlan((Step(Stage.SMOKE, 0, 0, 5), Step(Stage.SHADOW, 0, 0, 10),
                        Step(Stage.CANARY, 50, 0, 10), Step(Stage.CANARY, 100, 0, 10)))
    rollout = Rollout.start(plan, champion="1", challenger="2", now=0.0)
    for _ in range(stage_index):
        step = rollout.current_step
        rollout = rollout._move(rollout.plan.steps[rollout.step + 1].stage, rollout.step + 1,
                                rollout.next_split(), f"past {step.name}", (), 0.0)
    return rollout


def test_observe_reads_the_shadow_copies_of_the_shadow_version():
    live = _rows("1", 50)
    mirrored = _rows("2", 50, shadow=True, mean=0.6)
    shadow_step = _rollout(1)
    assert shadow_step.split.shadow == "2"
    obs = observe(shadow_step, pd.concat([live, mirrored]), since=0.0)
    assert obs.champion.requests == 50 and obs.challenger.requests == 50
    assert obs.challenger.predictions.mean == pytest.approx(0.6, abs=0.05)
    # at 100 % the champion is the shadow: roles swap, the same rule applies
    full = _rollout(3)
    assert full.split.shadow == "1"
    obs = observe(full, pd.concat([_rows("2", 40), _rows("1", 40, shadow=True)]), since=0.0)
    assert (obs.champion.requests, obs.challenger.requests) == (40, 40)


def test_observe_in_smoke_counts_pinned_live_rows_and_health():
    smoke = _rollout(0)
    rows = pd.concat([_rows("1", 5), _rows("2", 5), _rows("2", 30, shadow=True, start=100)])
    obs = observe(smoke, rows, since=0.0, healthy={"1": True, "2": False})
    assert obs.challenger.requests == 5 and obs.challenger.healthy is False
    advanced = smoke.advance(obs, 1.0)
    assert advanced.stage is Stage.ROLLED_BACK and "health" in advanced.reason


def test_a_version_that_fails_rolls_back_at_the_canary():
    canary = _rollout(2)
    rows = pd.concat([_rows("1", 40), _rows("2", 40, error_every=4, start=500)])
    advanced = canary.advance(observe(canary, rows, since=0.0), 1.0)
    assert advanced.stage is Stage.ROLLED_BACK and "error_rate" in advanced.reason
    assert advanced.split.weights == {"1": 1.0}
