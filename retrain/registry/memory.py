"""`InMemoryRegistry`: the `Registry` protocol over plain dicts, for orchestration tests.

It keeps what MLflow would: versions (a `LoadedModel` each, with its tags and registration
time), aliases, the registered model's tags, cycle runs with their tags, logged models and
reference sketches. It raises what `MlflowRegistry` raises (`ModelNotFoundError` for a
version or alias that is not there). Nothing is written anywhere; nothing survives the
process. Integration tests keep real MLflow (a SQLite store).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from retrain.errors import ModelNotFoundError
from retrain.registry.base import CHAMPION, CYCLE_TAG, CycleRecord, Lineage
from serve.features import FeatureSpec
from serve.loader import LoadedModel


class InMemoryRegistry:
    def __init__(self, model_name: str = "model", *, clock=time.time) -> None:
        self.model_name = model_name
        self._clock = clock
        self.versions: dict[str, LoadedModel] = {}
        self.version_tags: dict[str, dict[str, str]] = {}
        self._registered_at: dict[str, float] = {}
        self.aliases: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        #: run id -> {"tags", "params", "metrics", "artifacts", "status", "started"}
        self.runs: dict[str, dict[str, Any]] = {}
        self._models: dict[str, tuple[Any, Any, str]] = {}  # model uri -> booster, spec, task
        self._references: dict[str, Any] = {}  # run id -> sketch
        self._ids = itertools.count(1)

    # -- set-up for tests: a version as a cycle would have registered it
    def add_version(self, model: LoadedModel, tags: dict[str, str] | None = None) -> str:
        version = str(len(self.versions) + 1)
        self.versions[version] = LoadedModel(self.model_name, version, model.task, model.spec,
                                             model.booster, model.flavor)
        self.version_tags[version] = dict(tags or {})
        self._registered_at[version] = self._clock()
        return version

    # -- versions and aliases
    def alias_version(self, alias: str = CHAMPION) -> str | None:
        return self.aliases.get(alias)

    def load(self, version: str) -> LoadedModel:
        self.require_version(version)
        return self.versions[version]

    def feature_spec(self, version: str) -> FeatureSpec:
        return self.load(version).spec

    def set_alias(self, alias: str, version: str) -> None:
        self.require_version(version)
        self.aliases[alias] = version

    def require_version(self, version: str) -> None:
        if version not in self.versions:
            raise ModelNotFoundError(f"model {self.model_name!r} has no version {version}")

    def register(self, model_uri: str, tags: dict[str, str]) -> str:
        for version, known in self.version_tags.items():
            if known.get("retrain.model_uri") == model_uri:
                return version  # idempotent, as MlflowRegistry.register
        if model_uri not in self._models:
            raise ModelNotFoundError(f"no model was logged at {model_uri}")
        booster, spec, task = self._models[model_uri]
        model = LoadedModel(self.model_name, "0", task, spec, booster)
        return self.add_version(model, {**tags, "retrain.model_uri": model_uri})

    def version_partitions(self, version: str, *, trained_only: bool = False) -> set[str]:
        self.require_version(version)
        return Lineage.from_tags(self.version_tags[version]).partitions(
            trained_only=trained_only)

    def registered_at(self, version: str) -> float:
        self.require_version(version)
        return self._registered_at[version]

    def evaluated_score(self, version: str) -> float | None:
        """As `MlflowRegistry.evaluated_score`: the newest cycle that judged it as the
        champion, else the cycle that promoted it."""
        judged = [r for r in self.runs.values()
                  if r["tags"].get("retrain.champion_version_before") == version
                  and r["tags"].get("retrain.champion_score")]
        if judged:
            newest = max(judged, key=lambda r: r["started"])
            return float(newest["tags"]["retrain.champion_score"])
        run = self.runs.get(self.version_tags.get(version, {}).get("retrain.run_id", ""))
        value = None if run is None else run["tags"].get("retrain.challenger_score")
        return float(value) if value else None

    def load_reference(self, version: str) -> Any:
        run_id = self.version_tags.get(version, {}).get("retrain.run_id")
        return None if run_id is None else self._references.get(run_id)

    # -- the registered model's own tags
    def model_tags(self) -> dict[str, str]:
        return dict(self.tags)

    def set_model_tag(self, key: str, value: str) -> None:
        self.tags[key] = value

    def delete_model_tag(self, key: str) -> None:
        self.tags.pop(key, None)

    # -- runs
    @contextmanager
    def cycle_run(self, run_name: str, tags: dict[str, str], *,
                  run_id: str | None = None) -> Iterator[str]:
        if run_id is None:
            run_id = f"run-{next(self._ids)}"
            self.runs[run_id] = {"name": run_name, "tags": {CYCLE_TAG: "cycle", **tags},
                                 "params": {}, "metrics": {}, "artifacts": {},
                                 "started": self._clock()}
        self.runs[run_id]["status"] = "RUNNING"
        try:
            yield run_id
        except BaseException as exc:
            self.runs[run_id]["tags"]["retrain.error"] = f"{type(exc).__name__}: {exc}"
            self.runs[run_id]["status"] = "FAILED"
            raise
        self.runs[run_id]["status"] = "FINISHED"

    def log_cycle(self, run_id: str, *, params: dict[str, Any], metrics: dict[str, float],
                  tags: dict[str, str], artifacts: dict[str, Any],
                  files: dict[str, str] | None = None) -> None:
        run = self.runs[run_id]
        run["params"].update(params)
        run["metrics"].update(metrics)
        run["tags"].update(tags)
        run["artifacts"].update(artifacts)

    def log_trials(self, parent_run_id: str, search: Any) -> None:
        self.runs[parent_run_id]["trials"] = list(search.trials)

    def log_model(self, run_id: str, booster: Any, spec: Any, *, task: str,
                  metric: str) -> str:
        uri = f"memory://{run_id}/model"
        self._models[uri] = (booster, spec, task)
        return uri

    def log_reference(self, run_id: str, sketch: Any) -> None:
        self._references[run_id] = sketch

    def recent_cycles(self, limit: int = 10) -> list[CycleRecord]:
        runs = sorted(self.runs.items(), key=lambda kv: kv[1]["started"], reverse=True)
        return [CycleRecord(
            run_id=run_id, started=run["started"], status=run.get("status", "RUNNING"),
            verdict=run["tags"].get("retrain.verdict"),
            reasons=run["tags"].get("retrain.reasons") or run["tags"].get("retrain.error"),
            challenger_score=run["tags"].get("retrain.challenger_score"),
            champion_score=run["tags"].get("retrain.champion_score"),
            model_version=run["tags"].get("retrain.model_version"),
            holdout=run["tags"].get("data.holdout_partitions"),
        ) for run_id, run in runs[:limit]]
