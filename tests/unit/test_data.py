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
