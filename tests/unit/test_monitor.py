import numpy as np
import pandas as pd
import pytest

from retrain.drift import DriftPolicy, build_reference
from retrain.evaluate import score
from retrain.monitor import LiveMetric, MonitorReport, drift_of, live_metric


def _logged(version: str, n: int, rng, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({
        "request_id": [f"r{i}" for i in range(start, start + n)],
        "row": 0,
        "ts": pd.date_range("2026-01-01", periods=n, freq="s", tz="UTC")
        + pd.Timedelta(seconds=start),
        "model_version": version,
        "prediction": rng.uniform(size=n),
    })


def test_live_metric_scores_the_champions_labelled_predictions_only():
    rng = np.random.default_rng(0)
    logged = pd.concat([_logged("1", 300, rng), _logged("2", 300, rng, start=300)])
    labels = pd.DataFrame({"request_id": logged["request_id"], "row": 0,
                           "label": (rng.uniform(size=600) < logged["prediction"]).astype(float),
                           "ts": logged["ts"]})
    live = live_metric("classification", "auc", logged, labels.iloc[:450], version="2",
                       evaluated=0.8)
    mine = logged.iloc[300:450]
    expected = score("auc", labels.iloc[300:450]["label"].to_numpy(), mine["prediction"].to_numpy())
    assert live.labelled == 150 and live.value == pytest.approx(expected)
    assert live.evaluated == 0.8 and live.value > 0.6  # labels follow the predictions


def test_a_corrected_label_replaces_the_first_and_max_rows_keeps_the_newest():
    rng = np.random.default_rng(1)
    logged = _logged("1", 4, rng)
    logged["prediction"] = [0.1, 0.9, 0.2, 0.8]
    first = pd.DataFrame({"request_id": ["r0", "r1", "r2", "r3"], "row": 0,
                          "label": [1.0, 0.0, 0.0, 1.0],
                          "ts": pd.Timestamp("2026-01-02", tz="UTC")})
    fixed = first.iloc[:2].assign(label=[0.0, 1.0], ts=pd.Timestamp("2026-01-03", tz="UTC"))
    live = live_metric("classification", "auc", logged, pd.concat([first, fixed]), version="1")
    assert live.labelled == 4 and live.value == 1.0
    newest = live_metric("regression", "mae", logged, first, version="1", max_rows=2)
    assert newest.labelled == 2 and newest.value == pytest.approx((0.2 + 0.2) / 2)


def test_no_labels_or_one_class_means_no_live_auc():
    rng = np.random.default_rng(2)
    logged = _logged("1", 10, rng)
    none = live_metric("classification", "auc", logged, logged.iloc[:0].assign(label=[]),
                       version="1")
    assert none == LiveMetric("auc", None, 0, None)
    ones = pd.DataFrame({"request_id": logged["request_id"], "row": 0, "label": 1.0,
                         "ts": logged["ts"]})
    assert live_metric("classification", "auc", logged, ones, version="1").value is None


def test_drift_of_live_inputs_against_the_reference():
    rng = np.random.default_rng(3)
    train = pd.DataFrame({"x": rng.normal(size=5000), "c": rng.choice(["a", "b"], 5000)})
    reference = build_reference(train)
    policy = DriftPolicy(min_rows=200)
    same = pd.DataFrame({"x": rng.normal(size=2000), "c": rng.choice(["a", "b"], 2000)})
    shifted = same.assign(x=same["x"] + 1.5)
    calm, notes = drift_of(reference, same, policy)
    assert not notes and not calm.dataset_drifted
    drifted, _ = drift_of(reference, shifted, policy)
    assert drifted.dataset_drifted and "x" in drifted.drifted
    assert drift_of(None, same, policy)[0] is None
    report, notes = drift_of(reference, same[["x"]], policy)
    assert report is None and "lacks feature(s) ['c']" in notes[0]


def test_report_summary_and_dict_say_what_was_seen():
    report = MonitorReport(at=1.0, champion="3", rows=0, drift=None,
                           live=LiveMetric("auc", 0.71, 250, 0.8), notes=("no live inputs",))
    assert report.drift_detected is None
    assert "live auc 0.7100 on 250 labels (holdout 0.8000)" in report.summary()
    assert report.to_dict()["live"]["labelled"] == 250


def test_summary_names_each_drifted_feature_once_and_the_live_metric_on_its_own_line():
    rng = np.random.default_rng(4)
    train = pd.DataFrame({"x": rng.normal(size=5000), "y": rng.normal(size=5000),
                          "c": rng.choice(["a", "b"], 5000)})
    live = pd.DataFrame({"x": rng.normal(size=2000) + 1.5, "y": rng.normal(size=2000) - 1.5,
                         "c": rng.choice(["a", "b"], 2000)})
    drift, _ = drift_of(build_reference(train), live, DriftPolicy(min_rows=200))
    report = MonitorReport(at=1.0, champion="3", rows=2000, drift=drift,
                           live=LiveMetric("auc", 0.71, 250, 0.8), notes=())
    lines = report.summary().splitlines()
    assert lines[0] == "champion v3"
    assert lines[1].startswith("inputs (2000 rows): DRIFT: 2/3 features drifted")
    features = [line.split(":")[0].strip() for line in lines if line.startswith("  ")]
    assert features == ["x", "y"]  # each drifted feature once, the stable one not at all
    assert lines[-1] == "live auc 0.7100 on 250 labels (holdout 0.8000)"


def test_only_answered_rows_count_not_shadow_copies_or_failures():
    from retrain.monitor import answered

    rng = np.random.default_rng(4)
    rows = pd.concat([_logged("1", 5, rng).assign(shadow=False, error=None),
                      _logged("2", 5, rng).assign(shadow=True, error=None),
                      _logged("1", 2, rng, start=10).assign(shadow=False, error="ValueError: x",
                                                             prediction=np.nan)])
    kept = answered(rows)
    assert len(kept) == 5 and set(kept["model_version"]) == {"1"}
    assert len(answered(_logged("1", 3, rng))) == 3  # files from before these columns
