"""`build_app`: the Serve application, and the import path for `serve run` / `serve deploy`.

    serve run serve.app:app_builder tracking_uri=sqlite:////abs/mlflow.db model_name=flights \
        inference_log_path=/abs/inference

The admin token is best not passed as an argument (it would sit in the config and the
shell history): `app_builder` reads it from the environment variable ``admin_token_env``
(default RETRAIN_ADMIN_TOKEN) where the application is built.
"""

from __future__ import annotations

import os
from typing import Any

from ray.serve import Application

from serve.model import ModelServer
from serve.settings import ServeSettings


def build_app(settings: ServeSettings) -> Application:
    deployment: Any = ModelServer  # a Serve deployment: its decorator is not typed
    return deployment.options(
        num_replicas=settings.num_replicas,
        max_ongoing_requests=settings.max_ongoing_requests,
        ray_actor_options={"num_cpus": settings.cpus_per_replica},
        # Access logs cost about 13 % of throughput here; every answer carries a request id.
        logging_config={"enable_access_log": settings.access_log},
    ).bind(settings.to_dict())


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for Serve config files: ``import_path: serve.app:app_builder``."""
    known = set(ServeSettings.__dataclass_fields__)
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown serve argument(s) {unknown}; known: {sorted(known)}")
    fields = ServeSettings.__dataclass_fields__
    values = {k: _cast(k, str(fields[k].type), v) for k, v in args.items()}
    if not values.get("admin_token"):
        env = values.get("admin_token_env", fields["admin_token_env"].default)
        values["admin_token"] = os.environ.get(env) or None
    return build_app(ServeSettings(**values))


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _cast(name: str, type_name: str, value: Any) -> Any:
    """Command-line and config args arrive as strings; type them as the settings declare."""
    if not isinstance(value, str):
        return value
    optional = type_name.endswith(" | None")
    if optional and value.strip().lower() in ("", "none", "null"):
        return None
    base = type_name.removesuffix(" | None")
    try:
        if base == "int":
            return int(value)
        if base == "float":
            return float(value)
    except ValueError:
        raise ValueError(f"serve argument {name} must be {base}, but got {value!r}") from None
    if base == "bool":
        text = value.strip().lower()
        if text not in _TRUE | _FALSE:
            raise ValueError(f"serve argument {name} must be true or false, but got {value!r}")
        return text in _TRUE
    return value
