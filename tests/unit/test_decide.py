import math

from retrain.config import EvaluationConfig
from retrain.decide import Verdict, decide
from retrain.evaluate import Comparison


def _cmp(challenger: float, champion: float | None = None, metric: str = "auc") -> Comparison:
    return Comparison(
        metric=metric,
        holdout_rows=1000,
        challenger={metric: challenger},
        champion=None if champion is None else {metric: champion},
        champion_version=None if champion is None else "3",
    )


def test_first_model_promoted_when_it_passes_min_score():
    decision = decide(_cmp(0.71), EvaluationConfig(min_score=0.7))
    assert decision.verdict is Verdict.PROMOTE
    assert any("no champion yet" in r for r in decision.reasons)


def test_first_model_rejected_below_min_score():
    decision = decide(_cmp(0.69), EvaluationConfig(min_score=0.7))
    assert decision.verdict is Verdict.REJECT
    assert "misses the required >= 0.7000" in decision.reasons[0]


def test_better_challenger_promoted_by_margin():
    decision = decide(_cmp(0.75, 0.72), EvaluationConfig(min_improvement=0.02))
    assert decision.verdict is Verdict.PROMOTE
    assert decision.champion_score == 0.72
    assert any("v3" in r and "1000 holdout rows" in r for r in decision.reasons)


def test_improvement_below_margin_keeps_champion():
    decision = decide(_cmp(0.73, 0.72), EvaluationConfig(min_improvement=0.02))
    assert decision.verdict is Verdict.KEEP
    assert "improvement +0.0100 <= required +0.0200" in decision.reasons[-1]


def test_a_tie_is_not_evidence():
    assert decide(_cmp(0.72, 0.72), EvaluationConfig()).verdict is Verdict.KEEP


def test_lower_is_better_metrics_are_signed():
    better = decide(_cmp(0.30, 0.35, metric="logloss"), EvaluationConfig(min_improvement=0.01))
    worse = decide(_cmp(0.36, 0.35, metric="logloss"), EvaluationConfig())
    assert better.verdict is Verdict.PROMOTE
    assert worse.verdict is Verdict.KEEP


def test_lower_is_better_min_score_is_a_ceiling():
    assert decide(_cmp(2.0, metric="rmse"), EvaluationConfig(min_score=1.5)).verdict is (
        Verdict.REJECT
    )
    assert decide(_cmp(1.0, metric="rmse"), EvaluationConfig(min_score=1.5)).verdict is (
        Verdict.PROMOTE
    )


def test_negative_margin_accepts_a_slightly_worse_challenger():
    decision = decide(_cmp(0.715, 0.72), EvaluationConfig(min_improvement=-0.01))
    assert decision.verdict is Verdict.PROMOTE


def test_undefined_challenger_score_is_rejected():
    decision = decide(_cmp(math.nan, 0.7), EvaluationConfig())
    assert decision.verdict is Verdict.REJECT


def test_decision_serialises():
    decision = decide(_cmp(0.75, 0.72), EvaluationConfig())
    out = decision.to_dict()
    assert out["verdict"] == "promote"
    assert out["reasons"] == list(decision.reasons)
    assert decision.summary().startswith("PROMOTE: ")
