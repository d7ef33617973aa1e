import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from retrain.evaluate import compare, score


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


def test_auc_on_one_class_is_nan_not_an_exception():
    assert np.isnan(score("auc", np.ones(10), np.linspace(0, 1, 10)))


def test_mismatched_lengths_and_unknown_metric():
    with pytest.raises(ValueError, match="3 labels but 2 predictions"):
        score("auc", np.array([0, 1, 0]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="unknown metric"):
        score("f7", np.array([0]), np.array([0]))


def test_compare_signs_the_improvement_by_direction():
    y = np.array([0, 0, 1, 1])
    good, bad = np.array([0.1, 0.2, 0.8, 0.9]), np.array([0.9, 0.2, 0.8, 0.1])
    cmp = compare("classification", "auc", y, good, bad, "1")
    assert cmp.challenger["auc"] == 1.0
    assert cmp.improvement == pytest.approx(1.0 - cmp.champion["auc"])
    regression = compare("regression", "rmse", np.array([1.0, 2.0]), np.array([1.0, 2.0]),
                         np.array([2.0, 3.0]))
    assert regression.improvement == pytest.approx(1.0)  # lower rmse is an improvement
    assert compare("regression", "rmse", y, y.astype(float)).improvement is None
