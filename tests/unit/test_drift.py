import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from retrain.drift import (
    CategoricalSketch,
    DriftPolicy,
    NumericSketch,
    ReferenceSketch,
    StreamingDrift,
    benjamini_hochberg,
    build_reference,
    compare,
)

LETTERS = pd.CategoricalDtype(list("abcdefgh"))


def _mixed(u: np.ndarray) -> pd.DataFrame:
    """16 numeric + 4 categorical features from 20 rows of float32 uniforms.

    Cheap (so that 200 repetitions stay fast) yet with the shapes that matter to the
    statistics: flat, heavily skewed, and discrete with ties.
    """
    x = u[:16].copy()
    np.square(np.square(x[6:12], out=x[6:12]), out=x[6:12])  # u ** 4: skewed
    np.floor(x[12:] * 6, out=x[12:])  # 6 values: ties at every grid point
    codes = (np.square(u[16:]) * 8).astype(np.int8)  # 'a' most frequent, 'h' rarest
    columns = {f"x{i}": x[i] for i in range(16)}
    columns |= {f"c{j}": pd.Categorical.from_codes(codes[j], dtype=LETTERS) for j in range(4)}
    return pd.DataFrame(columns)


def _normal(rng: np.random.Generator, rows: int = 5000) -> pd.DataFrame:
    return pd.DataFrame({
        "a": rng.standard_normal(rows),
        "b": rng.standard_normal(rows),
        "c": rng.standard_normal(rows),
        "color": rng.choice(np.array(["red", "green", "blue", "black"]), rows, p=[.4, .3, .2, .1]),
    })


@pytest.mark.parametrize("seed", range(4))
def test_stationary_data_rarely_alarms(seed):
    # 200 independent (reference, new) pairs from identical distributions, run as 4 cases of
    # 50 (a single test would take ~2 s on a loaded 2-core box): 1,000 feature tests each.
    rng = np.random.default_rng(seed)
    dataset_alarms = feature_alarms = 0
    p_values = []
    for _ in range(50):
        reference, new = rng.random((2, 20, 5000), dtype=np.float32)
        report = compare(build_reference(_mixed(reference)), _mixed(new))
        dataset_alarms += report.dataset_drifted
        feature_alarms += len(report.drifted)
        p_values += [f.p_value for f in report.features]
    assert dataset_alarms <= 1  # the promised bound, 2% of checks, in every quarter
    assert dataset_alarms == 0 and feature_alarms == 0  # what these seeds give
    # The tests are valid (not liberal) yet not vacuous: raw p-values near uniform (the grid
    # KS is slightly conservative, more so on the discrete features).
    p = np.asarray(p_values)
    assert len(p) == 1000
    assert 0.001 <= np.mean(p < 0.01) <= 0.02
    assert 0.3 <= np.mean(p < 0.5) <= 0.55


def test_mean_shift_is_caught_as_distribution_drift():
    rng = np.random.default_rng(1)
    reference = build_reference(_normal(rng))
    new = _normal(rng)
    new["a"] += 0.5  # half a standard deviation
    report = compare(reference, new)
    a = report.features[0]
    assert report.drifted == ("a",)
    assert a.causes == ("distribution",)
    assert 0.2 <= a.psi < 0.3  # 20 equal-frequency bins: 0.245 expected
    assert a.p_adjusted < 1e-50
    assert a.mean_shift == pytest.approx(0.5, abs=0.05)
    assert a.std_ratio == pytest.approx(1.0, abs=0.05)
    assert "distribution shifted: PSI" in a.reason and "mean +0.5" in a.reason


def test_variance_change_is_caught():
    rng = np.random.default_rng(2)
    reference = build_reference(_normal(rng))
    new = _normal(rng)
    new["b"] *= 2.0
    report = compare(reference, new)
    b = report.features[1]
    assert report.drifted == ("b",)
    assert b.causes == ("distribution",)
    assert b.psi > 0.5
    assert b.std_ratio == pytest.approx(2.0, abs=0.1)
    assert b.mean_shift == pytest.approx(0.0, abs=0.1)
    assert "mean -0.02 sd, sd x1.98" in b.reason


def test_new_category_is_caught_as_unseen():
    rng = np.random.default_rng(3)
    reference = build_reference(_normal(rng))
    new = _normal(rng)
    new.loc[rng.random(len(new)) < 0.2, "color"] = "purple"
    report = compare(reference, new)
    color = report.features[3]
    assert report.drifted == ("color",)
    assert color.causes == ("distribution", "unseen")
    assert color.unseen_share == pytest.approx(0.2, abs=0.02)
    assert color.js_distance > 0.3
    assert "categories unseen in the reference" in color.reason


