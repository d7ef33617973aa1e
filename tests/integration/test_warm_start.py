"""Candidate families on a real Ray cluster, a real SQLite MLflow store and real HTTP.

Warm start: a champion is trained on a large history (and, refit for serving, on its holdout
month too); then retention drops the old months and two new ones arrive. The cycle's training
window is now two small partitions, so a model from scratch learns from few rows, while the
warm-started candidate keeps everything the champion learned and adds a few trees on the rows
it has not seen. The warm-started trials must train faster, and
the evaluator must pick one of them because its holdout score is better.

scikit-learn: a project whose only families are HistGradientBoosting and the linear pipeline
promotes a scikit-learn model, which MLflow stores with skops and Serve answers over HTTP.
"""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from retrain import Verdict, load_config, run_cycle
from retrain.candidates import HIST_GRADIENT_BOOSTING, LINEAR, WARM_START, XGBOOST
from retrain.registry import MlflowRegistry
from retrain.serving import start_serving
from tests.conftest import wait_until
from tests.synthetic import config_dict, write_partitions

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# The champion is trained once with CHAMPION_ROUNDS. The second cycle's from-scratch trials
# get more rounds so that their fit lasts well over a second: at a tenth of a second, a busy
# box's scheduling noise was as large as the gap being measured.
CHAMPION_ROUNDS, SCRATCH_ROUNDS, WARM_ROUNDS = 300, 1200, 10


def _config(root, name, **overrides):
    raw = config_dict(root / "data", root / "work", **overrides)
    raw["project"]["name"] = name
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def _search(rounds, **families):
    return {
        "num_boost_round": rounds, "report_every": rounds // 6, "early_stopping": False,
        "early_stopping_rounds": None,  # every trial boosts to its rounds: timed and counted
        "families": {"xgboost_warm_start": {"enabled": True, "num_boost_round": WARM_ROUNDS,
                                            "space": {"eta": {"type": "float", "low": 0.01,
                                                              "high": 0.05, "log": True},
                                                      "max_depth": 3}},
                     **families},
    }


