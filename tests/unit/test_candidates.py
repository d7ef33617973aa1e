"""Candidate families as data: config -> families -> define-by-run space -> models. No Ray
runtime is started here (the scheduler test imports ray.tune's classes only)."""

from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest
import xgboost as xgb
from threadpoolctl import threadpool_limits

from retrain.candidates import (
    HIST_GRADIENT_BOOSTING,
    LINEAR,
    WARM_START,
    WINDOW,
    XGBOOST,
    FamilySpace,
    build_sklearn,
    families,
    trial_family,
    warm_start_problem,
)
from retrain.config import config_from_dict
from retrain.data import Partition
from retrain.errors import ConfigError
from retrain.search import WarmStart, new_rows, plan_families
from retrain.search.plan import _scheduler
from serve.features import FeatureSpec
from serve.loader import LoadedModel, load_sklearn, predict_with
from tests.synthetic import config_dict, frame

RANGE = {"type": "float", "low": 0.01, "high": 0.2, "log": True}


def _config(**families_section):
    raw = config_dict("d", "w", search={"families": families_section})
    return config_from_dict(raw)


def _spec_and_frame(n=400, seed=0):
    data = frame(n, seed)
    spec = FeatureSpec.learn(data, ("x1", "x2", "cat"))
    return spec, spec.frame(data), data["label"].to_numpy()


# -- config -> families ------------------------------------------------------------------------
def test_default_is_xgboost_alone_over_search_space():
    config = _config()
    (only,) = families(config.search)
    assert only.name == XGBOOST and only.flavor == "xgboost"
    assert only.space == config.search.space and only.rounds == 20


def test_enabled_families_come_in_a_fixed_order_with_their_own_rounds():
    config = _config(linear={"enabled": True}, xgboost_warm_start={"enabled": True,
                                                                   "num_boost_round": 7},
                     hist_gradient_boosting={"enabled": True},
                     xgboost_window={"enabled": True})
    found = families(config.search)
    assert [f.name for f in found] == [XGBOOST, WINDOW, WARM_START, HIST_GRADIENT_BOOSTING,
                                       LINEAR]
    assert [f.rounds for f in found] == [20, 20, 7, 1, 1]
    assert [f.flavor for f in found] == ["xgboost", "xgboost", "xgboost", "sklearn", "sklearn"]


def test_the_product_default_searches_xgboost_and_its_training_window():
    config = config_from_dict({"project": {"name": "p"}, "data": {
        "path": "d", "partition_column": "m", "target": "y"}, "task": {"type": "regression"}})
    assert [f.name for f in families(config.search)] == [XGBOOST, WINDOW]


def test_window_weights_keep_the_newest_partitions_and_decay_with_age():
    from retrain.candidates import partition_ages, window_weights
    from retrain.data import Partition

    parts = [Partition(str(i), rows, (), "") for i, rows in enumerate((3, 2, 1))]
    ages = partition_ages(parts, 6)
    assert ages.tolist() == [2, 2, 2, 1, 1, 0]
    assert partition_ages(parts, 7) is None
    weights = window_weights({"recent_partitions": 2, "half_life": 1.0}, ages)
    assert weights.tolist() == [0, 0, 0, 0.5, 0.5, 1.0]
    flat = window_weights({"recent_partitions": 1000, "half_life": float("inf")}, ages)
    assert flat.tolist() == [1.0] * 6


def test_family_config_errors_name_the_field_and_the_fix():
    with pytest.raises(ConfigError) as info:
        _config(xgbost={"enabled": False})
    assert info.value.problems == (
        "search.families.xgbost: unknown key; did you mean 'xgboost'?",)
    with pytest.raises(ConfigError) as info:
        _config(xgboost={"enabled": False}, xgboost_warm_start={"enabled": True})
    (problem,) = info.value.problems
    assert problem.startswith("search.families: no family that trains from scratch")


def test_a_misspelt_sklearn_parameter_fails_before_the_search():
    config = _config(hist_gradient_boosting={"enabled": True,
                                             "space": {"learnin_rate": RANGE}})
    with pytest.raises(ConfigError, match=r"hist_gradient_boosting\.space: Invalid parameter "
                                          r"'learnin_rate'"):
        plan_families(config, None)


