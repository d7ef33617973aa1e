"""The model registry: the `Registry` protocol, its MLflow implementation, and an in-memory one
for orchestration tests (see `retrain.registry.base`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from retrain.registry.base import (
    CHALLENGER,
    CHAMPION,
    CYCLE_TAG,
    RUN_TAG,
    CycleRecord,
    Lineage,
    Registry,
)
from retrain.registry.memory import InMemoryRegistry
from retrain.registry.mlflow import MlflowRegistry

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "CYCLE_TAG",
    "RUN_TAG",
    "CycleRecord",
    "InMemoryRegistry",
    "Lineage",
    "MlflowRegistry",
    "Registry",
]

if TYPE_CHECKING:  # mypy checks that both implementations satisfy the protocol

    def _conforms(memory: InMemoryRegistry, mlflow: MlflowRegistry) -> tuple[Registry, Registry]:
        return memory, mlflow