@pytest.fixture(scope="module")
def warm(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    write_partitions(root / "data", [1, 2, 3], rows=12000, seed=3)
    write_partitions(root / "data", [4], rows=5000, seed=3)
    first = run_cycle(_config(
        root, "warm",
        search={**_search(CHAMPION_ROUNDS), "num_samples": 1,
                "space": {"max_depth": 4, "eta": 0.1}},
        resources={"cpus_per_trial": 0.9},
    ))
    # retention drops the old months; two new months arrive (the champion, refit on its
    # holdout month 4 for serving, has seen month 4: the warm start continues on month 5)
    for old in (1, 2, 3):
        shutil.rmtree(root / "data" / f"period={old}")
    write_partitions(root / "data", [5, 6], rows=3000, seed=3)
    config = _config(
        root, "warm",
        search={**_search(SCRATCH_ROUNDS), "num_samples": 4,
                "space": {"max_depth": {"type": "int", "low": 3, "high": 5}, "eta": 0.1}},
        resources={"cpus_per_trial": 0.9},
        # refresh at no loss; latency ratios are a coin toss on two busy cores
        evaluation={"mode": "non_inferiority", "non_inferiority_margin": 0.01,
                    "guardrails": {"max_latency_ratio": None, "max_batch_latency_ratio": None}},
    )
    return {"first": first, "second": run_cycle(config), "config": config}


def test_the_first_cycle_has_no_champion_to_start_from(warm):
    first = warm["first"]
    assert first.decision.verdict is Verdict.PROMOTE and first.model_version == "1"
    assert first.search.families == (XGBOOST,)
    assert first.search.skipped == {WARM_START: "no champion yet"}


def test_both_families_share_the_search_and_rounds_count_from_the_warm_start(warm):
    search = warm["second"].search
    assert search.families == (XGBOOST, WARM_START) and search.skipped == {}
    by_family = {f: [t for t in search.trials if t.family == f] for f in search.families}
    assert [len(v) for v in by_family.values()] == [2, 2]
    assert all(t.status == "completed" for t in search.trials)
    for trial in by_family[WARM_START]:
        assert trial.rounds == WARM_ROUNDS
        assert [h["round"] for h in trial.history] == [WARM_ROUNDS]
        assert set(trial.params) == {"eta", "max_depth"} and 0.01 <= trial.params["eta"] <= 0.05
    for trial in by_family[XGBOOST]:
        assert [h["round"] for h in trial.history] == list(range(200, SCRATCH_ROUNDS + 1, 200))


def test_warm_started_trials_train_faster_than_from_scratch(warm):
    trials = warm["second"].search.trials
    fit = {f: [t.fit_seconds for t in trials if t.family == f] for f in (XGBOOST, WARM_START)}
    assert all(s is not None and s > 0 for v in fit.values() for s in v), fit
    ratio = np.mean(fit[WARM_START]) / np.mean(fit[XGBOOST])
    # a warm start still loads the champion and scores its trees on its rows once; the rest
    # is 10 rounds against 1200
    assert ratio < 0.5, fit


def test_the_evaluator_picks_the_warm_start_because_it_scores_better(warm):
    second = warm["second"]
    family = {t.trial_id: t.family for t in second.search.trials}
    comparison = second.comparison
    assert family[comparison.challenger.trial_id] == WARM_START
    scratch = [f for f in comparison.finalists if family[f.trial_id] == XGBOOST]
    assert scratch, "a from-scratch trial should be among the finalists"
    best_scratch = max(f.metrics["auc"] for f in scratch)
    assert comparison.challenger.metrics["auc"] > best_scratch
    # the evidence, not the family, decided: the champion and the warm start are close,
    # a model from the few new rows alone is clearly worse
    assert comparison.champion.metrics["auc"] > best_scratch


def test_the_promoted_warm_start_is_the_champion_plus_its_new_rounds(warm):
    second = warm["second"]
    assert second.decision.verdict is Verdict.PROMOTE and second.model_version == "2"
    registry = MlflowRegistry.from_config(warm["config"])
    v1, v2 = registry.load("1"), registry.load("2")
    assert v2.flavor == "xgboost"
    assert v2.booster.num_boosted_rounds() == v1.booster.num_boosted_rounds() + WARM_ROUNDS
    # Refit for serving: a tree's root cover is the sum of the hessians p(1 - p) of the rows
    # it grew on (p the champion's prediction for the first new tree), so it names the rows
    # exactly: every row of month 5 (its validation share included, which the trial itself
    # never trained on) and of month 6, the holdout; none of month 4, which v1 had seen.
    import pandas as pd
    import xgboost as xgb

    def hessians(months, head=None) -> float:
        raw = pd.concat([pd.read_parquet(warm["config"].data.path / f"period={m}")
                         for m in months], ignore_index=True)
        raw = raw if head is None else raw.head(head)
        p = v1.booster.predict(xgb.DMatrix(v1.spec.frame(raw), enable_categorical=True))
        return float(np.sum(p * (1 - p)))

    base = v1.booster.num_boosted_rounds()
    trees = v2.booster[base:base + 1].trees_to_dataframe()
    cover = float(trees.loc[trees["Node"] == 0, "Cover"].iloc[0])
    assert cover == pytest.approx(hessians([5, 6]), rel=1e-3)
    # the trial's own rows (month 5 without its validation share) would be far fewer
    assert cover > 1.5 * hessians([5], head=3000 - 1600)
    client = MlflowClient(tracking_uri=warm["config"].tracking_uri)
    parent = client.get_run(second.run_id)
    assert parent.data.tags["retrain.families"] == f"{XGBOOST},{WARM_START}"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{second.run_id}'")
    assert sorted(c.data.tags["retrain.family"] for c in children) == sorted(
        [WARM_START, WARM_START, XGBOOST, XGBOOST])
    assert all("fit_seconds" in c.data.metrics for c in children)


def test_a_new_category_keeps_the_old_codes_and_the_warm_start_runs(warm, tmp_path):
    """A new category grows the vocabulary at its end: the champion's codes stay valid, so the
    warm start proceeds (it reads the new category as missing, as the champion would), while
    models from scratch learn it."""
    from tests.synthetic import frame

    config = warm["config"]
    data = tmp_path / "data"
    for source in sorted(config.data.path.iterdir()):
        shutil.copytree(source, data / source.name)
    # month 7 brings a new category into the training window; month 8 is the holdout
    write_partitions(data, [8], rows=1500, seed=4)
    folder = data / "period=7"
    folder.mkdir()
    frame(6000, 77).assign(cat=lambda f: f["cat"].replace("c", "d")).to_parquet(
        folder / "part-0.parquet", index=False)
    grown = config.model_copy(update={
        "data": config.data.model_copy(update={"path": data}),
        "admission": config.admission.model_copy(update={"enabled": False}),
        "search": config.search.model_copy(update={
            "num_samples": 2, "num_boost_round": 20, "report_every": 10,
            "space": {"eta": 0.1, "max_depth": 3}}),
    })
    champion = MlflowRegistry.from_config(config).load(warm["second"].model_version)
    result = run_cycle(grown)
    assert result.search.families == (XGBOOST, WARM_START) and result.search.skipped == {}
    warm_trials = [t for t in result.search.trials if t.family == WARM_START]
    assert warm_trials and all(t.status == "completed" for t in warm_trials)
    # each warm-started model is the champion's trees plus its own: the champion's part
    # predicts exactly as the champion does
    from retrain.search import load_model

    rows = champion.spec.frame(frame(200, 78).assign(cat="d"))
    for trial in warm_trials:
        booster = load_model(trial)
        base = champion.booster.num_boosted_rounds()
        assert booster.num_boosted_rounds() == base + trial.rounds
        assert np.allclose(booster.inplace_predict(rows, iteration_range=(0, base)),
                           champion.booster.inplace_predict(rows))
    # the cycle's spec grew at the end: every known category keeps its code
    registry = MlflowRegistry.from_config(grown)
    assert champion.spec.categories["cat"] == ("a", "b", "c")
    if result.model_version is not None:
        served = registry.load(result.model_version)
        family = {t.trial_id: t.family for t in result.search.trials}[
            result.comparison.challenger.trial_id]
        expected = ("a", "b", "c") if family == WARM_START else ("a", "b", "c", "d")
        assert served.spec.categories["cat"] == expected


@pytest.fixture(scope="module")
def sklearn_project(ray_cluster, serve_port, tmp_path_factory):
    root = tmp_path_factory.mktemp("sklearn")
    write_partitions(root / "data", [1, 2, 3], rows=1500)
    config = _config(
        root, "sk",
        search={"num_samples": 2, "families": {
            "xgboost": {"enabled": False},
            "hist_gradient_boosting": {"enabled": True, "space": {
                "learning_rate": {"type": "float", "low": 0.05, "high": 0.2}, "max_iter": 30}},
            "linear": {"enabled": True}}},
        resources={"cpus_per_trial": 0.9},
        serving={"port": serve_port, "app_name": "sk", "route_prefix": "/sk",
                 "cpus_per_replica": 0.2, "poll_interval_s": 0.5},
    )
    return {"config": config, "result": run_cycle(config)}


def test_sklearn_families_compete_and_the_winner_is_registered_with_skops(sklearn_project):
    result, config = sklearn_project["result"], sklearn_project["config"]
    assert sorted(t.family for t in result.search.trials) == [HIST_GRADIENT_BOOSTING, LINEAR]
    assert all(t.status == "completed" and t.rounds == 1 for t in result.search.trials)
    assert result.decision.verdict is Verdict.PROMOTE and result.model_version == "1"
    loaded = MlflowRegistry.from_config(config).load("1")
    assert loaded.flavor == "sklearn"
    family = {t.trial_id: t.family for t in result.search.trials}[
        result.comparison.challenger.trial_id]
    step = loaded.booster.named_steps["model"] if family == LINEAR else loaded.booster
    assert type(step).__name__ in ("LogisticRegression", "HistGradientBoostingClassifier")


def test_a_served_sklearn_model_answers_over_http(sklearn_project):
    from ray import serve

    config = sklearn_project["config"]
    url = start_serving(config)
    try:
        wait_until(lambda: _health(url).get("model_version") == "1", timeout=120)
        response = httpx.post(f"{url}/invocations", json={"dataframe_records": [
            {"x1": 0.3, "x2": 4.0, "cat": "b"}, {"x1": -1.0, "x2": 9.0, "cat": "zz"}]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"] == "1"
        assert len(body["predictions"]) == 2 and all(0 < p < 1 for p in body["predictions"])
        assert body["predictions"][0] > body["predictions"][1]  # x1 up and x2 down: more likely
    finally:
        serve.delete(config.serving.app_name)


def _health(url: str) -> dict:
    try:
        return httpx.get(f"{url}/health", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return {}