@pytest.mark.parametrize("column", ["c", "color"])
def test_missing_rate_jump_is_caught_alone(column):
    rng = np.random.default_rng(4)
    reference = build_reference(_normal(rng))
    new = _normal(rng)
    new.loc[rng.random(len(new)) < 0.3, column] = None
    report = compare(reference, new)
    feature = next(f for f in report.features if f.name == column)
    assert report.drifted == (column,)
    # The remaining values keep their distribution: only the missing rate drifts.
    assert feature.causes == ("missing_rate",)
    assert feature.missing_rate_ref == 0.0
    assert feature.missing_rate_new == pytest.approx(0.3, abs=0.02)
    assert "missing rate rose 0.0% -> 29.9% (limit +-10%)" in feature.reason


def test_trivial_shift_on_many_rows_is_significant_but_immaterial():
    rng = np.random.default_rng(5)
    reference = build_reference(pd.DataFrame({"a": rng.standard_normal(200_000)}))
    report = compare(reference, pd.DataFrame({"a": rng.standard_normal(200_000) + 0.05}))
    a = report.features[0]
    assert a.p_adjusted < 1e-10  # the KS test alone would alarm
    assert a.psi < 0.01
    assert not a.drifted and report.drifted == ()
    assert a.reason.startswith("significant but immaterial")


def test_dataset_drift_needs_more_than_the_drifted_share():
    rng = np.random.default_rng(6)
    reference = build_reference(_normal(rng))
    new = _normal(rng)
    new["a"] += 1.0
    assert compare(reference, new).drifted_share == 0.25
    assert not compare(reference, new).dataset_drifted  # 25% <= 30%
    assert compare(reference, new, policy=DriftPolicy(max_drifted_share=0.2)).dataset_drifted
    new["b"] += 1.0
    assert compare(reference, new).dataset_drifted  # 50% > 30%


def test_grid_ks_agrees_with_scipy_on_raw_data():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal(20_000), rng.standard_normal(20_000) * 1.03 + 0.03
    exact = stats.ks_2samp(x, y)
    report = compare(build_reference(pd.DataFrame({"x": x})), pd.DataFrame({"x": y}))
    approx = report.features[0]
    # A sup over 99 reference percentiles: never above the exact statistic, close to it.
    assert exact.statistic - 0.005 <= approx.ks_statistic <= exact.statistic
    assert exact.pvalue <= approx.p_value <= 3 * exact.pvalue


def test_benjamini_hochberg_matches_scipy():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.9, 0.2])
    assert benjamini_hochberg(p) == pytest.approx(stats.false_discovery_control(p))
    assert benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.005])) == pytest.approx(
        [0.02, 0.04, 0.04, 0.02])


def test_streaming_detects_mean_shift_within_three_chunks():
    rng = np.random.default_rng(8)
    reference = build_reference(pd.DataFrame(rng.standard_normal((20_000, 4)),
                                             columns=list("abcd")))
    rows = rng.standard_normal((40_000, 4))
    rows[20_000:] += 1.0  # every feature shifts by 1 sd at row 20,000 (chunk 20)
    stream = pd.DataFrame(rows, columns=list("abcd"))
    detector = StreamingDrift(reference, window=5000)  # evaluated every 1,000 rows
    fired = [i for i in range(40) if detector.update(stream.iloc[i * 1000 : (i + 1) * 1000])]
    # The window holds 2/5 shifted rows after chunk 21 (PSI ~0.16 < 0.2) and 3/5 after
    # chunk 22 (PSI ~0.35): detection at chunk 22, and it holds while the shift lasts.
    assert fired == list(range(22, 40))
    assert detector.evaluations == 40
    report = detector.report()
    assert report.rows == 5000 and report.drifted == ("a", "b", "c", "d")
    assert all(f.mean_shift == pytest.approx(1.0, abs=0.1) for f in report.features)


def test_streaming_splits_chunks_at_pane_boundaries_and_resets():
    rng = np.random.default_rng(9)
    reference = build_reference(_normal(rng))
    detector = StreamingDrift(reference, window=4000, step=1000)
    assert detector.report().insufficient_data  # nothing seen yet
    assert not detector.update(_normal(rng, 7500))
    assert (detector.rows_seen, detector.evaluations) == (7500, 7)
    assert detector.report().rows == 4000  # the window, not everything seen
    detector.reset()
    assert (detector.rows_seen, detector.evaluations) == (0, 0)
    with pytest.raises(ValueError, match="multiple of step"):
        StreamingDrift(reference, window=4500, step=1000)


