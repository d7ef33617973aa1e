"""The whole config: one `Config` of all sections, read from YAML or a dict, with each problem
reported by its path in the file.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ValidationError

from retrain.config.base import DataConfig, ProjectConfig, TaskConfig, _Section
from retrain.config.evaluation import AdmissionConfig, EvaluationConfig
from retrain.config.search import _UNION_TAGS, ResourcesConfig, SearchConfig
from retrain.config.serving import (
    InferenceLogConfig,
    MlflowConfig,
    RayConfig,
    RolloutConfig,
    ServingConfig,
)
from retrain.config.watch import MonitorConfig, TriggersConfig
from retrain.errors import ConfigError


class Config(_Section):
    project: ProjectConfig
    data: DataConfig
    task: TaskConfig
    search: SearchConfig = SearchConfig()
    resources: ResourcesConfig = ResourcesConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    admission: AdmissionConfig = AdmissionConfig()
    mlflow: MlflowConfig = MlflowConfig()
    serving: ServingConfig = ServingConfig()
    inference_log: InferenceLogConfig = InferenceLogConfig()
    monitor: MonitorConfig = MonitorConfig()
    triggers: TriggersConfig = TriggersConfig()
    rollout: RolloutConfig = RolloutConfig()
    ray: RayConfig = RayConfig()

    # Derived values: defaults that depend on other fields live here, in one place.
    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.project.workdir / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str:
        return self.mlflow.artifact_location or (self.project.workdir / "mlartifacts").as_uri()

    @property
    def experiment_name(self) -> str:
        return self.mlflow.experiment or self.project.name

    @property
    def model_name(self) -> str:
        return self.mlflow.model_name or self.project.name

    @property
    def ledger_path(self) -> Path:
        return self.project.ledger or self.project.workdir / "ledger.db"

    @property
    def inference_log_path(self) -> str:
        return self.inference_log.path or str(self.project.workdir / "inference")

    @property
    def storage_path(self) -> str:
        return self.search.storage_path or str(self.project.workdir / "tune")

    # The project's own files under its workdir, named here only.
    @property
    def cycles_dir(self) -> Path:
        """Each cycle's resumable stage record."""
        return Path(self.project.workdir) / "cycles"

    @property
    def quarantine_path(self) -> Path:
        return Path(self.project.workdir) / "quarantine.jsonl"

    @property
    def reports_dir(self) -> Path:
        return Path(self.project.workdir) / "reports"

    @property
    def watch_dir(self) -> Path:
        """`retrain watch`'s state."""
        return Path(self.project.workdir) / "watch"

    @property
    def rollout_state_path(self) -> Path:
        return Path(self.project.workdir) / "rollout" / "state.json"


def _resolve(base: Path, path: Path) -> Path:
    path = Path(os.path.expandvars(str(path))).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _format_problem(
    error: collections.abc.Mapping[str, Any],
    known: collections.abc.Callable[[tuple[str, ...]], set[str]],
) -> str:
    # drop union tags and validator names that pydantic puts into the location
    loc = tuple(
        str(part) for part in error["loc"]
        if part not in _UNION_TAGS and not str(part).startswith("function-")
    )
    where = ".".join(loc) or "(top level)"
    # a section that is a dataclass (rollout.gates) reports an unknown key as an argument
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        parent, name = loc[:-1], loc[-1]
        keys = sorted(known(parent))
        close = difflib.get_close_matches(name, keys, n=1)
        hint = (f"; did you mean {close[0]!r}?" if close
                else f"; remove it (known here: {', '.join(keys)})" if keys else "; remove it")
        return f"{where}: unknown key{hint}"
    if error["type"] == "missing":
        return f"{where}: required but missing; add it to the config"
    message = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    shown = ("" if isinstance(got, dict) or "got" in message or repr(got) in message
             else f" (got {got!r})")
    return f"{where}: {message}{shown}"


def _keys_at(annotation: Any, path: tuple[str, ...]) -> set[str]:
    """The keys a mapping at ``path`` below a value of type ``annotation`` may have, through
    nested sections, lists of sections (``evaluation.slices.0``), mappings of sections
    (``search.space.eta``), unions and Optional; empty where the path leads to no section."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _keys_at(args[0], path)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_keys_at(member, path) for member in args))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if not path:
            return set(annotation.model_fields)
        field = annotation.model_fields.get(path[0])
        return _keys_at(field.annotation, path[1:]) if field is not None else set()
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation) and not path:
        return {f.name for f in dataclasses.fields(annotation)}  # a core value as a section
    if not path:
        return set()
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence) and args:
        return _keys_at(args[0], path[1:])
    if origin in (dict, collections.abc.Mapping) and len(args) == 2:
        return _keys_at(args[1], path[1:])
    return set()


def config_from_dict(raw: Any, *, base_dir: Path | str = ".", source: str = "config") -> Config:
    """Validate a plain mapping (as read from YAML) into a `Config`.

    Relative paths are resolved against ``base_dir``. Raises `ConfigError` listing every
    problem at once, each naming the field, what was wrong and how to fix it.
    """
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping with sections project, data, task, ..., "
            f"but got {type(raw).__name__}; see `retrain init` for an example"
        )
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems = tuple(_format_problem(e, lambda parent: _keys_at(Config, parent))
                         for e in exc.errors())
        listing = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(
            f"{source} is invalid ({len(problems)} problem(s)):\n{listing}", problems=problems
        ) from None
    base = Path(base_dir).resolve()
    return config.model_copy(
        update={
            "project": config.project.model_copy(
                update={
                    "workdir": _resolve(base, config.project.workdir),
                    "ledger": config.project.ledger and _resolve(base, config.project.ledger),
                }
            ),
            "data": config.data.model_copy(update={"path": _resolve(base, config.data.path)}),
        }
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a project YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {str(path)!r} does not exist; create one with `retrain init {path}`"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return config_from_dict(raw, base_dir=path.parent, source=str(path))
