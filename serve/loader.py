"""Loads registered model versions from MLflow for serving (the only MLflow code in serve/).

A model version is an XGBoost booster (UBJ, not pickle) or a scikit-learn estimator (skops,
loaded against a fixed allow-list of types, never pickle), plus metadata written at training
time: the feature spec and the task. Imports of MLflow, XGBoost and skops happen inside
functions so that importing ``serve`` stays cheap.

Registry contents are data, never code: a version's ``MLmodel`` file is read as YAML and
checked against what retrain writes (`check_flavors`), and the booster is read from the
artifact's own model file by XGBoost, not through MLflow's flavour loaders, which honour a
flavour's ``code`` folder (put on ``sys.path``) and ``model_class`` (imported). A version that
declares either, another class, or a model file outside its artifact is refused before
anything of it is imported or parsed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serve.features import FeatureSpec


class ModelUnavailable(RuntimeError):
    """No model version can be served (none registered under the alias, or it cannot load)."""


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    task: str
    spec: FeatureSpec
    #: an xgboost.Booster, or a fitted scikit-learn estimator when ``flavor`` is "sklearn"
    booster: Any
    flavor: str = "xgboost"

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Scores rows already shaped by ``spec.frame``: P(class 1) or the regression value."""
        return predict_with(self.booster, self.flavor, self.task, frame)

    def size_bytes(self) -> int:
        """The model's size as stored (UBJ or skops)."""
        if self.flavor == "sklearn":
            import skops.io

            return len(skops.io.dumps(self.booster))
        return len(self.booster.save_raw("ubj"))


#: the only types beyond skops' defaults a scikit-learn model may contain to be loaded: what
#: retrain's HistGradientBoosting and linear pipelines need. The list lives here, not in the
#: artifact, so a crafted model file cannot widen it.
SKLEARN_TRUSTED_TYPES = (
    "functools.partial",
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.utils.validation.check_array",
)


def predict_with(model: Any, flavor: str, task: str, frame: pd.DataFrame) -> np.ndarray:
    """P(class 1) or the regression value from a booster or a scikit-learn estimator."""
    if flavor == "sklearn":
        if task == "classification":
            return np.asarray(model.predict_proba(frame)[:, 1], dtype=np.float64)
        return np.asarray(model.predict(frame), dtype=np.float64)
    return np.asarray(model.inplace_predict(frame), dtype=np.float64)


def load_sklearn(path: str | Path) -> Any:
    """A skops file written by retrain, loaded against `SKLEARN_TRUSTED_TYPES`."""
    import skops.io

    return skops.io.load(path, trusted=list(SKLEARN_TRUSTED_TYPES))


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def alias_version(tracking_uri: str, name: str, alias: str) -> str | None:
    """The version number the alias points at, or None when the model or alias is absent."""
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(tracking_uri).get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def load_version(tracking_uri: str, name: str, version: str) -> LoadedModel:
    """Download and load one registered version (refused when its MLmodel asks for code)."""
    uri = f"models:/{name}/{version}"
    with tempfile.TemporaryDirectory(prefix="retrain-model-") as tmp:
        local = _download(tracking_uri, uri, tmp)
        return load_local(local, name=name, version=str(version), where=uri)