def test_sketch_round_trips_through_json_and_stays_small():
    rng = np.random.default_rng(10)
    numeric = pd.DataFrame(rng.standard_normal((5000, 90)), columns=[f"x{i}" for i in range(90)])
    numeric["x0"] = np.floor(numeric["x0"] * 3)  # discrete: repeated grid points
    numeric.loc[::7, "x1"] = np.nan
    categories = {f"c{j}": rng.integers(0, 50, 5000).astype(str) for j in range(10)}
    frame = pd.concat([numeric, pd.DataFrame(categories)], axis=1)
    frame["label"] = rng.integers(0, 2, 5000)
    reference = build_reference(frame, target="label", categorical=("label",))
    text = json.dumps(reference.to_dict(), allow_nan=False)
    assert len(text.encode()) < 300_000  # 100 features: < 3 KB each
    restored = ReferenceSketch.from_dict(json.loads(text))
    assert restored == reference
    assert isinstance(restored.features["x0"], NumericSketch)
    assert isinstance(restored.features["c0"], CategoricalSketch)
    assert isinstance(restored.target_sketch, CategoricalSketch)
    new = frame.sample(frac=1.0, random_state=0)
    assert compare(restored, new).to_dict() == compare(reference, new).to_dict()


def test_numeric_sketch_describes_the_reference():
    sketch = build_reference(pd.DataFrame({"x": np.arange(1000.0)})).features["x"]
    assert isinstance(sketch, NumericSketch)
    assert len(sketch.grid) == 99 and sum(sketch.counts) == 1000
    assert sketch.bin_edges[0] == -np.inf and sketch.bin_edges[-1] == np.inf
    assert len(sketch.edges) == 19
    assert sketch.shares == pytest.approx([0.05] * 20)
    assert (sketch.min, sketch.max, sketch.mean) == (0.0, 999.0, 499.5)
    constant = build_reference(pd.DataFrame({"x": np.ones(500)})).features["x"]
    assert constant.edges == (1.0,) and constant.shares == (1.0, 0.0)


def test_infinite_values_survive_json_and_count_as_values():
    x = np.random.default_rng(17).standard_normal(1000)
    x[:30], x[30:40] = np.inf, -np.inf  # 3% inf, 1% -inf
    reference = build_reference(pd.DataFrame({"x": x}))
    sketch = reference.features["x"]
    assert sketch.grid[-1] == np.inf and sketch.grid[0] == -np.inf
    assert sketch.missing == 0 and sketch.mean == pytest.approx(np.mean(x[40:]))
    text = json.dumps(reference.to_dict(), allow_nan=False)
    assert ReferenceSketch.from_dict(json.loads(text)) == reference
    assert compare(reference, pd.DataFrame({"x": x[::-1]})).drifted == ()


def test_top_k_pools_rare_categories_and_then_nothing_is_unseen():
    rng = np.random.default_rng(11)
    frame = pd.DataFrame({"c": rng.integers(0, 300, 20_000).astype(str)})
    sketch = build_reference(frame, top_k=200).features["c"]
    assert isinstance(sketch, CategoricalSketch)
    assert len(sketch.values) == 200 and sketch.other > 0 and not sketch.complete
    report = compare(build_reference(frame, top_k=200), pd.DataFrame({"c": ["new"] * 500}))
    # Outside a truncated vocabulary a value may be a rare known one: it counts as other.
    assert report.features[0].unseen_share == 0.0
    assert report.features[0].other_share_new == 1.0
    assert report.features[0].causes == ("distribution",)


def test_int_categories_match_their_float_reading():
    # An int column with a missing value turns float in pandas: 3 and 3.0 are one category.
    rng = np.random.default_rng(12)
    reference = build_reference(pd.DataFrame({"zone": rng.integers(0, 5, 2000)}),
                                categorical=("zone",))
    new = pd.DataFrame({"zone": rng.integers(0, 5, 2000).astype(float)})
    new.loc[0, "zone"] = np.nan
    feature = compare(reference, new).features[0]
    assert feature.unseen_share == 0.0 and not feature.drifted


