import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from retrain.config import EvaluationConfig
from retrain.evaluate import Finalist, compare, measure_footprint, measure_footprints, score


def test_scores_match_reference_implementations():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.3 + rng.uniform(size=500) * 0.7, 0, 1)
    assert score("auc", y, p) == pytest.approx(roc_auc_score(y, p))
    assert score("logloss", y, p) == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)))
    assert score("accuracy", y, p) == pytest.approx(np.mean((p >= 0.5) == y))
    assert score("rmse", np.array([1.0, 3.0]), np.array([2.0, 1.0])) == pytest.approx(
        np.sqrt(2.5)
    )
    assert score("mae", np.array([1.0, 3.0]), np.array([2.0, 1.0])) == pytest.approx(1.5)


def test_auc_with_ties_and_one_class():
    y = np.array([0, 0, 1, 1, 1, 0])
    s = np.array([0.1, 0.5, 0.5, 0.9, 0.5, 0.2])
    assert score("auc", y, s) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(score("auc", np.ones(10), np.linspace(0, 1, 10)))


def test_mismatched_lengths_and_unknown_metric():
    with pytest.raises(ValueError, match="3 labels but 2 predictions"):
        score("auc", np.array([0, 1, 0]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="unknown metric"):
        score("f7", np.array([0]), np.array([0]))


def test_finalists_are_all_scored_and_the_strongest_evidence_wins():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 3000)

    def preds(strength, seed):
        return 1 / (1 + np.exp(-(y * strength + np.random.default_rng(seed).normal(size=3000))))

    finalists = [Finalist(f"t{i}", preds(s, i), trial_id=str(i))
                 for i, s in enumerate([1.0, 1.6, 1.2])]
    champion = Finalist("v1", preds(0.9, 9), version="1")
    cmp = compare("classification", "auc", y, finalists, champion, policy=EvaluationConfig())
    assert cmp.challenger.name == "t1"
    assert [f.name for f in cmp.finalists] == ["t0", "t1", "t2"]
    assert cmp.confidence == pytest.approx(1 - 0.05 / 3)  # Bonferroni for 3 finalists
    assert set(cmp.secondary) == {"logloss", "accuracy"}
    assert cmp.champion_version == "1"


def test_without_champion_the_best_holdout_score_is_the_challenger():
    y = np.array([0, 1, 0, 1])
    cmp = compare("regression", "rmse", y.astype(float),
                  [Finalist("a", np.array([0.5, 0.5, 0.5, 0.5])),
                   Finalist("b", np.array([0.1, 0.9, 0.1, 0.9]))])
    assert cmp.challenger.name == "b" and cmp.difference is None


def test_measure_footprint_times_the_serving_path():
    sample = pd.DataFrame({"x": np.arange(2000.0)})
    calls = []
    fp = measure_footprint(lambda rows: calls.append(len(rows)) or np.zeros(len(rows)),
                           sample, size_bytes=1234, repeats=10)
    assert fp.size_bytes == 1234 and fp.single_row_ms >= 0 and fp.batch_ms_per_1k >= 0
    assert calls.count(1) == 11 and calls.count(1000) == 3


def test_footprints_are_timed_interleaved_so_load_hits_every_model_alike():
    sample = pd.DataFrame({"x": np.arange(2000.0)})
    order = []

    def model(name):
        return lambda rows: order.append((name, len(rows))) or np.zeros(len(rows))

    fps = measure_footprints({"a": (model("a"), 1), "b": (model("b"), 2)}, sample, repeats=4)
    assert fps["a"].size_bytes == 1 and fps["b"].size_bytes == 2
    singles = [name for name, n in order if n == 1][2:]  # after one warm-up call each
    # every round times both models, and the order rotates so neither always goes first
    assert singles == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [name for name, n in order if n == 1000] == ["a", "b", "b", "a", "a", "b"]


def test_the_guardrail_times_the_replicas_path_on_a_request_body(monkeypatch):
    """The pipeline's footprints time `serve.scoring.Scorer.score_body` on a JSON body of the
    holdout's rows (decoded, read and predicted as a replica does), one row and 1,000 rows,
    and the batch figure is per 1,000 rows, not per byte of the body."""
    import json

    import xgboost as xgb

    from retrain.pipeline.finalists import _footprints
    from serve.features import FeatureSpec
    from serve.loader import LoadedModel
    from serve.scoring import Scorer

    rng = np.random.default_rng(0)
    holdout = pd.DataFrame({"x": rng.normal(size=1500), "c": rng.choice(["a", "b"], 1500),
                            "unused": "z"})
    spec = FeatureSpec.learn(holdout, ("x", "c"))
    booster = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(
        spec.frame(holdout), holdout["x"] > 0, enable_categorical=True), 3)
    model = LoadedModel(name="m", version="1", task="classification", spec=spec,
                        booster=booster)
    bodies, lean = [], []
    score_body = Scorer.score_body

    def spy(self, raw):
        bodies.append(raw)
        lean.append(self.encoder is not None)
        return score_body(self, raw)

    monkeypatch.setattr(Scorer, "score_body", spy)
    split = type("Split", (), {"holdout_raw": holdout})()
    fps = _footprints(split, {"v1": model})
    assert fps["v1"].single_row_ms > 0 and fps["v1"].batch_ms_per_1k > 0
    sizes = {len(json.loads(b)["dataframe_split"]["data"]) for b in bodies}
    assert sizes == {1, 1000} and all(lean)
    assert json.loads(bodies[0])["dataframe_split"]["columns"] == ["x", "c"]
