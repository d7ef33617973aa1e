import numpy as np

from retrain.config import EvaluationConfig, GuardrailConfig, SliceConfig
from retrain.decide import Verdict, decide
from retrain.evaluate import Finalist, Footprint, compare

RNG = np.random.default_rng(7)
N = 4000
Y = RNG.integers(0, 2, N)
GROUP = np.where(np.arange(N) % 2 == 0, "east", "west")


def _scores(strength: float, seed: int, east: float | None = None) -> np.ndarray:
    """Predictions whose AUC rises with ``strength`` (``east``: another strength there)."""
    rng = np.random.default_rng(seed)
    per_row = np.where(GROUP == "east", strength if east is None else east, strength)
    return 1 / (1 + np.exp(-(Y * per_row + rng.normal(size=N))))


FAST = Footprint(single_row_ms=1.0, batch_ms_per_1k=5.0, size_bytes=100_000)


def _decide(challenger, champion=None, policy=None, footprints=(FAST, FAST)):
    import pandas as pd

    policy = policy or EvaluationConfig()
    finalists = [Finalist("trial-a", challenger, footprints[0], trial_id="a")]
    champ = None if champion is None else Finalist("v1", champion, footprints[1], version="1")
    comparison = compare("classification", "auc", Y, finalists, champ, policy=policy,
                         slice_frame=pd.DataFrame({"region": GROUP}))
    return decide(comparison, policy), comparison


def test_clearly_better_challenger_is_promoted_with_its_interval():
    decision, comparison = _decide(_scores(1.5, 1), _scores(0.8, 2))
    assert decision.verdict is Verdict.PROMOTE
    assert comparison.difference.low > 0
    evidence = next(c for c in decision.checks if c.name == "evidence")
    assert evidence.passed and "interval" in evidence.detail and "delong" in evidence.detail


def test_tiny_noisy_improvement_keeps_the_champion():
    champion = _scores(1.0, 3)
    challenger = np.clip(champion + RNG.normal(scale=0.01, size=N), 0, 1)
    decision, comparison = _decide(challenger, champion)
    assert decision.verdict is Verdict.KEEP
    assert comparison.difference.low <= 0 < comparison.difference.high
    assert "lower bound <=" in decision.reasons[0]


def test_better_overall_but_worse_on_a_slice_is_rejected_with_that_reason():
    policy = EvaluationConfig(slices=(SliceConfig(column="region", min_rows=100,
                                                   tolerance=0.01),))
    challenger = _scores(3.0, 4, east=1.0)  # strong overall, poor in the east
    decision, comparison = _decide(challenger, _scores(1.2, 5), policy)
    assert comparison.difference.low > 0  # better on average...
    assert decision.verdict is Verdict.REJECT  # ...but it regresses a slice
    assert any("slice region=east" in r and "beyond tolerance" in r for r in decision.reasons)


def test_slow_or_large_challenger_fails_its_guardrail():
    slow = Footprint(single_row_ms=5.0, batch_ms_per_1k=5.0, size_bytes=100_000)
    big = Footprint(single_row_ms=1.0, batch_ms_per_1k=5.0, size_bytes=1_200_000)
    better, base = _scores(1.5, 1), _scores(0.8, 2)
    no_floors = EvaluationConfig(guardrails=GuardrailConfig(
        min_latency_ms=0, min_batch_ms_per_1k=0, min_size_mb=0))
    decision, _ = _decide(better, base, no_floors, footprints=(slow, FAST))
    assert decision.verdict is Verdict.REJECT
    assert any(r.startswith("latency ratio 5.00x") for r in decision.reasons)
    assert decision.deciding == "latency ratio 5.00x > 2x"
    decision, _ = _decide(better, base, no_floors, footprints=(big, FAST))
    assert decision.verdict is Verdict.REJECT
    assert any(r.startswith("size ratio 12.00x") for r in decision.reasons)
    assert decision.deciding == "size ratio 12.00x > 10x"


