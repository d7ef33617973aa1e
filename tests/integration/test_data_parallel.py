"""Data-parallel trials on a real Ray cluster: trials that train with Ray Train's XGBoost
trainer (2 workers) over Ray Data shards of the Parquet files.

A Tune trial calls `train_data_parallel` directly, continuing a booster (a warm start): it
must report like a single-process trial, give every worker its own rows, and checkpoint a
model as good as `xgb.train` continuing the same booster on the same rows. Then a whole
cycle set to data-parallel, warm start included: the same trial interface either way, and a
driver that loads only the holdout.

A trial stopped by Tune ends its Train run and releases its workers: on 2 CPUs the next
trial's worker can only be placed once the stopped trial's worker is gone. Killing the
trial's driver actor alone left the workers' placement group to Train's own cleaner, which
took over 30 s under the CI's load (and a 2-CPU cycle hung on it); the trial now removes
the group itself.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from retrain.candidates import xgb_params
from retrain.config import config_from_dict
from retrain.data import load_split
from retrain.distributed import DataParallelSettings, parquet_rows, train_data_parallel
from retrain.search.trial import TrialReporter
from retrain.trial_report import AT_KEY, FIT_KEY, METRICS_FILE, MODEL_FILE, SCORE_KEY, TRAINED_KEY
from tests.synthetic import config_dict, write_partitions

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROUNDS, EVERY, BASE_ROUNDS = 20, 5, 5
#: what a trial reserves for itself (it only drives Train)
TRIAL_CPUS = 0.25
PARAMS = {"max_depth": 4, "eta": 0.2, "subsample": 1.0}
#: how long a stopped trial's successor may wait for its worker (the start of its Train run
#: included) before it fails with ClusterError
PLACEMENT_S = 45


def _params() -> dict:
    return xgb_params("classification", "auc", PARAMS, nthread=1, device="cpu", seed=1)


def _trainable(config, rows, settings, base, out):
    from ray import tune

    trial = config["trial"]
    run = train_data_parallel(_params(), rows, metric="auc", rounds=trial["rounds"],
                              report_every=EVERY, settings=settings,
                              base_model=base if trial["warm"] else None,
                              reporter=TrialReporter(config, tune.get_context().get_trial_id()))
    Path(out, f"{trial['name']}.json").write_text(json.dumps({
        "rounds": run.rounds, "stopped": run.stopped,
        "shard_rows": run.shard_rows, "valid_rows": run.valid_rows,
    }))


def _stopped_trainable(config, rows, settings, out):
    from ray import tune

    # Tune ends a stopped trial inside its report (SystemExit): only the start is written
    Path(out, f"{config['trial']}.json").write_text(json.dumps({"began": time.time()}))
    train_data_parallel(_params(), rows, metric="auc", rounds=2000, report_every=EVERY,
                        settings=settings, placement_timeout_s=PLACEMENT_S,
                        reporter=TrialReporter(config, tune.get_context().get_trial_id()))


@pytest.fixture(scope="module")
def split_rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("data-parallel")
    write_partitions(root / "data", [1, 2, 3, 4], rows=3000, seed=5)
    config = config_from_dict(config_dict(root / "data", root / "work"))
    split = load_split(config.data, config.task.type)
    return root, split, parquet_rows(split, config.data, config.task.type)


def test_tune_trials_train_data_parallel_on_ray_train(ray_cluster, split_rows):
    import xgboost as xgb
    from ray import tune

    root, split, rows = split_rows
    train = xgb.DMatrix(split.x_train, split.y_train, enable_categorical=True)
    first = xgb.train({**_params(), "max_depth": 2}, train, BASE_ROUNDS)
    base = bytes(first.save_raw("ubj"))
    # the trial only drives Train: with its 2 workers and a read task it holds 1 of 2 CPUs
    settings = DataParallelSettings(num_workers=2, cpus_per_worker=0.25,
                                    cpus_per_read_task=0.25)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, rows=rows, settings=settings, base=base,
                             out=str(root)),
        {"cpu": TRIAL_CPUS},
    )
    grid = tune.Tuner(
        trainable,
        param_space={"trial": {"name": "finished", "rounds": ROUNDS, "warm": True}},
        tune_config=tune.TuneConfig(metric=SCORE_KEY, mode="max", num_samples=1),
        run_config=tune.RunConfig(name="dp", storage_path=str(root / "tune"), verbose=0),
    ).fit()
    results = {r.config["trial"]["name"]: r for r in grid}
    assert all(r.error is None for r in grid), [str(r.error)[:2000] for r in grid]

    finished = results["finished"]
    history = finished.metrics_dataframe
    assert history["round"].tolist() == [5, 10, 15, 20]
    assert {SCORE_KEY, "round", "gpu", TRAINED_KEY, AT_KEY} <= set(history.columns)
    assert (history["gpu"] == 0).all() and history[TRAINED_KEY].is_monotonic_increasing
    assert finished.metrics[FIT_KEY] == pytest.approx(finished.metrics[TRAINED_KEY])
    with finished.checkpoint.as_directory() as folder:
        booster = xgb.Booster(model_file=str(Path(folder) / MODEL_FILE))
        saved = json.loads((Path(folder) / METRICS_FILE).read_text())
    assert saved["round"] == ROUNDS and saved[SCORE_KEY] == finished.metrics[SCORE_KEY]
    assert booster.num_boosted_rounds() == BASE_ROUNDS + ROUNDS  # the base's trees first

    # every worker trained on rows of its own: together exactly the training rows
    run = json.loads((root / "finished.json").read_text())
    assert not run["stopped"] and run["rounds"] == ROUNDS
    assert len(run["shard_rows"]) == 2 and min(run["shard_rows"]) > 0
    assert sum(run["shard_rows"]) == len(split.x_train)
    assert run["valid_rows"] == len(split.x_valid)

    # the reported score is the exact validation AUC (every worker held all validation rows)
    valid = xgb.DMatrix(split.x_valid, enable_categorical=True)
    dp_auc = roc_auc_score(split.y_valid, booster.predict(valid))
    assert finished.metrics[SCORE_KEY] == pytest.approx(dp_auc, abs=1e-4)

    # and the model is as good as one process continuing the same booster on the same rows
    single = xgb.train(_params(), train, ROUNDS, xgb_model=xgb.Booster(model_file=bytearray(base)))
    single_auc = roc_auc_score(split.y_valid, single.predict(valid))
    assert abs(dp_auc - single_auc) < 0.01, (dp_auc, single_auc)
    holdout = xgb.DMatrix(split.x_holdout, enable_categorical=True)
    assert abs(roc_auc_score(split.y_holdout, booster.predict(holdout))
               - roc_auc_score(split.y_holdout, single.predict(holdout))) < 0.01
    assert np.isfinite(dp_auc) and dp_auc > 0.7


def test_a_cycle_set_to_data_parallel_trains_on_ray_train_without_loading_training_rows(
    ray_cluster, split_rows
):
    """The same trial interface either way: a cycle with ``search.data_parallel`` on hands
    its XGBoost trials, from scratch and warm-started from the champion, to Ray Train and
    gets back completed trials, reports and loadable models like any search, then decides.
    The driver loads only the holdout: the workers read the training rows from Parquet (the
    warm start's: only the partitions the champion has not seen), and the drift reference is
    sketched from a sample of them."""
    import xgboost as xgb

    from retrain import run_cycle
    from retrain.candidates import WARM_START, XGBOOST
    from retrain.registry import CHAMPION, MlflowRegistry
    from retrain.search import load_model, new_rows

    root, split, _ = split_rows
    config = config_from_dict(config_dict(
        root / "data", root / "work-cycle",
        search={"num_samples": 2, "num_boost_round": 10, "report_every": 5,
                "early_stopping": False,
                "data_parallel": {"enabled": True, "num_workers": 2, "cpus_per_worker": 0.25},
                # every row in every tree (no subsample): see the root cover below
                "families": {"xgboost_warm_start": {
                    "enabled": True, "num_boost_round": 10,
                    "space": {"eta": 0.1, "max_depth": 3, "subsample": 1.0}}}},
    ))
    # the champion: trained on every training row, registered as trained on partition 1
    base = xgb.train({**_params(), "max_depth": 2},
                     xgb.DMatrix(split.x_train, split.y_train, enable_categorical=True),
                     BASE_ROUNDS)
    registry = MlflowRegistry.from_config(config)
    with registry.cycle_run("champion", {}) as run_id:
        uri = registry.log_model(run_id, base, split.spec, task="classification", metric="auc")
        registry.set_alias(CHAMPION, registry.register(uri, {"data.train_partitions": "1"}))

    result = run_cycle(config)

    assert result.lineage["data.driver_rows"] == "holdout"
    assert result.lineage["data.train_rows"] == str(len(split.x_train) + len(split.x_valid))
    search = result.search
    # the search follows the choice the cycle made as it began, with its reason
    assert search.data_parallel == "search.data_parallel.enabled is true (2 workers)"
    assert [t.status for t in search.trials] == ["completed", "completed"], \
        [t.error for t in search.trials]
    by_family = {t.family: t for t in search.trials}
    assert set(by_family) == {XGBOOST, WARM_START}
    valid = xgb.DMatrix(split.x_valid, enable_categorical=True)
    for trial in search.trials:
        assert [h["round"] for h in trial.history] == [5, 10]
        auc = roc_auc_score(split.y_valid, load_model(trial).predict(valid))
        assert trial.score == pytest.approx(auc, abs=1e-4)
    assert load_model(by_family[XGBOOST]).num_boosted_rounds() == 10
    warm = load_model(by_family[WARM_START])
    assert warm.num_boosted_rounds() == BASE_ROUNDS + 10
    assert result.decision.verdict.value in {"promote", "keep", "reject"}
    assert result.decision.reasons

    # A tree's root cover is the sum of the hessians of the rows it was grown on. For the
    # first new tree those are p(1 - p), p the champion's prediction: so it tells exactly
    # which rows the warm start's workers boosted on, summed over both shards.
    new = new_rows(split.train_partitions, {"1"}, len(split.x_train),
                   len(split.x_train) + len(split.x_valid))
    assert 0 < len(new) < len(split.x_train)

    def hessians(rows) -> float:
        p = base.predict(xgb.DMatrix(split.x_train.iloc[rows], enable_categorical=True))
        return float(np.sum(p * (1 - p)))

    trees = warm[BASE_ROUNDS:BASE_ROUNDS + 1].trees_to_dataframe()
    cover = float(trees.loc[trees["Node"] == 0, "Cover"].iloc[0])
    assert cover == pytest.approx(hessians(new), rel=1e-3)
    assert hessians(np.arange(len(split.x_train))) > 1.2 * hessians(new)

    # the drift reference was sketched from (here: all of) the training rows, sampled
    client = registry.client
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(result.run_id, MlflowRegistry.REFERENCE, tmp)
        sketch = json.loads(Path(path).read_text())
    assert sketch["rows"] == len(split.x_train) + len(split.x_valid)
    assert set(sketch["features"]) == set(split.spec.names) and sketch["target"] == "label"


def test_a_split_without_training_rows_is_refused_by_trials_that_need_them(
    ray_cluster, split_rows
):
    from retrain.errors import SearchError
    from retrain.search import TrainData, run_search

    root, _, _ = split_rows
    config = config_from_dict(config_dict(root / "data", root / "work-refused",
                                          search={"data_parallel": {"enabled": False}}))
    lean = load_split(config.data, config.task.type, training_rows=False)
    data = TrainData(lean.x_train, lean.y_train, lean.x_valid, lean.y_valid)
    with pytest.raises(SearchError, match="loaded without its training rows"):
        run_search(config, data, name="refused", split=lean)
    assert not (root / "work-refused" / "tune" / "refused").exists()


def test_a_trial_stopped_by_tune_releases_its_workers_for_the_next(ray_cluster, split_rows):
    """Two trials one after the other in one reused trial actor (as a search runs them),
    each stopped by Tune at its first report. The trial holds 0.25 CPU and its worker 1 of
    the cluster's 2: the second trial's worker fits only once the first's is released, and
    its trial fails (ClusterError) when its worker is not placed within PLACEMENT_S."""
    from ray import tune

    root, _, rows = split_rows
    out = root / "stopped"
    out.mkdir()
    settings = DataParallelSettings(num_workers=1, cpus_per_worker=1, cpus_per_read_task=0.25)
    trainable = tune.with_resources(
        tune.with_parameters(_stopped_trainable, rows=rows, settings=settings, out=str(out)),
        {"cpu": TRIAL_CPUS},
    )
    grid = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(["first", "second"])},
        tune_config=tune.TuneConfig(metric=SCORE_KEY, mode="max", max_concurrent_trials=1,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name="dp-stopped", storage_path=str(root / "tune"),
                                  stop={"round": EVERY}, verbose=0),
    ).fit()
    assert all(r.error is None for r in grid), [str(r.error)[:2000] for r in grid]
    assert [r.metrics["round"] for r in grid] == [EVERY, EVERY]
    began = {name: json.loads((out / f"{name}.json").read_text())["began"]
             for name in ("first", "second")}
    reported = {r.config["trial"]: r.metrics[AT_KEY] for r in grid}
    print("from start to first report: " + ", ".join(
        f"{name} {reported[name] - began[name]:.1f} s" for name in ("first", "second")))
