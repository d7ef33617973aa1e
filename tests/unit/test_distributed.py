"""The pure parts of data-parallel trials: when to use them, which rows they read, and that
those rows and their features are exactly what the single-process path trains on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrain.config import DataParallelConfig, config_from_dict
from retrain.data import load_split
from retrain.distributed import (
    DataParallelSettings,
    FileRows,
    RowRange,
    frame_rows,
    parquet_rows,
    plan_rows,
    read_ranges,
    read_tasks,
    use_data_parallel,
)
from retrain.errors import ClusterError, ConfigError, DataError, RetrainWarning
from tests.synthetic import config_dict, frame, write_partitions


def _section(**values) -> DataParallelConfig:
    return DataParallelConfig(**values)


# ------------------------------------------------------------------ decision


def test_off_is_off_whatever_the_data():
    use, why = use_data_parallel(_section(enabled=False), 10**9, {"CPU": 64})
    assert not use and "enabled is false" in why


def test_auto_trains_in_one_process_below_min_rows():
    use, why = use_data_parallel(_section(min_rows=1000), 999, {"CPU": 64})
    assert not use and "999 training rows" in why and "min_rows=1000" in why


def test_auto_goes_data_parallel_from_min_rows_when_the_workers_fit():
    use, why = use_data_parallel(_section(min_rows=1000, num_workers=4), 1000, {"CPU": 8})
    assert use and "4 workers" in why


def test_auto_stays_in_one_process_when_the_cluster_cannot_hold_the_workers():
    # 4 x 1 CPU + 0.25 for a read task + 1 for the trial = 5.25 > 5
    use, why = use_data_parallel(_section(min_rows=1, num_workers=4), 10, {"CPU": 5},
                                 trial_cpus=1)
    assert not use and "5.25 CPUs, the cluster has 5" in why


def test_on_is_an_error_when_the_workers_cannot_fit_not_a_hang():
    with pytest.raises(ClusterError, match=r"2 workers x 1 CPU .* = 2.25 CPUs, the cluster has 2"):
        use_data_parallel(_section(enabled=True), 1, {"CPU": 2})
    # the same workers at half a CPU each leave room for the reads and the trial
    use, _ = use_data_parallel(_section(enabled=True, cpus_per_worker=0.5), 1, {"CPU": 2},
                               trial_cpus=0.5)
    assert use


def test_settings_fall_back_to_cpu_on_a_cluster_without_gpus():
    with pytest.warns(RetrainWarning, match="no GPU: data-parallel workers train on CPUs"):
        settings = DataParallelSettings.of(_section(gpus_per_worker=1), {"CPU": 8})
    assert settings.gpus_per_worker == 0
    with pytest.raises(ClusterError, match="2 workers x 1 GPU but the cluster has 1 GPUs"):
        DataParallelSettings.of(_section(gpus_per_worker=1), {"CPU": 8, "GPU": 1})
    assert DataParallelSettings.of(_section(num_workers=1, gpus_per_worker=0.5),
                                   {"CPU": 8, "GPU": 1}).gpus_per_worker == 0.5


def test_xgboost_threads_follow_the_worker_cpus():
    assert DataParallelSettings(num_workers=2, cpus_per_worker=0.5).nthread == 1
    assert DataParallelSettings(num_workers=2, cpus_per_worker=4).nthread == 4


# ------------------------------------------------------------------ config


def _config(**section):
    return config_from_dict(config_dict("d", "w", search={"data_parallel": section}))


def test_defaults_leave_small_data_in_one_process():
    section = _config().search.data_parallel
    assert section.enabled == "auto" and section.min_rows >= 1_000_000
    assert not use_data_parallel(section, 500_000, {"CPU": 64})[0]


def test_enabled_takes_auto_true_or_false():
    assert _config(enabled="TRUE").search.data_parallel.enabled is True
    assert _config(enabled=False).search.data_parallel.enabled is False
    with pytest.raises(ConfigError) as caught:
        _config(enabled="sometimes")
    assert caught.value.problems == (
        "search.data_parallel.enabled: enabled must be auto, true or false, but got "
        "'sometimes'",)


def test_resources_ray_cannot_reserve_are_refused():
    with pytest.raises(ConfigError, match=r"cpus_per_worker must be a fraction up to 1 or a "
                                          r"whole number, but got 1.5; use 1 or 2"):
        _config(cpus_per_worker=1.5)
    with pytest.raises(ConfigError, match="workers of a trial cannot share GPUs"):
        _config(gpus_per_worker=0.5)
    assert _config(num_workers=1, gpus_per_worker=0.5).search.data_parallel.num_workers == 1
    with pytest.raises(ConfigError, match="2 workers cannot share GPUs"):
        DataParallelSettings(num_workers=2, cpus_per_worker=1, gpus_per_worker=0.5)
    with pytest.raises(ConfigError, match=r"search\.data_parallel\.num_workers"):
        _config(num_workers=0)
    with pytest.raises(ConfigError, match="unknown key; did you mean 'num_workers'"):
        _config(num_worker=2)


# ------------------------------------------------------------------ row plan


FILES = (FileRows("1", "a", 100), FileRows("2", "b", 100), FileRows("3", "c", 100))


def test_the_cut_runs_through_a_file():
    train, valid = plan_rows(FILES, 240)
    assert train == (RowRange("a", 0, 100, 100), RowRange("b", 0, 100, 100),
                     RowRange("c", 0, 40, 100))
    assert valid == (RowRange("c", 40, 100, 100),)
    assert [r.whole for r in train] == [True, True, False]


def test_the_cut_on_a_file_boundary_splits_no_file():
    train, valid = plan_rows(FILES, 200)
    assert [r.path for r in train] == ["a", "b"] and all(r.whole for r in train)
    assert valid == (RowRange("c", 0, 100, 100),)


def test_skipped_partitions_leave_training_but_still_validate():
    train, valid = plan_rows((*FILES[:2], FileRows("2", "b2", 50), FILES[2]), 260, skip={"2"})
    assert train == (RowRange("a", 0, 100, 100), RowRange("c", 0, 10, 100))
    assert valid == (RowRange("c", 10, 100, 100),)
    with pytest.raises(DataError, match="nothing to train on"):
        plan_rows(FILES, 150, skip={"1", "2"})


def test_empty_files_are_left_out_and_the_cut_must_leave_both_sides():
    train, valid = plan_rows((FileRows("0", "empty", 0), *FILES), 100)
    assert [r.path for r in train] == ["a"] and [r.path for r in valid] == ["b", "c"]
    for cut in (0, 300):
        with pytest.raises(ValueError, match="strictly between 0 and 300"):
            plan_rows(FILES, cut)


def test_read_tasks_cover_every_row_once():
    ranges = (RowRange("a", 0, 100, 100), RowRange("c", 40, 75, 100))
    tasks = read_tasks(ranges, max_rows=30)
    assert [(t.path, t.start, t.stop) for t in tasks] == [
        ("a", 0, 25), ("a", 25, 50), ("a", 50, 75), ("a", 75, 100), ("c", 40, 57),
        ("c", 57, 75)]
    # fewer ranges than workers: the biggest are halved until every worker can get one
    tasks = read_tasks((RowRange("a", 0, 7, 7),), max_rows=1000, min_tasks=4)
    assert sorted((t.start, t.stop) for t in tasks) == [(0, 1), (1, 3), (3, 5), (5, 7)]
    assert len(read_tasks((RowRange("a", 3, 4, 7),), max_rows=10, min_tasks=4)) == 1


# ------------------------------------------------------------------ against load_split


@pytest.fixture
def dataset(tmp_path):
    # small row groups, so ranges start and stop inside and across row groups
    for period, rows in ((1, 700), (2, 500), (3, 900), (4, 400)):
        folder = tmp_path / "data" / f"period={period}"
        folder.mkdir(parents=True)
        table = pa.Table.from_pandas(frame(rows, seed=period), preserve_index=False)
        if period == 2:  # a partition of two files
            pq.write_table(table.slice(0, 200), folder / "part-0.parquet", row_group_size=64)
            pq.write_table(table.slice(200), folder / "part-1.parquet", row_group_size=64)
        else:
            pq.write_table(table, folder / "part-0.parquet", row_group_size=64)
    raw = config_dict(tmp_path / "data", tmp_path / "work")
    raw["data"]["validation_fraction"] = 0.3
    config = config_from_dict(raw)
    return config, load_split(config.data, config.task.type)


def _read(ranges, rows):
    tasks = read_tasks(ranges, max_rows=97)  # read task by read task, as the workers get them
    return frame_rows(read_ranges(tasks, rows.columns), rows)


def test_ranges_hold_exactly_the_rows_and_features_of_the_split(dataset):
    config, split = dataset
    rows = parquet_rows(split, config.data, config.task.type)
    assert rows.train_rows == len(split.x_train) and rows.valid_rows == len(split.x_valid)
    assert any(not r.whole for r in rows.train)  # the cut runs through a file
    x, y = _read(rows.train, rows)
    pd.testing.assert_frame_equal(x.reset_index(drop=True), split.x_train)
    np.testing.assert_array_equal(y, split.y_train)
    x, y = _read(rows.valid, rows)
    pd.testing.assert_frame_equal(x.reset_index(drop=True), split.x_valid)
    np.testing.assert_array_equal(y, split.y_valid)


def test_warm_start_rows_are_the_new_partitions_rows(dataset):
    from retrain.search import new_rows

    config, split = dataset
    rows = parquet_rows(split, config.data, config.task.type, skip={"1"})
    positions = new_rows(split.train_partitions, {"1"}, len(split.x_train),
                         len(split.x_train) + len(split.x_valid))
    x, y = _read(rows.train, rows)
    pd.testing.assert_frame_equal(x.reset_index(drop=True),
                                  split.x_train.iloc[positions].reset_index(drop=True))
    np.testing.assert_array_equal(y, split.y_train[positions])


def test_data_changed_since_loading_is_an_error(dataset, tmp_path):
    config, split = dataset
    write_partitions(tmp_path / "data", [3], rows=50)  # rewrites period=3
    with pytest.raises(DataError, match="changed during the cycle"):
        parquet_rows(split, config.data, config.task.type)


# ------------------------------------------------------------------ what trials are shipped


def _shipping(dataset, sklearn: bool):
    from retrain.candidates import families
    from retrain.search import DataParallelPlan, TrainData, WarmStart, new_rows

    config, split = dataset
    search = config.search.model_copy(update={"families": config.search.families.model_copy(
        update={"hist_gradient_boosting": config.search.families.hist_gradient_boosting
                .model_copy(update={"enabled": sklearn})})})
    data = TrainData(split.x_train, split.y_train, split.x_valid, split.y_valid)
    positions = new_rows(split.train_partitions, {"1"}, len(split.x_train),
                         len(split.x_train) + len(split.x_valid))
    champion = WarmStart(version="1", model=b"booster", rows=positions, seen=("1",))
    plan = DataParallelPlan(
        settings=DataParallelSettings(num_workers=2, cpus_per_worker=0.25,
                                      cpus_per_read_task=0.25),
        rows=parquet_rows(split, config.data, config.task.type),
        warm_rows=parquet_rows(split, config.data, config.task.type, skip={"1"}))
    return data, champion, families(search), plan


def test_data_parallel_trials_get_no_rows_through_the_object_store(dataset):
    from retrain.search.plan import shipped_to_trials

    data, champion, active, plan = _shipping(dataset, sklearn=False)
    shipped, warm = shipped_to_trials(data, champion, active, plan)
    assert len(shipped.x_train) == len(shipped.y_train) == 0
    assert len(shipped.x_valid) == len(shipped.y_valid) == 0
    assert list(shipped.x_train.columns) == list(data.x_train.columns)
    assert (shipped.x_train.dtypes == data.x_train.dtypes).all()
    # the workers read the warm start's rows from `plan.warm_rows`, not by position
    assert warm.rows is None and warm.model == champion.model and warm.seen == champion.seen
    assert len(champion.rows) > 0  # the caller's champion is left as it was


def test_trials_that_train_in_one_process_get_every_row(dataset):
    from retrain.search.plan import shipped_to_trials

    data, champion, active, plan = _shipping(dataset, sklearn=True)
    # a scikit-learn family fits in its trial's process: it needs the rows
    shipped, warm = shipped_to_trials(data, champion, active, plan)
    assert shipped is data and warm is champion
    data, champion, active, _ = _shipping(dataset, sklearn=False)
    shipped, warm = shipped_to_trials(data, champion, active, None)
    assert shipped is data and warm is champion


# ------------------------------------------------------------------ what the driver loads


class _Asked(Exception):
    pass


def _connect():
    raise _Asked("the decision asked for the cluster")


def _choice(tmp_path, rows: int, cpus: float | None = None, families=None, **section):
    """The cycle's choice; ``cpus``: the cluster's CPUs, None for a decision that must not
    ask the cluster."""
    from retrain.search.plan import choose_data_parallel

    raw = config_dict(tmp_path / "data", tmp_path / "work",
                      search={"data_parallel": section, **({"families": families}
                                                           if families else {})})

    def totals():
        if cpus is None:
            raise _Asked("the decision asked for the cluster")
        return {"CPU": cpus}

    return choose_data_parallel(config_from_dict(raw), rows, totals)


def test_the_driver_loads_training_rows_unless_trials_go_data_parallel(tmp_path):
    # decided without a cluster: off, or auto below min_rows
    assert _choice(tmp_path, 10**9, enabled=False).driver_loads_rows
    below = _choice(tmp_path, 999, enabled="auto", min_rows=1000)
    assert below.driver_loads_rows and not below.use and "min_rows=1000" in below.why
    # on (or auto at min_rows), the cluster decides whether the workers fit
    with pytest.raises(_Asked):
        _choice(tmp_path, 10, enabled=True)
    with pytest.raises(_Asked):
        _choice(tmp_path, 1000, enabled="auto", min_rows=1000)
    fits = _choice(tmp_path, 1000, cpus=8, enabled="auto", min_rows=1000)
    assert fits.use and not fits.driver_loads_rows
    small = _choice(tmp_path, 1000, cpus=1, enabled="auto", min_rows=1000)
    assert not small.use and small.driver_loads_rows


def test_a_scikit_learn_family_needs_the_rows_on_the_driver(tmp_path):
    mixed = _choice(tmp_path, 10**9, cpus=8, enabled=True,
                    families={"hist_gradient_boosting": {"enabled": True}})
    # the XGBoost trials still train data-parallel; the scikit-learn ones need the rows
    assert mixed.use and not mixed.xgboost_only and mixed.driver_loads_rows


def test_a_split_without_training_rows_trains_data_parallel_whatever_the_cluster_says_now(
    dataset
):
    """The cycle decided, before the driver skipped the rows, that the trials train
    data-parallel; the search must not decide otherwise when the cluster looks smaller
    later (an autoscaler removed an idle node)."""
    from retrain.candidates import families
    from retrain.search.plan import DataParallelChoice, _data_parallel_plan

    config, full = dataset
    config = config.model_copy(update={"search": config.search.model_copy(update={
        "data_parallel": DataParallelConfig(enabled="auto", min_rows=1)})})
    lean = load_split(config.data, config.task.type, training_rows=False)
    active = families(config.search)
    small = {"CPU": 1.0}  # cannot hold 2 workers x 1 CPU
    assert _data_parallel_plan(config, full, active, None, small) is None
    plan = _data_parallel_plan(config, lean, active, None, small)
    assert plan is not None and "when the split was loaded" in plan.why
    # a cycle passes its choice, made once as it began: the search follows it either way
    chosen = _data_parallel_plan(config, full, active, None, small,
                                 DataParallelChoice(True, "chosen as the cycle began"))
    assert chosen is not None and chosen.why == "chosen as the cycle began"
    assert _data_parallel_plan(config, lean, active, None, {"CPU": 64.0},
                               DataParallelChoice(False, "too few rows")) is None
    assert plan.rows.train_rows == lean.train_rows == len(full.x_train)
    assert plan.rows.valid_rows == len(full.x_valid)
