"""Starts the Serve application for a project and watches what it answers (Ray Serve adapter)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import urllib.error
import urllib.request
from typing import Any

from retrain.config import Config
from retrain.errors import ClusterError, ConfigError
from retrain.runtime import ensure_ray
from serve.settings import ServeSettings

#: `ServeSettings` fields that do not come, by the same name, from the config's ``serving``
#: or ``inference_log`` section; every other field does (tests/unit/test_serving_settings.py
#: fails when a field or its default differs between the two)
NOT_FROM_SECTIONS = ("tracking_uri", "model_name", "alias", "inference_log_path",
                     "log_predictions", "admin_token", "admin_token_hash", "model_loader")


def serve_settings(config: Config) -> ServeSettings:
    """What the Serve app needs of a project: the ``serving`` and ``inference_log`` sections'
    fields by name, and the few that come from elsewhere."""
    wanted = {f.name for f in dataclasses.fields(ServeSettings)} - set(NOT_FROM_SECTIONS)
    by_name = {name: getattr(section, name)
               for section in (config.serving, config.inference_log)
               for name in type(section).model_fields if name in wanted}
    return ServeSettings(
        **by_name,
        tracking_uri=config.tracking_uri,
        model_name=config.model_name,
        inference_log_path=config.inference_log_path,
        log_predictions=config.inference_log.enabled,
        # Read when serving starts, not at config load: the secret never sits in the Config,
        # and ServeSettings keeps only its salted hash.
        admin_token=os.environ.get(config.serving.admin_token_env) or None,
    )


def serve_config(config: Config) -> dict[str, Any]:
    """A `serve deploy` / RayService ``serveConfigV2`` config of the project's app.

    Everything comes from the project config except the admin token: `serve.app.app_builder`
    reads it from the environment variable ``admin_token_env`` where the app is built, so the
    secret never sits in the file.
    """
    from dataclasses import asdict

    settings = asdict(serve_settings(config))
    settings.pop("admin_token")
    settings.pop("admin_token_hash")
    host, port = settings.pop("host"), settings.pop("port")
    return {
        "http_options": {"host": host, "port": port},
        "applications": [{
            "name": settings["app_name"],
            "route_prefix": settings["route_prefix"],
            "import_path": "serve.app:app_builder",
            "args": {k: v for k, v in settings.items() if v is not None},
        }],
    }


def base_url(config: Config) -> str:
    prefix = config.serving.route_prefix.rstrip("/")
    return f"http://{config.serving.host}:{config.serving.port}{prefix}"


def start_serving(config: Config) -> str:
    """Deploy (or update) the app on the connected Ray cluster; returns its base URL."""
    from serve.proxy import CALLBACK, CALLBACK_ENV

    # Serve's proxy reads this where it starts: in a local runtime started here, this
    # process's environment (a cluster of its own needs it in the environment of `ray start`)
    os.environ.setdefault(CALLBACK_ENV, CALLBACK)
    ensure_ray(config.ray)
    deploy(serve_settings(config))
    return base_url(config)


def deploy(settings: ServeSettings) -> None:
    """Deploy (or update) the app described by ``settings`` on the connected Ray cluster."""
    from ray import serve

    from serve.app import build_app

    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(
            build_app(settings),
            name=settings.app_name,
            route_prefix=settings.route_prefix,
            blocking=False,
        )
    except Exception as exc:  # Serve raises RuntimeError, RayServeException, ... on start-up
        raise ClusterError(
            f"cannot start serving on {settings.host}:{settings.port}: {exc}. Is the port "
            "free? Change serving.port"
        ) from exc


def check_port_free(host: str, port: int, *, fix: str) -> None:
    """A `ConfigError` that says ``fix`` when ``host:port`` cannot be bound here (another
    server listens on it): checked before anything slow starts, not after."""
    with socket.socket() as sock:
        # as a server binds it: a port left in TIME_WAIT by a closed connection is free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot serve on {host}:{port}: {exc.strerror or exc} (another server "
                f"listens there?); {fix}"
            ) from None


def get_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def post_json(url: str, body: Any, timeout: float = 10.0) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_for_version(url: str, version: str | None, timeout: float = 60.0) -> float:
    """Seconds until ``/health`` reports ``version`` (any version when None)."""
    start = time.perf_counter()
    while True:
        try:
            status, body = get_json(f"{url}/health", timeout=2.0)
            served = body.get("model_version") if isinstance(body, dict) else None
            if status == 200 and (version is None or served == version):
                return time.perf_counter() - start
        except (OSError, ValueError):
            pass  # not up yet
        if time.perf_counter() - start > timeout:
            raise ClusterError(
                f"{url} did not serve version {version or '(any)'} within {timeout:.0f}s"
            )
        time.sleep(0.25)
