import numpy as np
import pandas as pd
import pytest

from retrain.config import config_from_dict
from retrain.data import list_partitions, load_split
from retrain.errors import DataError
from tests.synthetic import config_dict, write_partitions


def _config(tmp_path, **data):
    raw = config_dict(tmp_path / "data", tmp_path / "work")
    raw["data"].update(data)
    return config_from_dict(raw).data


def test_split_is_by_time_newest_partition_is_holdout(tmp_path):
    write_partitions(tmp_path / "data", [1, 2, 3, 10], rows=500)
    split = load_split(_config(tmp_path), "classification")
    # numeric partition values sort numerically, not as text ("10" after "3")
    assert [p.value for p in split.train_partitions] == ["1", "2", "3"]
    assert [p.value for p in split.holdout_partitions] == ["10"]
    assert len(split.x_train) + len(split.x_valid) == 1500
    assert len(split.x_valid) == 300  # newest 20 % of the training rows
    assert len(split.x_holdout) == len(split.y_holdout) == 500
    assert list(split.x_train.columns) == ["x1", "x2", "cat"]
    assert split.spec.kinds == ("numeric", "numeric", "categorical")
    assert split.spec.categories["cat"] == ("a", "b", "c")
    assert isinstance(split.x_train["cat"].dtype, pd.CategoricalDtype)
    assert split.y_train.dtype == np.int8


def test_validation_rows_are_the_newest_training_rows(tmp_path):
    write_partitions(tmp_path / "data", [1, 2, 3], rows=100)
    split = load_split(_config(tmp_path, validation_fraction=0.5), "classification")
    expected = pd.read_parquet(tmp_path / "data" / "period=2" / "part-0.parquet")
    np.testing.assert_allclose(split.x_valid["x1"].to_numpy(), expected["x1"].to_numpy())


def test_lineage_names_partitions_and_changes_with_content(tmp_path):
    write_partitions(tmp_path / "data", [1, 2, 3], rows=100)
    config = _config(tmp_path)
    before = load_split(config, "classification").lineage()
    assert before["data.train_partitions"] == "1,2"
    assert before["data.holdout_partitions"] == "3"
    write_partitions(tmp_path / "data", [2], rows=100, seed=9)
    after = load_split(config, "classification").lineage()
    assert after["data.digest"] != before["data.digest"]


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_split(_config(tmp_path), "classification")


def test_folder_without_parquet(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="no Parquet files"):
        load_split(_config(tmp_path), "classification")


def test_wrong_partition_column(tmp_path):
    write_partitions(tmp_path / "data", [1, 2], rows=50)
    with pytest.raises(DataError, match="partition column 'month' not found"):
        load_split(_config(tmp_path, partition_column="month"), "classification")


def test_missing_feature_column(tmp_path):
    write_partitions(tmp_path / "data", [1, 2], rows=50)
    with pytest.raises(DataError, match=r"^data.features names column\(s\) \['nope'\] not in "
                       r"the data; the data has \[.*\]\. Fix data.features$"):
        load_split(_config(tmp_path, features=["x1", "nope"]), "classification")


def test_a_missing_slice_column_names_the_evaluation_slices():
    from retrain.data import check_columns

    with pytest.raises(DataError, match=r"^data.features names column\(s\) \['a'\] not in the "
                       r"data; evaluation.slices names column\(s\) \['b'\] not in the data; the "
                       r"data has \['x'\]\. Fix data.features and evaluation.slices$"):
        check_columns(["x"], data_features=("x", "a"), evaluation_slices=("b", "b"))
    check_columns(["x"], data_features=("x",), evaluation_slices=())


def test_missing_target(tmp_path):
    write_partitions(tmp_path / "data", [1, 2], rows=50)
    with pytest.raises(DataError, match="target column 'late' is not in the data"):
        load_split(_config(tmp_path, target="late"), "classification")


def test_non_binary_target_for_classification(tmp_path):
    write_partitions(tmp_path / "data", [1, 2], rows=50)
    with pytest.raises(DataError, match="must be binary"):
        load_split(_config(tmp_path, target="x2"), "classification")


