"""Registration is idempotent for a cycle's model (real MLflow: SQLite registry, local
artifacts). A driver that dies after MLflow created the version, before the cycle recorded
it, registers again on resume: it must get the same version back, not a second one."""

from __future__ import annotations

import pytest
import xgboost as xgb

from retrain.registry import RUN_TAG, MlflowRegistry
from serve.features import FeatureSpec
from tests.synthetic import frame


@pytest.fixture
def logged(tmp_path):
    reg = MlflowRegistry(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                         artifact_location=str(tmp_path / "artifacts"), experiment="reg",
                         model_name="reg-test")
    data = frame(200, 1)
    spec = FeatureSpec.learn(data, ("x1", "x2", "cat"))
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 2, "nthread": 1},
                        xgb.DMatrix(spec.frame(data), data["label"], enable_categorical=True), 3)

    def model():
        with reg.cycle_run("cycle", {}) as run_id:
            return run_id, reg.log_model(run_id, booster, spec, task="classification",
                                         metric="auc")

    return reg, model


def test_registering_a_cycles_model_again_returns_the_version_it_already_is(logged):
    reg, model = logged
    run_id, uri = model()
    tags = {RUN_TAG: run_id, "retrain.cycle_id": "c1"}
    first = reg.register(uri, tags=tags)
    assert reg.register(uri, tags=tags) == first
    versions = reg.client.search_model_versions("name = 'reg-test'")
    assert [str(v.version) for v in versions] == [first]


def test_a_version_created_without_the_cycles_tags_is_found_by_its_run_and_tagged(logged):
    reg, model = logged
    run_id, uri = model()
    # what a driver killed inside MLflow's registration could leave: the version, no tags
    reg.client.create_registered_model("reg-test")
    made = reg.client.create_model_version("reg-test", uri, run_id)
    tags = {RUN_TAG: run_id, "data.digest": "abc"}
    assert reg.register(uri, tags=tags) == str(made.version)
    assert reg.client.get_model_version("reg-test", made.version).tags == tags
    assert len(reg.client.search_model_versions("name = 'reg-test'")) == 1


def test_another_model_of_the_same_run_or_another_run_gets_its_own_version(logged):
    reg, model = logged
    run_a, uri_a = model()
    run_b, uri_b = model()
    a = reg.register(uri_a, tags={RUN_TAG: run_a})
    b = reg.register(uri_b, tags={RUN_TAG: run_b})
    # no run tag: nothing to match on, a plain registration
    c = reg.register(uri_a, tags={})
    assert len({a, b, c}) == 3