def _download(tracking_uri: str, uri: str, tmp: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
    except Exception as exc:  # MLflow raises several kinds here; all mean "cannot load"
        raise ModelUnavailable(f"cannot download {uri}: {exc}") from exc


def load_spec(tracking_uri: str, name: str, version: str) -> FeatureSpec:
    """One registered version's feature spec, from its MLmodel file alone: no model file is
    downloaded and no XGBoost or scikit-learn is imported (the rollout driver's smoke rows)."""
    import yaml

    uri = f"models:/{name}/{version}"
    with tempfile.TemporaryDirectory(prefix="retrain-spec-") as tmp:
        path = _download(tracking_uri, f"{uri}/MLmodel", tmp)
        try:
            metadata = (yaml.safe_load(Path(path).read_text()) or {}).get("metadata") or {}
        except (OSError, yaml.YAMLError, AttributeError) as exc:  # AttributeError: no mapping
            raise ModelUnavailable(f"cannot read the MLmodel file of {uri}: {exc}") from exc
    return _spec_of(metadata, uri)


def _spec_of(metadata: Any, where: str) -> FeatureSpec:
    if not isinstance(metadata, dict) or "feature_spec" not in metadata:
        raise ModelUnavailable(
            f"{where} has no feature_spec in its metadata; it was not logged by retrain"
        )
    try:
        return FeatureSpec.from_dict(metadata["feature_spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelUnavailable(f"{where}: its feature_spec cannot be read: {exc}") from exc


#: the only model class an ``xgboost`` flavour may name (what retrain logs); anything else
#: would make MLflow import and instantiate it
XGBOOST_MODEL_CLASSES = ("xgboost.core.Booster",)
#: XGBoost's own formats (never pickle), by the flavour's ``model_format``
XGBOOST_FORMATS = {"ubj": ".ubj", "json": ".json"}
#: flavour keys whose value names code to run; refused wherever they hold anything
_CODE_KEYS = ("code", "loader_module", "python_model")
#: what a ``python_function`` flavour may name as its loader: MLflow's own, which retrain never
#: calls; any other module would be imported by whoever loads the model as a pyfunc
_PYFUNC_LOADERS = ("mlflow.xgboost", "mlflow.sklearn")


def check_flavors(flavors: Any, where: str) -> tuple[str, dict[str, Any]]:
    """The flavour to load (``xgboost`` or ``sklearn``) and its config, after refusing any
    MLmodel that would run code when loaded: a ``code`` folder, a ``model_class`` outside
    `XGBOOST_MODEL_CLASSES`, a pyfunc loader other than MLflow's, a pickled model."""
    if not isinstance(flavors, dict) or not all(isinstance(v, dict) for v in flavors.values()):
        raise ModelUnavailable(f"{where}: its MLmodel has no readable 'flavors' mapping")
    problems: list[str] = []
    for flavor, conf in flavors.items():
        for key in _CODE_KEYS:
            value = conf.get(key)
            if value in (None, "", []):
                continue
            if key == "loader_module" and flavor == "python_function" and value in _PYFUNC_LOADERS:
                continue
            problems.append(f"flavour {flavor!r} declares {key}: {str(value)[:80]!r}")
    xgb_conf = flavors.get("xgboost")
    if xgb_conf is not None:
        model_class = xgb_conf.get("model_class", XGBOOST_MODEL_CLASSES[0])
        if model_class not in XGBOOST_MODEL_CLASSES:
            problems.append(f"flavour 'xgboost' names model_class {str(model_class)[:80]!r}; "
                            f"only {list(XGBOOST_MODEL_CLASSES)} is loaded")
        if xgb_conf.get("model_format", "ubj") not in XGBOOST_FORMATS:
            problems.append(f"flavour 'xgboost' has model_format "
                            f"{str(xgb_conf.get('model_format'))[:40]!r}; only "
                            f"{sorted(XGBOOST_FORMATS)} (XGBoost's own formats) are loaded")
    if problems:
        raise ModelUnavailable(
            f"{where} is refused: registry contents must not run code when loaded, and "
            f"{'; '.join(problems)}. Log the model with retrain (XGBoost UBJ or a skops file) "
            "and register that version instead")
    if xgb_conf is not None:
        return "xgboost", xgb_conf
    sk_conf = flavors.get("sklearn")
    if sk_conf is not None and sk_conf.get("serialization_format") == "skops":
        return "sklearn", sk_conf
    raise ModelUnavailable(
        f"{where} has flavours {sorted(flavors)}; retrain serves XGBoost models and "
        "scikit-learn models saved with skops")


def _model_file(root: Path, relative: Any, where: str, suffixes: tuple[str, ...]) -> Path:
    """``relative`` resolved inside ``root``: a regular file with one of ``suffixes``."""
    if not isinstance(relative, str) or not relative:
        raise ModelUnavailable(f"{where}: its MLmodel names no model file")
    base = root.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        raise ModelUnavailable(f"{where}: its model file {relative[:120]!r} is not a file "
                               "inside the model's artifact")
    if path.suffix not in suffixes:
        raise ModelUnavailable(f"{where}: its model file {relative[:120]!r} must end with one "
                               f"of {list(suffixes)}")
    return path


def load_local(local: str | Path, *, name: str, version: str, where: str) -> LoadedModel:
    """Load a model version from its downloaded artifact folder (see `check_flavors`)."""
    from mlflow.models import Model

    root = Path(local)
    try:
        mlmodel = Model.load(root)  # YAML (safe loader): data only
    except Exception as exc:  # a missing or malformed MLmodel file
        raise ModelUnavailable(f"{where}: cannot read its MLmodel file: {exc}") from exc
    metadata = mlmodel.metadata or {}
    spec = _spec_of(metadata, where)
    flavor, conf = check_flavors(mlmodel.flavors, where)
    if flavor == "xgboost":
        suffix = XGBOOST_FORMATS[conf.get("model_format", "ubj")]
        path = _model_file(root, conf.get("data"), where, (suffix,))
        import xgboost as xgb

        try:  # XGBoost's own format: a tree ensemble, read by XGBoost, no code
            model = xgb.Booster(model_file=str(path))
        except xgb.core.XGBoostError as exc:
            raise ModelUnavailable(f"{where}: cannot read its XGBoost model: {exc}") from exc
    else:
        path = _model_file(root, conf.get("pickled_model"), where, (".skops",))
        try:
            model = load_sklearn(path)
        except Exception as exc:  # skops: untrusted types, or a damaged file
            raise ModelUnavailable(
                f"cannot load the scikit-learn model of {where}: {exc}"
            ) from exc
    return LoadedModel(
        name=name,
        version=str(version),
        task=str(metadata.get("task", "classification")),
        spec=spec,
        booster=model,
        flavor=flavor,
    )


# -- the traffic split: a registered-model tag beside the aliases ----------------------------

#: the registered-model tag holding ``json.dumps(TrafficSplit.to_dict())`` (the rollout
#: driver writes it; no tag means all traffic to the alias' version)
TRAFFIC_TAG = "retrain.traffic"
#: the rollout driver's summary of the rollout in progress (stage, step, reason), for
#: GET /admin/rollout and POST /admin/promote's check; JSON
ROLLOUT_TAG = "retrain.rollout"


@dataclass(frozen=True)
class RegistryState:
    """What a replica polls: the registered model's aliases and tags, read in one call."""

    #: alias -> version
    aliases: dict[str, str]
    tags: dict[str, str]


def registry_state(tracking_uri: str, name: str) -> RegistryState:
    """Aliases and tags of the registered model (both empty when it does not exist yet)."""
    from mlflow.exceptions import MlflowException

    try:
        model = _client(tracking_uri).get_registered_model(name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return RegistryState(aliases={}, tags={})
        raise
    return RegistryState(
        aliases={str(a): str(v) for a, v in (model.aliases or {}).items()},
        tags=dict(model.tags or {}),
    )


def unknown_versions(tracking_uri: str, name: str, versions: tuple[str, ...]) -> list[str]:
    """The versions in ``versions`` that are not registered under ``name``."""
    from mlflow.exceptions import MlflowException

    client, missing = _client(tracking_uri), []
    for version in versions:
        try:
            client.get_model_version(name, version)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") not in (
                "RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"
            ):
                raise
            missing.append(version)
    return missing


def set_alias(tracking_uri: str, name: str, alias: str, version: str) -> None:
    _client(tracking_uri).set_registered_model_alias(name, alias, version)


def delete_alias(tracking_uri: str, name: str, alias: str) -> None:
    _client(tracking_uri).delete_registered_model_alias(name, alias)


def write_traffic_tag(tracking_uri: str, name: str, value: str | None) -> None:
    """Set the split tag to ``value``; None removes it (all traffic to the alias' version)."""
    client = _client(tracking_uri)
    if value is not None:
        client.set_registered_model_tag(name, TRAFFIC_TAG, value)
    elif TRAFFIC_TAG in (client.get_registered_model(name).tags or {}):
        client.delete_registered_model_tag(name, TRAFFIC_TAG)