def test_regression_target_must_be_numeric(tmp_path):
    write_partitions(tmp_path / "data", [1, 2], rows=50)
    with pytest.raises(DataError, match="must be numeric"):
        load_split(_config(tmp_path, target="cat", features=["x1"]), "regression")


def test_target_with_missing_values(tmp_path):
    write_partitions(tmp_path / "data", [1, 2], rows=50)
    path = tmp_path / "data" / "period=2" / "part-0.parquet"
    frame = pd.read_parquet(path)
    frame["label"] = frame["label"].astype("float").where(frame.index > 3)
    frame.to_parquet(path, index=False)
    with pytest.raises(DataError, match="4 missing value"):
        load_split(_config(tmp_path), "classification")


def test_empty_partition(tmp_path):
    write_partitions(tmp_path / "data", [1, 2, 3], rows=50)
    path = tmp_path / "data" / "period=2" / "part-0.parquet"
    pd.read_parquet(path).head(0).to_parquet(path, index=False)
    with pytest.raises(DataError, match="partition period=2 has 0 row"):
        load_split(_config(tmp_path), "classification")


def test_too_few_partitions(tmp_path):
    write_partitions(tmp_path / "data", [1, 2], rows=50)
    with pytest.raises(DataError, match="need at least 3"):
        load_split(_config(tmp_path, holdout_partitions=2), "classification")


def test_list_partitions_counts_rows(tmp_path):
    write_partitions(tmp_path / "data", [5, 6], rows=70)
    parts = list_partitions(_config(tmp_path))
    assert [(p.value, p.rows, len(p.files)) for p in parts] == [("5", 70, 1), ("6", 70, 1)]
    assert all(len(p.digest) == 64 for p in parts)


# ------------------------------------------------------------------ without training rows


