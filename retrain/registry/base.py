"""The registry seam: what the training side asks of a model registry, as a protocol.

`retrain.registry.mlflow.MlflowRegistry` is the implementation a project runs on (MLflow holds
runs, versions, aliases and tags); `retrain.registry.memory.InMemoryRegistry` keeps the same
state in a dict, for orchestration tests that need no MLflow. Callers type against
`Registry`. The alias and tag names live here and in `serve.loader` (the serving side, which
may not import retrain).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from serve.features import FeatureSpec
from serve.loader import LoadedModel

CHAMPION = "champion"
#: a promoted version waiting for (or in) its rollout
CHALLENGER = "challenger"
CYCLE_TAG = "retrain.kind"
#: on a registered version: the cycle run that registered it
RUN_TAG = "retrain.run_id"


@dataclass(frozen=True)
class CycleRecord:
    """One past cycle, as `retrain status` shows it."""

    run_id: str
    started: float
    status: str
    verdict: str | None
    reasons: str | None
    challenger_score: str | None
    champion_score: str | None
    model_version: str | None
    holdout: str | None


class Registry(Protocol):
    """Versions, aliases and tags of one registered model, and the runs of its cycles.

    Errors are `retrain.errors` values: `ModelNotFoundError` for a version or model that is
    not there, `RegistryError` when the store fails."""

    model_name: str

    # -- versions and aliases
    def alias_version(self, alias: str = CHAMPION) -> str | None: ...
    def load(self, version: str) -> LoadedModel: ...
    def feature_spec(self, version: str) -> FeatureSpec: ...
    def set_alias(self, alias: str, version: str) -> None: ...
    def require_version(self, version: str) -> None: ...
    def register(self, model_uri: str, tags: dict[str, str]) -> str: ...
    def version_partitions(self, version: str, *, trained_only: bool = False) -> set[str]: ...
    def registered_at(self, version: str) -> float: ...
    def evaluated_score(self, version: str) -> float | None: ...
    def load_reference(self, version: str) -> Any: ...

    # -- the registered model's own tags (the traffic split, the rollout summary)
    def model_tags(self) -> dict[str, str]: ...
    def set_model_tag(self, key: str, value: str) -> None: ...
    def delete_model_tag(self, key: str) -> None: ...

    # -- runs
    def cycle_run(self, run_name: str, tags: dict[str, str], *,
                  run_id: str | None = None) -> AbstractContextManager[str]: ...
    def log_cycle(self, run_id: str, *, params: dict[str, Any], metrics: dict[str, float],
                  tags: dict[str, str], artifacts: dict[str, Any],
                  files: dict[str, str] | None = None) -> None: ...
    def log_trials(self, parent_run_id: str, search: Any) -> None: ...
    def log_model(self, run_id: str, booster: Any, spec: Any, *, task: str,
                  metric: str) -> str: ...
    def log_reference(self, run_id: str, sketch: Any) -> None: ...
    def recent_cycles(self, limit: int = 10) -> list[CycleRecord]: ...



@dataclass(frozen=True)
class Lineage:
    """The partitions behind a registered version, as its lineage tags record them."""

    train_partitions: frozenset[str]
    holdout_partitions: frozenset[str]
    #: what the served model was fit on: the training partitions, and the holdout's too when
    #: it was refit on them for serving; None on versions registered before it was recorded
    trained_partitions: frozenset[str] | None = None

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Lineage:
        def values(key: str) -> frozenset[str]:
            return frozenset(v for v in tags.get(key, "").split(",") if v)

        return cls(values("data.train_partitions"), values("data.holdout_partitions"),
                   values("data.trained_partitions")
                   if "data.trained_partitions" in tags else None)

    def partitions(self, *, trained_only: bool = False) -> set[str]:
        """Trained and evaluated on; ``trained_only``: trained on (what a warm start need not
        see again)."""
        if trained_only:
            return set(self.trained_partitions if self.trained_partitions is not None
                       else self.train_partitions)
        return set(self.train_partitions | self.holdout_partitions)