def test_ratio_guardrails_apply_only_above_their_floors():
    # the demo's case: 1.45 MB against a 145 kB champion is 10x, and harmless
    small = Footprint(single_row_ms=4.0, batch_ms_per_1k=40.0, size_bytes=1_450_000)
    tiny = Footprint(single_row_ms=1.0, batch_ms_per_1k=5.0, size_bytes=145_000)
    better, base = _scores(1.5, 1), _scores(0.8, 2)
    decision, _ = _decide(better, base, footprints=(small, tiny))
    assert decision.verdict is Verdict.PROMOTE
    ratios = {c.name: c for c in decision.checks if "ratio" in c.name}
    assert all(c.passed and "not checked" in c.detail for c in ratios.values())
    assert "min_size_mb=20" in ratios["size ratio"].detail
    # above the floor the ratio counts again
    huge = Footprint(single_row_ms=4.0, batch_ms_per_1k=40.0, size_bytes=25_000_000)
    decision, _ = _decide(better, base, footprints=(huge, Footprint(1.0, 5.0, 2_000_000)))
    assert decision.verdict is Verdict.REJECT and decision.deciding.startswith("size ratio")


def test_a_champion_below_min_score_is_not_protected_by_it():
    policy = EvaluationConfig(min_score=0.9)
    better, worse = _scores(1.5, 1), _scores(0.3, 2)  # AUC about 0.84 and 0.58
    decision, comparison = _decide(better, worse, policy)
    assert comparison.challenger.metrics["auc"] < 0.9 and comparison.difference.low > 0
    assert decision.verdict is Verdict.PROMOTE
    value = next(c for c in decision.checks if c.name == "value")
    assert value.passed and "misses it too" in value.detail
    assert decision.alerts and "below min_score" in decision.alerts[0]
    assert "ALERT" in decision.summary()
    # a challenger no better than that champion: kept, with the alert still raised
    decision, _ = _decide(worse, better * 0 + worse, policy)
    assert decision.verdict is Verdict.KEEP and decision.alerts
    # a champion above the bar: a challenger below it is rejected as before, no alert
    decision, _ = _decide(worse, better, EvaluationConfig(min_score=0.7))
    assert decision.verdict is Verdict.REJECT and not decision.alerts
    assert decision.deciding.startswith("auc") and "below min_score" in decision.deciding


def test_first_model_is_judged_on_absolute_thresholds_alone():
    policy = EvaluationConfig(min_score=0.6,
                              guardrails=GuardrailConfig(max_latency_ms=2.0))
    decision, comparison = _decide(_scores(1.5, 1), policy=policy)
    assert comparison.champion is None and comparison.difference is None
    assert decision.verdict is Verdict.PROMOTE
    assert [c.name for c in decision.checks] == ["value", "latency"]
    weak, _ = _decide(_scores(0.1, 1), policy=policy)
    assert weak.verdict is Verdict.REJECT and "not >=" in weak.reasons[0]
    slow = Footprint(single_row_ms=9.0, batch_ms_per_1k=5.0, size_bytes=1)
    decision, _ = _decide(_scores(1.5, 1), policy=policy, footprints=(slow, FAST))
    assert decision.verdict is Verdict.REJECT


def test_same_seed_same_decision():
    policy = EvaluationConfig(seed=3)
    a = _decide(_scores(1.05, 8), _scores(1.0, 9), policy)
    b = _decide(_scores(1.05, 8), _scores(1.0, 9), policy)
    assert a[0] == b[0]
    assert a[1].secondary["logloss"] == b[1].secondary["logloss"]


def test_non_inferiority_promotes_an_equal_model_within_the_margin():
    champion = _scores(1.0, 3)
    challenger = np.clip(champion + RNG.normal(scale=0.01, size=N), 0, 1)
    policy = EvaluationConfig(mode="non_inferiority", non_inferiority_margin=0.02)
    decision, _ = _decide(challenger, champion, policy)
    assert decision.verdict is Verdict.PROMOTE
    worse, _ = _decide(_scores(0.6, 4), champion, policy)
    assert worse.verdict is Verdict.KEEP


def test_relative_improvement_raises_the_bar():
    policy = EvaluationConfig(min_relative_improvement=0.2)  # 20 % of the champion's AUC
    decision, _ = _decide(_scores(1.5, 1), _scores(0.8, 2), policy)
    assert decision.verdict is Verdict.KEEP
    assert "20.0% of the champion" in decision.reasons[0]


def test_decision_serialises():
    decision, comparison = _decide(_scores(1.5, 1), _scores(0.8, 2))
    out = decision.to_dict()
    assert out["verdict"] == "promote"
    assert {c["name"] for c in out["checks"]} >= {"evidence", "latency ratio", "size ratio"}
    assert comparison.to_dict()["difference"]["method"] == "delong"
    assert decision.summary().startswith("PROMOTE: ")
