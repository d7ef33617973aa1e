"""Loads registered model versions from MLflow for serving (the only MLflow code in serve/).

A model version is an XGBoost booster (UBJ, not pickle) plus metadata written at training
time: the feature spec and the task. Imports of MLflow and XGBoost happen inside functions so
that importing ``serve`` stays cheap.
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
    booster: Any  # xgboost.Booster

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Scores rows already shaped by ``spec.frame``: P(class 1) or the regression value."""
        return np.asarray(self.booster.inplace_predict(frame), dtype=np.float64)


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
        metadata = Model.load(Path(local)).metadata or {}
        if "feature_spec" not in metadata:
            raise ModelUnavailable(
                f"{uri} has no feature_spec in its metadata; it was not logged by retrain"
            )
        booster = mlflow.xgboost.load_model(local)
    return LoadedModel(
        name=name,
        version=str(version),
        task=str(metadata.get("task", "classification")),
        spec=FeatureSpec.from_dict(metadata["feature_spec"]),
        booster=booster,
    )
