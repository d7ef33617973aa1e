"""Loading registered versions: registry contents are data, never code.

Real MLflow (SQLite registry, local artifacts): a version logged by retrain loads; versions
whose MLmodel was edited to name code (``code:``, ``model_class``, a pyfunc loader) or a model
file outside the artifact are refused with a clear error, and the code they name is never
imported. A control shows that MLflow's own xgboost loader does import it, so the crafted
artifact really is a working exploit and the refusal is what stops it.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
import yaml

from serve.loader import ModelUnavailable, check_flavors, load_version
from tests.synthetic import frame

MODEL = "loader-test"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from retrain.registry import MlflowRegistry
    from serve.features import FeatureSpec

    root = tmp_path_factory.mktemp("loader")
    reg = MlflowRegistry(tracking_uri=f"sqlite:///{root}/mlflow.db",
                         artifact_location=str(root / "artifacts"), experiment="loader",
                         model_name=MODEL)
    data = frame(400, 1)
    spec = FeatureSpec.learn(data, ("x1", "x2", "cat"))
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 2, "nthread": 1},
                        xgb.DMatrix(spec.frame(data), data["label"], enable_categorical=True), 5)
    with reg.cycle_run("loader", {}) as run_id:
        uri = reg.log_model(run_id, booster, spec, task="classification", metric="auc")
    version = reg.register(uri, tags={})
    return {"reg": reg, "root": root, "version": version, "booster": booster, "spec": spec,
            "data": data}


def _crafted(registry, edit, *, code_module: str | None = None) -> str:
    """Register a copy of version 1's artifact whose MLmodel ``edit`` changed; with
    ``code_module``, the copy carries ``code/<module>.py`` that leaves a marker file when
    imported. Returns the new version."""
    import mlflow

    reg, root = registry["reg"], registry["root"]
    mlflow.set_tracking_uri(reg.tracking_uri)
    src = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{MODEL}/{registry['version']}",
        dst_path=str(root / f"dl-{uuid.uuid4().hex[:6]}")))
    work = root / f"crafted-{uuid.uuid4().hex[:6]}"
    shutil.copytree(src, work)
    if code_module:
        (work / "code").mkdir()
        marker = root / f"{code_module}.imported"
        (work / "code" / f"{code_module}.py").write_text(
            f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
            "import xgboost\n\nclass Evil(xgboost.Booster):\n    pass\n")
    mlmodel = yaml.safe_load((work / "MLmodel").read_text())
    edit(mlmodel["flavors"])
    (work / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with reg.cycle_run("crafted", {}) as run_id:
        reg.client.log_artifacts(run_id, str(work), "model")
    run = reg.client.get_run(run_id)
    made = reg.client.create_model_version(MODEL, f"{run.info.artifact_uri}/model", run_id)
    return str(made.version)


def test_a_version_logged_by_retrain_loads_and_predicts(registry):
    model = load_version(registry["reg"].tracking_uri, MODEL, registry["version"])
    assert model.flavor == "xgboost" and model.spec == registry["spec"]
    frame_ = registry["spec"].frame(registry["data"].head(20))
    assert np.allclose(model.predict(frame_), registry["booster"].inplace_predict(frame_))


def test_a_crafted_mlmodel_with_code_and_model_class_is_refused_and_nothing_is_imported(
    registry
):
    module = f"evil_{uuid.uuid4().hex[:8]}"

    def edit(flavors):
        flavors["xgboost"]["code"] = "code"
        flavors["xgboost"]["model_class"] = f"{module}.Evil"

    version = _crafted(registry, edit, code_module=module)
    marker = registry["root"] / f"{module}.imported"
    with pytest.raises(ModelUnavailable) as refused:
        load_version(registry["reg"].tracking_uri, MODEL, version)
    message = str(refused.value)
    assert "must not run code" in message and "code: 'code'" in message
    assert f"{module}.Evil" in message
    assert module not in sys.modules and not marker.exists()

    # the control: MLflow's own flavour loader does put code/ on sys.path and import it
    import mlflow.xgboost

    loaded = mlflow.xgboost.load_model(f"models:/{MODEL}/{version}")
    try:
        assert type(loaded).__name__ == "Evil" and marker.exists()
    finally:
        sys.modules.pop(module, None)


@pytest.mark.parametrize("edit, expected", [
    (lambda f: f["xgboost"].update(model_class="xgboost.sklearn.XGBClassifier"),
     "model_class 'xgboost.sklearn.XGBClassifier'"),
    (lambda f: f["xgboost"].update(code="code"), "declares code"),
    (lambda f: f["python_function"].update(loader_module="evil.loader"),
     "declares loader_module: 'evil.loader'"),
    (lambda f: f["xgboost"].update(data="../../../../etc/passwd"), "not a file inside"),
    (lambda f: f["xgboost"].update(model_format="pickle"), "model_format 'pickle'"),
    (lambda f: f.update(xgboost="oops"), "no readable 'flavors'"),
], ids=["class", "code", "pyfunc-loader", "path", "format", "garbled"])
def test_other_crafted_flavours_are_refused_with_the_reason(registry, edit, expected):
    version = _crafted(registry, edit)
    with pytest.raises(ModelUnavailable) as refused:
        load_version(registry["reg"].tracking_uri, MODEL, version)
    assert expected in str(refused.value)


def test_the_champion_load_of_a_cycle_goes_through_the_same_check(registry):
    """`retrain run` loads the champion with MlflowRegistry.load: refused the same way, as
    the registry's error."""
    from retrain.errors import RetrainError

    version = _crafted(registry, lambda f: f["xgboost"].update(code="code"))
    with pytest.raises(RetrainError, match="must not run code"):
        registry["reg"].load(version)


