"""What a replica does around a prediction: the version a request goes to (the split, or a
pin that needs the admin token), the answer or the failure's status, the inference-log row,
and the replica's log and model loader, opened once.
"""

from __future__ import annotations

import importlib
import logging
import random
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse

from serve.http import Problem, _token_ok
from serve.inference_log import InferenceLog
from serve.loader import LoadedModel
from serve.schemas import Rows, parse_rows
from serve.scoring import Scorer
from serve.settings import ServeSettings
from serve.traffic import PIN_HEADER
from serve.versions import Outcome, Routing, VersionRunner

logger = logging.getLogger("retrain.serve")


def score_request(model: LoadedModel, body: Any, max_rows: int,
           scorer: Scorer | None = None) -> tuple[Rows, np.ndarray]:
    """The request's rows as parsed (what the log keeps) and their predictions, in the
    caller's thread, by the replica's path (benchmarks/inference_log_overhead.py measures
    it); pass the version's ``scorer`` to skip building one."""
    rows = parse_rows(body, max_rows=max_rows)
    return rows, (scorer or Scorer(model)).score(rows)


def choose_runner(settings: ServeSettings, request: Request, routing: Routing,
                  request_id: str) -> tuple[VersionRunner, bool]:
    """The runner that answers, and whether the request was pinned to it; a `Problem` when
    the pin is not allowed or not loaded."""
    pin = request.headers.get(PIN_HEADER)
    if pin is not None:
        if not _token_ok(settings, request.headers.get("authorization")):
            raise Problem(
                403, f"the {PIN_HEADER} header pins a request to a model version, which "
                "needs the admin token: send 'Authorization: Bearer <token>' too, or drop "
                "the header", request_id)
        runner = routing.runners.get(pin.strip())
        if runner is None:
            raise Problem(409, f"version {pin.strip()!r} is not loaded by this replica; "
                          f"loaded: {routing.loaded}", request_id)
        return runner, True
    split = routing.split
    key = request.headers.get(split.sticky_key) if split.sticky_key else None
    return routing.runners[split.choose(key, random.random())], False


def log_outcome(log: InferenceLog | None, request_id: str, model: LoadedModel, rows: Rows,
                outcome: Outcome, *, shadow: bool) -> None:
    """The request's row(s) in the inference log: a buffer append that never raises."""
    if log is None:
        return
    try:  # a buffer append: microseconds, and it never waits for the disk
        if outcome.predictions is not None:
            log.log_predictions(
                request_id=request_id, model_version=model.version, spec=model.spec,
                frame=rows, predictions=outcome.predictions, latency_ms=outcome.latency_ms,
                shadow=shadow,
            )
        elif outcome.error is not None:
            log.log_failure(
                request_id=request_id, model_version=model.version, spec=model.spec,
                error=outcome.error, latency_ms=outcome.latency_ms, shadow=shadow,
            )
    except Exception:  # logging must never cost an answer
        logger.exception("could not log request %s", request_id)


def failed(outcome: Outcome, request_id: str) -> Problem:
    """A failed outcome as the `Problem` to raise: 400 for the caller's rows, else the
    version's status (a 503 with Retry-After)."""
    version = outcome.version
    if outcome.invalid is not None:
        return Problem(400, outcome.invalid, request_id, version)
    return Problem(outcome.status, f"model version {version} failed on this request: "
                   f"{outcome.error}", request_id, version,
                   headers={"retry-after": "1"} if outcome.status == 503 else None)


def answer(body: dict[str, Any], version: str) -> JSONResponse:
    """A prediction's answer, with the version that made it in a header."""
    return JSONResponse(body, headers={"x-model-version": version})


def open_log(settings: ServeSettings) -> tuple[InferenceLog | None, str | None]:
    """The replica's inference log (None when off) and why it could not open, if it could not."""
    if not settings.inference_log_path or not settings.log_predictions:
        return None, None
    try:
        log = InferenceLog(
            settings.inference_log_path,
            flush_rows=settings.flush_rows,
            flush_interval_s=settings.flush_interval_s,
            max_buffer_rows=settings.max_buffer_rows,
        )
    except Exception as exc:  # a bad URI or missing credentials: answer anyway, report in /health
        logger.warning("inference log is off: %s", exc)
        return None, f"{type(exc).__name__}: {exc}"
    return log, None


def import_loader(path: str) -> Callable[..., LoadedModel]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
