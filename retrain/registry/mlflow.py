"""`MlflowRegistry`: the `Registry` on MLflow: cycle runs, trial runs, model versions,
aliases, lineage.

Every MLflow call of the training side goes through it; MLflow exceptions are translated into
`retrain.errors` here. The default store is a SQLite file plus an artifact folder in the
project's workdir; any tracking URI works instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from retrain.errors import ModelNotFoundError, RegistryError
from retrain.registry.base import CHAMPION, CYCLE_TAG, RUN_TAG, CycleRecord, Lineage
from serve.features import FeatureSpec
from serve.loader import LoadedModel, ModelUnavailable, alias_version, load_spec, load_version


class MlflowRegistry:
    def __init__(
        self, *, tracking_uri: str, artifact_location: str, experiment: str, model_name: str
    ) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_location = artifact_location
        self.experiment = experiment
        self.model_name = model_name
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    @classmethod
    def from_config(cls, config) -> MlflowRegistry:
        return cls(
            tracking_uri=config.tracking_uri,
            artifact_location=config.artifact_location,
            experiment=config.experiment_name,
            model_name=config.model_name,
        )

    # -- versions and aliases ----------------------------------------------------------------
    def alias_version(self, alias: str = CHAMPION) -> str | None:
        with _translated(f"reading alias {alias!r} of model {self.model_name!r}"):
            return alias_version(self.tracking_uri, self.model_name, alias)

    def load(self, version: str) -> LoadedModel:
        try:
            return load_version(self.tracking_uri, self.model_name, version)
        except ModelUnavailable as exc:
            raise ModelNotFoundError(
                f"model {self.model_name!r} version {version} cannot be loaded: {exc}"
            ) from exc

    def feature_spec(self, version: str) -> FeatureSpec:
        """The version's feature spec from its MLmodel file: no model is loaded."""
        try:
            return load_spec(self.tracking_uri, self.model_name, version)
        except ModelUnavailable as exc:
            raise ModelNotFoundError(
                f"model {self.model_name!r} version {version}: {exc}") from exc

    def set_alias(self, alias: str, version: str) -> None:
        with _translated(f"setting alias {alias!r} to version {version}"):
            self.client.set_registered_model_alias(self.model_name, alias, version)

    def require_version(self, version: str) -> None:
        """`ModelNotFoundError` unless the model has this version."""
        with _translated(f"reading version {version} of model {self.model_name!r}"):
            self.client.get_model_version(self.model_name, version)

    # -- the registered model's own tags (the traffic split, the rollout summary) ---------------
    def model_tags(self) -> dict[str, str]:
        with _translated(f"reading the tags of model {self.model_name!r}"):
            return dict(self.client.get_registered_model(self.model_name).tags)

    def set_model_tag(self, key: str, value: str) -> None:
        with _translated(f"writing tag {key!r} of model {self.model_name!r}"):
            self.client.set_registered_model_tag(self.model_name, key, value)

    def delete_model_tag(self, key: str) -> None:
        """Remove the tag; nothing happens when the model has none."""
        with _translated(f"removing tag {key!r} of model {self.model_name!r}"):
            if key in self.client.get_registered_model(self.model_name).tags:
                self.client.delete_registered_model_tag(self.model_name, key)

    # -- runs ----------------------------------------------------------------------------------
    def experiment_id(self) -> str:
        with _translated(f"opening experiment {self.experiment!r}"):
            found = self.client.get_experiment_by_name(self.experiment)
            if found is not None:
                return found.experiment_id
            return self.client.create_experiment(
                self.experiment, artifact_location=self.artifact_location
            )

    @contextmanager
    def cycle_run(self, run_name: str, tags: dict[str, str], *,
                  run_id: str | None = None) -> Iterator[str]:
        """A parent run for one cycle; FAILED with the error when the body raises. With
        ``run_id``, that run (a resumed cycle's own) is set running again instead."""
        with _translated("starting the cycle run"):
            if run_id is None:
                run_id = self.client.create_run(
                    self.experiment_id(), run_name=run_name, tags={CYCLE_TAG: "cycle", **tags}
                ).info.run_id
            else:
                self.client.update_run(run_id, status="RUNNING")
        try:
            yield run_id
        except BaseException as exc:
            self.client.set_tag(run_id, "retrain.error", f"{type(exc).__name__}: {exc}"[:5000])
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")

    def log_cycle(
        self, run_id: str, *, params: dict[str, Any], metrics: dict[str, float],
        tags: dict[str, str], artifacts: dict[str, Any], files: dict[str, str] | None = None,
    ) -> None:
        """Params, metrics and tags in one batch; ``artifacts`` as JSON, ``files`` as they are
        (artifact name -> local path)."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        with _translated("logging the cycle"):
            self.client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()],
            )
            for name, payload in artifacts.items():
                self.client.log_dict(run_id, payload, name)
            for name, path in (files or {}).items():
                self._log_file(run_id, path, name)

    def _log_file(self, run_id: str, path: str, name: str) -> None:
        import shutil
        import tempfile

        # log_artifact keeps the file's own name; copy it under the artifact name first
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / name
            shutil.copyfile(path, target)
            self.client.log_artifact(run_id, str(target))

    def log_trials(self, parent_run_id: str, search) -> None:
        """One child run per trial: params, per-round validation score, final metrics, status."""
        from mlflow.entities import Metric, Param, RunTag

        status_map = {"completed": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
        experiment_id = self.experiment_id()
        now = int(time.time() * 1000)
        with _translated("logging trial runs"):
            for trial in search.trials:
                run = self.client.create_run(
                    experiment_id,
                    run_name=f"trial-{trial.trial_id}",
                    tags={"mlflow.parentRunId": parent_run_id, CYCLE_TAG: "trial"},
                )
                metrics = [
                    Metric(f"valid_{search.metric}", h["score"], now, int(h["round"]))
                    for h in trial.history
                ]
                if trial.score is not None:
                    metrics.append(Metric(f"final_valid_{search.metric}", trial.score, now, 0))
                metrics.append(Metric("train_seconds", trial.train_seconds, now, 0))
                if trial.fit_seconds is not None:
                    metrics.append(Metric("fit_seconds", trial.fit_seconds, now, 0))
                tags = [RunTag("retrain.trial_status", trial.status),
                        RunTag("retrain.family", trial.family)]
                if trial.error:
                    tags.append(RunTag("retrain.error", trial.error[:5000]))
                self.client.log_batch(
                    run.info.run_id,
                    metrics=metrics,
                    params=[Param(k, str(v)[:6000]) for k, v in trial.params.items()],
                    tags=tags,
                )
                self.client.set_terminated(run.info.run_id, status=status_map[trial.status])
            # which families competed, and why an enabled one sat out (warm start without a
            # usable champion, say)
            self.client.log_batch(parent_run_id, tags=[
                RunTag("retrain.families", ",".join(search.families)),
                *(RunTag(f"retrain.skipped.{family}", why[:5000])
                  for family, why in search.skipped.items()),
            ])

    # -- models --------------------------------------------------------------------------------
    def log_model(
        self, run_id: str, booster, spec: FeatureSpec, *, task: str, metric: str
    ) -> str:
        """Log the model with signature and feature spec: a booster in XGBoost's own format
        (UBJ), a scikit-learn estimator with skops (never pickle)."""
        import mlflow
        import mlflow.xgboost
        import xgboost as xgb
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        inputs = Schema([
            ColSpec("string" if kind == "categorical" else "double", name)
            for name, kind in zip(spec.names, spec.kinds, strict=True)
        ])
        signature = ModelSignature(inputs=inputs, outputs=Schema([ColSpec("double")]))
        self._use_globally()
        metadata = {"feature_spec": spec.to_dict(), "task": task, "metric": metric}
        if not isinstance(booster, xgb.Booster):
            return self._log_sklearn(run_id, booster, signature, metadata)
        with _translated("logging the model"), mlflow.start_run(run_id=run_id):
            info = mlflow.xgboost.log_model(
                booster,
                name="model",
                signature=signature,
                model_format="ubj",
                # Naming the requirement skips MLflow's slow inference subprocess.
                pip_requirements=[f"xgboost=={xgb.__version__}"],
                metadata=metadata,
            )
        return info.model_uri

    def _log_sklearn(self, run_id: str, estimator, signature, metadata: dict) -> str:
        import mlflow
        import mlflow.sklearn
        import sklearn
        import skops

        from serve.loader import SKLEARN_TRUSTED_TYPES

        with _translated("logging the scikit-learn model"), mlflow.start_run(run_id=run_id):
            info = mlflow.sklearn.log_model(
                estimator,
                name="model",
                signature=signature,
                serialization_format="skops",
                # MLflow reloads the file to check it; serve/loader.py loads it against the
                # same list, kept in code rather than trusted from the artifact
                skops_trusted_types=list(SKLEARN_TRUSTED_TYPES),
                pip_requirements=[f"scikit-learn=={sklearn.__version__}",
                                  f"skops=={skops.__version__}"],
                metadata=metadata,
            )
        return info.model_uri

    def register(self, model_uri: str, tags: dict[str, str]) -> str:
        """Register ``model_uri`` as a new version, or return the version it already is.

        Idempotent for a cycle's model: with a ``retrain.run_id`` tag, a version of this
        model logged by that run from the same model URI (a driver that died after MLflow
        created the version, before the cycle recorded it) is reused, its missing tags set,
        rather than registered a second time."""
        import mlflow

        run_id = tags.get(RUN_TAG)
        if run_id:
            found = self.version_of(model_uri, run_id)
            if found is not None:
                with _translated(f"tagging version {found.version}"):
                    for key, value in tags.items():
                        if found.tags.get(key) != str(value):
                            self.client.set_model_version_tag(self.model_name, found.version,
                                                              key, value)
                return str(found.version)
        self._use_globally()
        with _translated(f"registering {model_uri} as {self.model_name!r}"):
            version = mlflow.register_model(model_uri, self.model_name, tags=tags)
        return str(version.version)

    def version_of(self, model_uri: str, run_id: str):
        """The oldest version of this model registered from ``model_uri`` by run ``run_id``
        (the version's own run or its ``retrain.run_id`` tag), or None."""
        with _translated(f"looking up versions of {self.model_name!r} from run {run_id}"):
            # run ids are MLflow's hex; the name is compared here, not quoted into a filter
            versions = [
                *self.client.search_model_versions(f"run_id = '{run_id}'"),
                *self.client.search_model_versions(
                    f"tags.`{RUN_TAG}` = '{run_id}'"),
            ]
        mine = [v for v in versions if v.name == self.model_name and v.source == model_uri
                and run_id in (v.run_id, v.tags.get(RUN_TAG))]
        return min(mine, key=lambda v: int(v.version)) if mine else None

    def _use_globally(self) -> None:
        # MLflow's model logging and registration go through the fluent (global) API.
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)

    # -- reference sketches and lineage ----------------------------------------------------------
    REFERENCE = "reference_sketch.json"

    def log_reference(self, run_id: str, sketch) -> None:
        """The training data's reference sketch, beside the model the run produced."""
        with _translated("logging the reference sketch"):
            self.client.log_dict(run_id, sketch.to_dict(), self.REFERENCE)

    def load_reference(self, version: str):
        """The reference sketch of a version's training data, or None for versions that were
        registered without one."""
        import json
        import tempfile

        from retrain.drift import ReferenceSketch

        with _translated(f"reading the reference sketch of version {version}"):
            run_id = self.client.get_model_version(self.model_name, version).tags.get(
                "retrain.run_id")
            if not run_id:
                return None
            names = {a.path for a in self.client.list_artifacts(run_id)}
            if self.REFERENCE not in names:
                return None
            with tempfile.TemporaryDirectory() as tmp:
                local = self.client.download_artifacts(run_id, self.REFERENCE, tmp)
                return ReferenceSketch.from_dict(json.loads(Path(local).read_text()))

    def version_partitions(self, version: str, *, trained_only: bool = False) -> set[str]:
        """The partitions a version was trained and evaluated on (from its lineage tags);
        ``trained_only``: those it was trained on (what a warm start need not see again)."""
        with _translated(f"reading the lineage of version {version}"):
            tags = self.client.get_model_version(self.model_name, version).tags
        # a model refit on its holdout for serving trained on those partitions too
        return Lineage.from_tags(dict(tags)).partitions(trained_only=trained_only)

    def registered_at(self, version: str) -> float:
        """Unix seconds when the version was registered: it served nothing before."""
        with _translated(f"reading version {version}"):
            return self.client.get_model_version(self.model_name, version).creation_timestamp / 1000

    def evaluated_score(self, version: str) -> float | None:
        """The version's newest holdout score: from the newest cycle that judged it as the
        champion, else from the cycle that promoted it; None when neither was recorded.

        This is the bar the performance trigger holds the live metric to. The newest
        judgement, not the promotion's: a season can lower what any model reaches (summer
        flights are harder to predict), and a cycle that found no better model has measured
        the new level; holding the live metric to the old one would fire every period."""
        with _translated(f"reading the evaluation of version {version}"):
            found = self.client.get_experiment_by_name(self.experiment)
            if found is not None:
                judged = self.client.search_runs(
                    [found.experiment_id],
                    filter_string=(f"tags.`{CYCLE_TAG}` = 'cycle' and "
                                   f"tags.`retrain.champion_version_before` = '{version}'"),
                    order_by=["attributes.start_time DESC"], max_results=1)
                value = judged[0].data.tags.get("retrain.champion_score") if judged else None
                if value:
                    return float(value)
            run_id = self.client.get_model_version(self.model_name, version).tags.get(
                "retrain.run_id")
            if not run_id:
                return None
            value = self.client.get_run(run_id).data.tags.get("retrain.challenger_score")
        return float(value) if value else None

    # -- history -------------------------------------------------------------------------------
    def recent_cycles(self, limit: int = 10) -> list[CycleRecord]:
        with _translated("reading past cycles"):
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                return []
            runs = self.client.search_runs(
                [found.experiment_id],
                filter_string=f"tags.`{CYCLE_TAG}` = 'cycle'",
                order_by=["attributes.start_time DESC"],
                max_results=limit,
            )
        out = []
        for run in runs:
            tags = run.data.tags
            out.append(
                CycleRecord(
                    run_id=run.info.run_id,
                    started=run.info.start_time / 1000,
                    status=run.info.status,
                    verdict=tags.get("retrain.verdict"),
                    reasons=tags.get("retrain.reasons") or tags.get("retrain.error"),
                    challenger_score=tags.get("retrain.challenger_score"),
                    champion_score=tags.get("retrain.champion_score"),
                    model_version=tags.get("retrain.model_version"),
                    holdout=tags.get("data.holdout_partitions"),
                )
            )
        return out


@contextmanager
def _translated(doing: str) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            raise ModelNotFoundError(f"{doing}: {exc.message}") from exc
        raise RegistryError(f"{doing} failed: {exc.message}") from exc