def test_warm_start_sits_out_without_a_usable_champion_and_says_why():
    config = _config(xgboost_warm_start={"enabled": True})
    active, skipped = plan_families(config, None)
    assert [f.name for f in active] == [XGBOOST]
    assert skipped == {WARM_START: "no champion yet"}
    problem = WarmStart(version="3", problem="champion version 3: the features changed")
    assert plan_families(config, problem)[1] == {WARM_START: problem.problem}
    ready = WarmStart(version="3", model=b"ubj")
    assert [f.name for f in plan_families(config, ready)[0]] == [XGBOOST, WARM_START]


# -- the define-by-run space -------------------------------------------------------------------
def test_trials_take_turns_over_families_with_separately_named_parameters():
    config = _config(xgboost_warm_start={"enabled": True, "space": {"eta": RANGE,
                                                                    "max_depth": 3}},
                     linear={"enabled": True})
    space = FamilySpace(families(config.search))
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0),
                                direction="maximize")
    seen = []
    for _ in range(9):
        trial = study.ask()
        constants = space(trial)
        seen.append(constants["family"])
        family = constants["family"]
        assert all(name.startswith(f"{family}/") for name in trial.params)
        assert all(key == "family" or key.startswith(f"{family}/") for key in constants)
        if family == WARM_START:
            assert 0.01 <= trial.params["xgboost_warm_start/eta"] <= 0.2
            assert constants["xgboost_warm_start/max_depth"] == 3
        if family == XGBOOST:  # the default space's eta has another range: no clash
            assert 0.02 <= trial.params["xgboost/eta"] <= 0.3
        study.tell(trial, float(len(seen)))
    assert seen == [XGBOOST, WARM_START, LINEAR] * 3


def test_a_resumed_study_hands_out_the_families_its_finished_trials_lacked():
    """Told trials of an earlier run (any mix of families) count: the next trials go to the
    families with fewest trials, so a resume never drops a family."""
    from retrain.search import TrialResult
    from retrain.search.resume import _told_storage

    config = _config(linear={"enabled": True})
    space = FamilySpace(families(config.search))
    # the earlier run finished only its linear trial; the XGBoost one died with the driver
    told = (TrialResult("a", {"alpha": 1.0}, "completed", 0.7, 1, 1.0, family=LINEAR),)
    study = optuna.load_study(study_name="optuna", storage=_told_storage(space, told, "max"))
    assert [space(study.ask())["family"] for _ in range(3)] == [XGBOOST, XGBOOST, LINEAR]


def test_trial_family_reads_the_nested_config_tune_makes():
    config = {"family": WARM_START, WARM_START: {"eta": 0.1, "max_depth": 3}}
    assert trial_family(config) == (WARM_START, {"eta": 0.1, "max_depth": 3})
    assert trial_family({}) == (XGBOOST, {})


# -- warm start validity -----------------------------------------------------------------------
def test_warm_start_needs_an_xgboost_champion_with_the_same_features():
    spec, _, _ = _spec_and_frame()
    assert warm_start_problem(spec, "xgboost", spec) is None
    assert warm_start_problem(None, None, spec) == "no champion yet"
    assert "scikit-learn" in warm_start_problem(spec, "scikit-learn", spec)
    # a vocabulary that grew at its end keeps every known code: the warm start proceeds
    grown = FeatureSpec(spec.names, spec.kinds, {"cat": (*spec.categories["cat"], "zz")})
    assert warm_start_problem(spec, "xgboost", grown) is None
    # one renumbered (a new category sorted in among the known ones) does not
    renumbered = FeatureSpec(spec.names, spec.kinds, {"cat": ("0", *spec.categories["cat"])})
    problem = warm_start_problem(spec, "xgboost", renumbered)
    assert "category codes changed" in problem and "['cat']" in problem
    more = FeatureSpec((*spec.names, "x3"), (*spec.kinds, "numeric"), spec.categories)
    assert "features added ['x3']" in warm_start_problem(spec, "xgboost", more)
    kinds = FeatureSpec(spec.names, ("numeric", "categorical", "categorical"),
                        {**spec.categories, "x2": ("1",)})
    assert "feature kinds changed" in warm_start_problem(spec, "xgboost", kinds)


def _split(spec, sizes=(100, 100, 100), valid=60):
    parts = tuple(Partition(value=str(i + 1), rows=n, files=(), digest="")
                  for i, n in enumerate(sizes))
    total = sum(sizes)
    return SimpleNamespace(spec=spec, train_partitions=parts, train_rows=total - valid,
                           valid_rows=valid, pieces=lambda holdout=False: list(parts))