def test_target_shift_is_reported_apart_from_the_features():
    rng = np.random.default_rng(13)
    frame = _normal(rng).assign(label=(rng.random(5000) < 0.2).astype(int))
    reference = build_reference(frame, target="label", categorical=("label",))
    assert reference.names == ("a", "b", "c", "color")
    new = _normal(rng).assign(label=(rng.random(5000) < 0.5).astype(int))
    report = compare(reference, new)
    assert report.target is not None and report.target.causes == ("distribution",)
    assert report.drifted == ()  # label shift is not a feature's drift
    assert "target label" in report.summary()
    assert compare(reference, new.drop(columns="label")).target is None  # live inputs


def test_too_few_rows_give_insufficient_data_and_no_alarm():
    rng = np.random.default_rng(14)
    reference = build_reference(_normal(rng))
    tiny = _normal(rng, 50).assign(a=lambda f: f["a"] + 10)  # a huge shift, but 50 rows
    report = compare(reference, tiny)
    assert report.insufficient_data and not report.dataset_drifted
    assert report.features == () and report.drifted == ()
    assert report.summary() == "insufficient data: 50 rows < min_rows 100; no drift check"
    assert compare(reference, tiny, policy=DriftPolicy(min_rows=50)).drifted == ("a",)


def test_missing_columns_raise_a_value_error_naming_them():
    rng = np.random.default_rng(15)
    reference = build_reference(_normal(rng))
    with pytest.raises(ValueError, match=r"missing feature column\(s\) \['b', 'color'\]"):
        compare(reference, _normal(rng).drop(columns=["b", "color"]))
    with pytest.raises(ValueError, match="'b'"):
        StreamingDrift(reference).update(_normal(rng).drop(columns=["b"]))
    with pytest.raises(ValueError, match="feature 'a' is numeric in the reference"):
        compare(reference, _normal(rng).assign(a="text"))


def test_report_serialises_to_strict_json():
    rng = np.random.default_rng(16)
    reference = build_reference(_normal(rng))
    new = _normal(rng).assign(c=np.nan)  # an all-missing column: statistics are None
    report = compare(reference, new)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    c = data["features"][2]
    assert c["psi"] is None and c["causes"] == ["missing_rate"]
    assert data["drifted"] == ["c"] and data["policy"]["psi_threshold"] == 0.2
    assert report.summary().splitlines()[1].startswith("  c: no values to compare")


@pytest.mark.parametrize("bad", [
    {"alpha": 0.0}, {"alpha": 1.5}, {"psi_threshold": -1.0}, {"max_drifted_share": 1.0},
    {"min_rows": 0}, {"missing_rate_jump": -0.1}, {"max_unseen_share": 2.0},
])
def test_policy_rejects_invalid_values(bad):
    with pytest.raises(ValueError, match="invalid DriftPolicy"):
        DriftPolicy(**bad)


def _shifted(kind: str, frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    frame = frame.copy()
    if kind == "mean":
        frame["a"] += 1.0
    elif kind == "variance":
        frame["a"] *= 2.0
    elif kind == "new category":
        frame.loc[rng.uniform(size=len(frame)) < 0.2, "color"] = "purple"
    else:  # missing rate: 0 % -> 30 %
        frame.loc[rng.uniform(size=len(frame)) < 0.3, "b"] = np.nan
    return frame


@pytest.mark.parametrize(("kind", "cause"), [
    ("mean", "distribution"), ("variance", "distribution"),
    ("new category", "unseen"), ("missing rate", "missing_rate"),
])
def test_streaming_catches_each_kind_of_shift_within_its_window(kind, cause):
    # 30 chunks of 1,000 rows, the change at chunk 15; window 5,000 rows evaluated every
    # 1,000. Stated window: the alarm comes within 4 chunks of the change (once the window is
    # at most 4/5 old rows), and never before it (no false alarm on the stationary part).
    rng = np.random.default_rng(11)
    reference = build_reference(_normal(rng, 20_000))
    detector = StreamingDrift(reference, window=5000,
                              policy=DriftPolicy(max_drifted_share=0.0))
    fired = []
    for i in range(30):
        chunk = _normal(rng, 1000)
        if i >= 15:
            chunk = _shifted(kind, chunk, rng)
        if detector.update(chunk):
            fired.append(i)
    assert fired, f"{kind} shift never detected"
    assert fired[0] >= 15, f"false alarm at chunk {fired[0]} before the {kind} shift"
    assert fired[0] <= 15 + 3, f"{kind} shift detected late, at chunk {fired[0]}"
    assert fired == list(range(fired[0], 30))  # and it holds while the shift lasts
    report = detector.report()
    assert any(cause in f.causes for f in report.features if f.drifted)