def test_check_flavors_accepts_what_retrain_writes():
    xgb_flavors = {"python_function": {"loader_module": "mlflow.xgboost", "data": "model.ubj"},
                   "xgboost": {"code": None, "data": "model.ubj",
                               "model_class": "xgboost.core.Booster", "model_format": "ubj"}}
    assert check_flavors(xgb_flavors, "x")[0] == "xgboost"
    sk = {"python_function": {"loader_module": "mlflow.sklearn"},
          "sklearn": {"code": None, "pickled_model": "model.skops",
                      "serialization_format": "skops"}}
    assert check_flavors(sk, "x")[0] == "sklearn"
    with pytest.raises(ModelUnavailable, match="saved with skops"):
        check_flavors({"sklearn": {"serialization_format": "cloudpickle"}}, "x")


@pytest.mark.parametrize("family", ["hist_gradient_boosting", "linear"])
def test_scikit_learn_versions_load_through_skops_and_predict(registry, family):
    """The skops path keeps working behind the MLmodel check: both scikit-learn families
    retrain logs are read with the allow-list and predict as the fitted estimator did."""
    from retrain import candidates

    name = {"hist_gradient_boosting": candidates.HIST_GRADIENT_BOOSTING,
            "linear": candidates.LINEAR}[family]
    reg, spec, data = registry["reg"], registry["spec"], registry["data"]
    shaped = spec.frame(data)
    estimator = candidates.build_sklearn(name, "classification", {}, frame=shaped, seed=0)
    estimator.fit(shaped, data["label"])
    with reg.cycle_run(f"sk-{family}", {}) as run_id:
        uri = reg.log_model(run_id, estimator, spec, task="classification", metric="auc")
    version = reg.register(uri, tags={})
    model = load_version(reg.tracking_uri, MODEL, version)
    assert model.flavor == "sklearn"
    head = shaped.head(20)
    assert np.allclose(model.predict(head), estimator.predict_proba(head)[:, 1])


def test_a_feature_spec_is_read_from_the_mlmodel_file_alone(registry):
    """The rollout driver's smoke rows need only the spec: read without the model file, so
    a version whose model file cannot be loaded still gives its spec."""
    from retrain.errors import ModelNotFoundError

    reg = registry["reg"]
    assert reg.feature_spec(registry["version"]) == registry["spec"]
    unloadable = _crafted(registry, lambda f: f["xgboost"].update(data="missing.ubj"))
    with pytest.raises(ModelNotFoundError, match="not a file inside"):
        reg.load(unloadable)
    assert reg.feature_spec(unloadable) == registry["spec"]
    with pytest.raises(ModelNotFoundError, match="version 999"):
        reg.feature_spec("999")


def test_reading_a_feature_spec_imports_no_model_library(registry):
    import subprocess

    code = ("import sys; from serve.loader import load_spec; "
            f"spec = load_spec({registry['reg'].tracking_uri!r}, {MODEL!r}, "
            f"{registry['version']!r}); "
            "print(spec.names, 'xgboost' in sys.modules, 'sklearn' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.split("\n")[-2] == f"{registry['spec'].names} False False"