def test_warm_start_carries_the_champion_booster_and_the_new_rows():
    spec, x, y = _spec_and_frame()
    booster = xgb.train({"objective": "binary:logistic"},
                        xgb.DMatrix(x, y, enable_categorical=True), num_boost_round=3)
    champion = LoadedModel(name="m", version="1", task="classification", spec=spec,
                           booster=booster)
    ready = WarmStart.of(champion, _split(spec), version="1", seen={"1", "2"})
    assert ready.problem is None
    assert xgb.Booster(model_file=bytearray(ready.model)).num_boosted_rounds() == 3
    # partition 3 is new; its newest 60 rows validate, so the warm start boosts on 40
    assert ready.rows.tolist() == list(range(200, 240))
    every = WarmStart.of(champion, _split(spec), version="1", seen={"1", "2"}, rows="all")
    assert every.rows is None and every.model == ready.model
    grown = FeatureSpec(spec.names, spec.kinds, {"cat": ("a", "b")})
    refused = WarmStart.of(champion, _split(grown), version="1")
    assert refused.model is None and refused.problem.startswith("champion version 1: ")
    stale = WarmStart.of(champion, _split(spec, valid=100), version="1", seen={"1", "2"})
    assert stale.model is None and "nothing new to continue on" in stale.problem


def test_new_rows_follow_the_partition_order_and_skip_the_validation_share():
    parts = [Partition(value=v, rows=n, files=(), digest="")
             for v, n in (("1", 5), ("2", 3), ("3", 4))]
    assert new_rows(parts, {"2"}, n_train=10, n_total=12).tolist() == [0, 1, 2, 3, 4, 8, 9]
    assert new_rows(parts, set(), n_train=12, n_total=12).tolist() == list(range(12))
    # counts that do not add up: the rows cannot be told apart
    assert new_rows(parts, {"1"}, n_train=10, n_total=13) is None


# -- scikit-learn families ---------------------------------------------------------------------
@pytest.mark.parametrize("family", [HIST_GRADIENT_BOOSTING, LINEAR])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_sklearn_families_fit_spec_frames_and_survive_skops(family, task, tmp_path):
    import skops.io

    spec, x, y = _spec_and_frame()
    x.loc[::7, "x1"] = np.nan  # missing numerics must not stop them
    target = y if task == "classification" else x["x2"].to_numpy() * 2.0 + y
    params = {"alpha": 0.5} if family == LINEAR else {"max_iter": 20}
    with threadpool_limits(limits=1):  # OpenMP threads fight over two busy cores otherwise
        model = build_sklearn(family, task, params, frame=x, seed=0).fit(x, target)
    rows = spec.frame(pd.DataFrame({"x1": [0.1, None], "x2": [3.0, 4.0],
                                    "cat": ["b", "never-seen"]}))
    predictions = predict_with(model, "sklearn", task, rows)
    assert predictions.shape == (2,) and np.isfinite(predictions).all()
    if task == "classification":
        assert ((predictions > 0) & (predictions < 1)).all()
    skops.io.dump(model, tmp_path / "model.skops")
    again = load_sklearn(tmp_path / "model.skops")
    assert np.array_equal(predict_with(again, "sklearn", task, rows), predictions)


def test_the_skops_allow_list_refuses_other_types(tmp_path):
    import os

    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    skops.io.dump(FunctionTransformer(func=os.getcwd), tmp_path / "bad.skops")
    from skops.io.exceptions import UntrustedTypesFoundException

    with pytest.raises(UntrustedTypesFoundException, match=r"posix\.getcwd"):
        load_sklearn(tmp_path / "bad.skops")


def test_linear_alpha_is_the_regularisation_strength_in_both_tasks():
    _, x, _ = _spec_and_frame()
    logistic = build_sklearn(LINEAR, "classification", {"alpha": 4.0}, frame=x, seed=0)
    ridge = build_sklearn(LINEAR, "regression", {"alpha": 4.0}, frame=x, seed=0)
    assert logistic.named_steps["model"].C == 0.25
    assert ridge.named_steps["model"].alpha == 4.0


