"""Loads registered model versions from MLflow for serving (the only MLflow code in serve/).

A model version is an XGBoost booster (UBJ, not pickle) or a scikit-learn estimator (skops,
loaded against a fixed allow-list of types, never pickle), plus metadata written at training
time: the feature spec and the task. Imports of MLflow, XGBoost and skops happen inside
functions so that importing ``serve`` stays cheap.
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
    """Download and load one registered version."""
    import mlflow
    import mlflow.xgboost
    from mlflow.models import Model

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    uri = f"models:/{name}/{version}"
    with tempfile.TemporaryDirectory(prefix="retrain-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        except Exception as exc:  # MLflow raises several kinds here; all mean "cannot load"
            raise ModelUnavailable(f"cannot download {uri}: {exc}") from exc
        mlmodel = Model.load(Path(local))
        metadata = mlmodel.metadata or {}
        if "feature_spec" not in metadata:
            raise ModelUnavailable(
                f"{uri} has no feature_spec in its metadata; it was not logged by retrain"
            )
        flavors = mlmodel.flavors
        if "xgboost" in flavors:
            flavor, booster = "xgboost", mlflow.xgboost.load_model(local)
        elif flavors.get("sklearn", {}).get("serialization_format") == "skops":
            flavor = "sklearn"
            try:
                booster = load_sklearn(Path(local) / flavors["sklearn"]["pickled_model"])
            except Exception as exc:  # skops: untrusted types, or a damaged file
                raise ModelUnavailable(
                    f"cannot load the scikit-learn model of {uri}: {exc}"
                ) from exc
        else:
            raise ModelUnavailable(
                f"{uri} has flavours {sorted(flavors)}; retrain serves XGBoost models and "
                "scikit-learn models saved with skops"
            )
    return LoadedModel(
        name=name,
        version=str(version),
        task=str(metadata.get("task", "classification")),
        spec=FeatureSpec.from_dict(metadata["feature_spec"]),
        booster=booster,
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


def write_traffic_tag(tracking_uri: str, name: str, value: str | None) -> None:
    """Set the split tag to ``value``; None removes it (all traffic to the alias' version)."""
    client = _client(tracking_uri)
    if value is not None:
        client.set_registered_model_tag(name, TRAFFIC_TAG, value)
    elif TRAFFIC_TAG in (client.get_registered_model(name).tags or {}):
        client.delete_registered_model_tag(name, TRAFFIC_TAG)