def _mixed(tmp_path):
    """Partitions whose columns take every path of the feature spec: a float column; an int
    column named categorical and an int column, both with missing values in some partitions
    only; a bool column with missing values; a string column. Written without pandas'
    metadata, so a whole read turns ints with nulls into floats and bools with nulls into
    objects, while a read of no rows keeps int64 and bool."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    for period in range(1, 6):
        n = 400 + 50 * period
        holes = period in (2, 4)
        frame = pd.DataFrame({
            "x": rng.normal(size=n).astype("float32"),
            "code": pd.array(rng.integers(0, 4 + period, size=n), dtype="Int64"),
            "count": pd.array(rng.integers(0, 100, size=n), dtype="Int64"),
            "maybe": pd.array(rng.random(n) > 0.5, dtype="boolean"),
            "city": rng.choice(["lyon", "oslo", f"new{period}"], size=n),
            "label": (rng.random(n) > 0.5).astype("int8"),
        })
        if holes:
            for column in ("code", "count", "maybe"):
                frame.loc[frame.index[::7], column] = pd.NA
        folder = tmp_path / "data" / f"period={period}"
        folder.mkdir(parents=True)
        table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
        pq.write_table(table, folder / "part-0.parquet", row_group_size=100)
    raw = config_dict(tmp_path / "data", tmp_path / "work")
    raw["data"].update({"categorical": ["code"], "validation_fraction": 0.25})
    return config_from_dict(raw).data


def test_a_split_without_training_rows_keeps_what_the_cycle_needs(tmp_path):
    from retrain.data import training_row_count

    config = _mixed(tmp_path)
    full = load_split(config, "classification")
    lean = load_split(config, "classification", training_rows=False)
    assert full.holds_training_rows and not lean.holds_training_rows
    # the same feature contract, learned without reading the numeric columns
    assert lean.spec == full.spec
    assert lean.spec.kinds == ("numeric", "categorical", "numeric", "categorical",
                               "categorical")
    assert "new4" in lean.spec.categories["city"]
    # the same counts, holdout and lineage; frames with the columns and dtypes, no rows
    assert (lean.train_rows, lean.valid_rows) == (len(full.x_train), len(full.x_valid))
    assert training_row_count(config, list_partitions(config)) == len(full.x_train)
    assert lean.lineage() == full.lineage()
    pd.testing.assert_frame_equal(lean.x_holdout, full.x_holdout)
    np.testing.assert_array_equal(lean.y_holdout, full.y_holdout)
    assert len(lean.x_train) == len(lean.y_train) == len(lean.x_valid) == 0
    assert lean.x_train.dtypes.to_dict() == full.x_train.dtypes.to_dict()


def test_a_split_without_training_rows_still_checks_the_target(tmp_path):
    write_partitions(tmp_path / "data", [1, 2, 3], rows=100)
    path = tmp_path / "data" / "period=1" / "part-0.parquet"
    frame = pd.read_parquet(path)
    frame.loc[3, "label"] = None
    frame.to_parquet(path, index=False)
    with pytest.raises(DataError, match="1 missing value"):
        load_split(_config(tmp_path), "classification", training_rows=False)


def test_a_training_sample_draws_distinct_training_rows_by_seed(tmp_path):
    from retrain.data import training_sample

    config = _mixed(tmp_path)
    full = load_split(config, "classification")
    lean = load_split(config, "classification", training_rows=False)
    x, y = training_sample(config, "classification", lean, 300, seed=1)
    assert len(x) == len(y) == 300
    assert x.dtypes.to_dict() == full.x_train.dtypes.to_dict()
    every = pd.concat([full.x_train, full.x_valid], ignore_index=True)
    keys = set(every["x"].tolist())  # float32 draws: distinct per row
    assert len(keys) == len(every)
    assert set(x["x"].tolist()) <= keys and x["x"].nunique() == 300
    again, _ = training_sample(config, "classification", lean, 300, seed=1)
    other, _ = training_sample(config, "classification", lean, 300, seed=2)
    pd.testing.assert_frame_equal(x, again)
    assert not x["x"].equals(other["x"])
    # asking for more rows than there are gives each row once
    x, y = training_sample(config, "classification", lean, 10**9)
    assert sorted(x["x"].tolist()) == sorted(every["x"].tolist())
    assert y.sum() == full.y_train.sum() + full.y_valid.sum()


def test_vocabularies_grow_from_the_champions_spec_and_keep_its_codes(tmp_path):
    import xgboost as xgb

    from retrain.candidates import warm_start_problem
    from serve.features import FeatureSpec

    write_partitions(tmp_path / "data", [1, 2, 3], rows=500)
    config = _config(tmp_path)
    first = load_split(config, "classification")
    assert first.spec.categories["cat"] == ("a", "b", "c")
    # a new category sorts first ("0"): learned afresh it would renumber every known one
    path = tmp_path / "data" / "period=2" / "part-0.parquet"
    extra = pd.read_parquet(path)
    extra.loc[:50, "cat"] = "0"  # rows that train (validation is the newest 20 %)
    extra.to_parquet(path, index=False)
    fresh = load_split(config, "classification")
    assert fresh.spec.categories["cat"] == ("0", "a", "b", "c")
    grown = load_split(config, "classification", base_spec=first.spec)
    assert grown.spec.categories["cat"] == ("a", "b", "c", "0")
    assert grown.spec.extends(first.spec) and not fresh.spec.extends(first.spec)
    # known categories keep their codes, the new one gets the next code
    codes = grown.x_train["cat"].cat.codes.to_numpy()
    texts = grown.x_train["cat"].astype(str).to_numpy()
    assert set(codes[texts == "a"]) == {0} and set(codes[texts == "0"]) == {3}
    # so the champion's booster can be continued on the grown spec
    champion = xgb.train({"objective": "binary:logistic"},
                         xgb.DMatrix(first.x_train, first.y_train, enable_categorical=True),
                         num_boost_round=3)
    assert warm_start_problem(first.spec, "xgboost", grown.spec) is None
    assert warm_start_problem(first.spec, "xgboost", fresh.spec) is not None
    # XGBoost keeps the champion's categories in the model: the warm start reads the grown
    # frame narrowed to them (the new category as missing, the known codes unchanged)
    narrowed = grown.spec.narrow(grown.x_train, first.spec)
    assert narrowed["cat"].isna().sum() == (texts == "0").sum()
    assert (narrowed["cat"].cat.codes.to_numpy()[texts != "0"] == codes[texts != "0"]).all()
    more = xgb.train({"objective": "binary:logistic"},
                     xgb.DMatrix(narrowed, grown.y_train, enable_categorical=True),
                     num_boost_round=2, xgb_model=champion)
    assert more.num_boosted_rounds() == 5
    # an unrelated base (other features) leaves the spec as learned
    other = FeatureSpec(("z",), ("numeric",))
    assert load_split(config, "classification", base_spec=other).spec == fresh.spec


def test_the_holdouts_older_share_trains_and_its_newest_share_judges(tmp_path):
    write_partitions(tmp_path / "data", [1, 2, 3], rows=100)
    config = _config(tmp_path, holdout_share=0.3)
    split = load_split(config, "classification")
    whole = load_split(config, "classification", holdout_share=1.0)
    # 70 of the holdout's 100 rows train, after the training partitions' rows
    assert split.holdout_head == 70 and len(split.x_holdout) == 30
    assert split.train_rows + split.valid_rows == 270
    assert (split.y_holdout == whole.y_holdout[70:]).all()
    trained = pd.concat([split.x_train, split.x_valid], ignore_index=True)
    assert trained.tail(70).reset_index(drop=True).equals(
        whole.x_holdout.head(70).reset_index(drop=True))
    assert len(split.x_valid) == 54  # the newest 20 % of the 270 training rows
    assert split.lineage()["data.holdout_head_rows"] == "70"
    # the partitions behind the rows, in row order: the holdout's head, then its tail
    assert [(p.value, p.rows) for p in split.pieces()] == [("1", 100), ("2", 100), ("3", 70)]
    assert [(p.value, p.rows) for p in split.pieces(holdout=True)] == [
        ("1", 100), ("2", 100), ("3", 70), ("3", 30)]
    from retrain.candidates import partition_ages

    ages = partition_ages(split.pieces(holdout=True), 300)
    assert ages.tolist() == [2] * 100 + [1] * 100 + [0] * 100  # one partition, one age
    # a split without training rows (data-parallel workers read whole partitions) judges
    # on the whole holdout
    lean = load_split(config, "classification", training_rows=False)
    assert lean.holdout_head == 0 and len(lean.x_holdout) == 100


def test_an_unreadable_partition_is_named_and_left_out_not_fatal(tmp_path):
    from retrain.admit import integrity_verdicts

    write_partitions(tmp_path / "data", [1, 2, 3, 4], rows=100)
    path = tmp_path / "data" / "period=4" / "part-0.parquet"
    path.write_bytes(path.read_bytes()[:200])  # truncated in transfer
    config = _config(tmp_path)
    partitions = list_partitions(config)
    bad = partitions[-1]
    assert bad.value == "4" and bad.rows == 0 and bad.problem.startswith("unreadable Parquet")
    split = load_split(config, "classification", partitions=partitions)
    assert [p.value for p in split.holdout_partitions] == ["3"]  # the others carry on
    (verdict,) = integrity_verdicts(partitions, partitions)
    assert verdict.partition == "4" and verdict.status == "quarantined"


def test_a_byte_copy_of_an_older_partition_is_quarantined_as_a_copy(tmp_path):
    import shutil

    from retrain.admit import integrity_verdicts

    write_partitions(tmp_path / "data", [1, 2], rows=100)
    shutil.copytree(tmp_path / "data" / "period=1", tmp_path / "data" / "period=3")
    partitions = list_partitions(_config(tmp_path))
    (verdict,) = integrity_verdicts(partitions, partitions)
    assert verdict.partition == "3"
    assert "same content" in verdict.problems[0] and "as partition 1" in verdict.problems[0]


def test_infinite_or_overflowing_training_values_are_named_not_left_to_xgboost(tmp_path):
    write_partitions(tmp_path / "data", [1, 2, 3], rows=100)
    path = tmp_path / "data" / "period=1" / "part-0.parquet"
    frame = pd.read_parquet(path)
    frame.loc[:2, "x1"] = 1e300  # overflows float32
    frame.to_parquet(path, index=False)
    with pytest.raises(DataError, match=r"infinite or overflowing values .*'x1': 3"):
        load_split(_config(tmp_path), "classification")