# -- one ASHA per family -----------------------------------------------------------------------
def test_asha_ranks_trials_only_against_their_own_family():
    config = _config(xgboost_warm_start={"enabled": True})
    active, _ = plan_families(config, WarmStart(version="1", model=b"x"))
    scheduler = _scheduler(config.model_copy(update={"search": config.search.model_copy(
        update={"num_boost_round": 100, "report_every": 10})}),
        tuple(f if f.name != XGBOOST else f.__class__(f.name, f.space, 100) for f in active))
    scheduler.set_search_properties("valid_score", "max")

    def trial(trial_id, family):
        return SimpleNamespace(trial_id=trial_id, config={"family": family})

    warm, scratch, scratch_weak = (trial("w", WARM_START), trial("s", XGBOOST),
                                   trial("s2", XGBOOST))
    for t in (warm, scratch, scratch_weak):
        scheduler.on_trial_add(None, t)

    def report(t, iteration, score):
        return scheduler.on_trial_result(None, t, {"training_iteration": iteration,
                                                   "valid_score": score})

    # the warm-started trial is far ahead at its 2nd report; a from-scratch one at its 2nd
    # report is early in its training and must not be cut for that
    assert report(warm, 2, 0.95) == "CONTINUE"
    assert report(scratch, 2, 0.70) == "CONTINUE"
    # within a family ASHA still stops the weak
    assert report(scratch_weak, 2, 0.60) == "STOP"


# -- the search never loses to the default ---------------------------------------------------
def test_each_family_starts_from_its_default_clipped_into_its_space():
    from retrain.candidates import default_params

    raw = config_dict("d", "w", search={
        "families": {"xgboost_warm_start": {"enabled": True},
                     "hist_gradient_boosting": {"enabled": True}},
        "space": {"max_depth": {"type": "int", "low": 3, "high": 6},
                  "eta": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
                  "gamma": {"type": "categorical", "choices": [1, 2]},
                  "colsample_bynode": {"type": "float", "low": 0.5, "high": 0.7},
                  "nthread_fixed": 1}})
    config = config_from_dict(raw)
    by_name = {f.name: f for f in families(config.search)}
    xgb_default = default_params(by_name["xgboost"])
    assert xgb_default["xgboost/max_depth"] == 6  # 8 clipped to the range's top
    assert xgb_default["xgboost/eta"] == pytest.approx(0.1)
    assert xgb_default["xgboost/gamma"] == 1  # 0 is not a choice: the first choice
    assert xgb_default["xgboost/colsample_bynode"] == pytest.approx(0.6)  # no default: middle
    assert "xgboost/nthread_fixed" not in xgb_default  # fixed values are not searched
    hgb = default_params(by_name["hist_gradient_boosting"])
    assert hgb["hist_gradient_boosting/l2_regularization"] == pytest.approx(0.001)  # clipped


def test_enqueued_defaults_are_the_first_trial_of_each_family():
    import optuna

    from retrain.search.resume import _told_storage

    config = _config(xgboost_warm_start={"enabled": True}, linear={"enabled": True})
    space = FamilySpace(families(config.search))
    storage = _told_storage(space, (), "max", defaults=True)
    study = optuna.load_study(study_name="optuna", storage=storage,
                              sampler=optuna.samplers.TPESampler(seed=0))
    asked = []
    for _ in range(6):
        trial = study.ask()
        asked.append((space(trial)["family"], dict(trial.params)))
        study.tell(trial, 0.5)
    assert [f for f, _ in asked] == ["xgboost", "xgboost_warm_start", "linear"] * 2
    assert asked[0][1]["xgboost/max_depth"] == 8 and asked[0][1]["xgboost/eta"] == 0.1
    assert asked[2][1] == {"linear/alpha": 1.0}
    assert asked[3][1] != asked[0][1]  # after the defaults, TPE samples
    assert _told_storage(space, (), "max", defaults=False) is None


@pytest.mark.parametrize("greater, scores, stop_at, best", [
    (True, [0.70, 0.72, 0.71, 0.715, 0.70], 4, 2),   # AUC: no gain for 2 reports -> stop
    (False, [5.0, 4.0, 4.5, 3.9, 4.0, 4.1], 6, 4),  # RMSE: a late gain resets patience
])
def test_early_stopping_keeps_the_best_round_and_stops_after_patience(greater, scores,
                                                                      stop_at, best):
    from retrain.trial_report import BestRound

    tracker = BestRound(greater=greater, patience=20)
    stopped = None
    for i, value in enumerate(scores, start=1):
        if tracker.add(i * 10, value) and stopped is None:
            stopped = i
    assert stopped == stop_at
    assert tracker.best_round == best * 10 and tracker.best_value == scores[best - 1]
    assert not BestRound(greater=True, patience=None).add(10, 0.5)
    # the final model keeps the best round under early stopping, every round without it
    last = len(scores) * 10
    assert tracker.kept(last, scores[-1]) == (best * 10, scores[best - 1])
    boosting = BestRound(greater=greater, patience=None)
    for i, value in enumerate(scores, start=1):
        boosting.add(i * 10, value)
    assert boosting.kept(last, scores[-1]) == (last, scores[-1])
