"""The model deployment: answers HTTP predictions with the version the registry alias names.

Each replica loads the aliased version once at start and then checks the alias every
``poll_interval_s``. A new version is downloaded and warmed in a background thread while the
old one keeps answering; the swap is one reference assignment, so no request ever sees a
half-loaded model and none fails during a promotion. The registry stays the source of truth:
a replica never serves a version the alias did not name.

Every answered request is appended to the inference log (serve/inference_log.py) off the
critical path: the append only buffers references, a background thread writes Parquet.
``POST /feedback`` (late labels) and ``POST /admin/retrain`` (an on-demand cycle for
``retrain watch``) need ``Authorization: Bearer <token>``.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations
# (`request: Request`) at run time inside the replica, where string annotations of a class
# that Serve shipped by value do not resolve, and the endpoint would answer 422.
import hmac
import json
import logging
import threading
import time
import uuid
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.concurrency import run_in_threadpool

from serve.inference_log import InferenceLog, InvalidFeedback, parse_feedback, request_retrain
from serve.loader import LoadedModel, ModelUnavailable, alias_version, load_version
from serve.schemas import InvalidInput, parse_invocation
from serve.settings import ServeSettings

logger = logging.getLogger("retrain.serve")

api = FastAPI(
    title="retrain inference",
    description="Predictions from the model version that the registry alias names.",
)


def _error(status: int, message: str, request_id: str) -> JSONResponse:
    return JSONResponse(
        {"error": message, "request_id": request_id},
        status_code=status,
        headers={"x-request-id": request_id},
    )


def _score(model: LoadedModel, body: Any, max_rows: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The request's rows as parsed (what the log keeps) and their predictions."""
    raw = parse_invocation(body, max_rows=max_rows)
    return raw, model.predict(model.spec.frame(raw))


async def _body(request: Request, limit: int, request_id: str) -> bytes | JSONResponse:
    """The raw body, or a 413 answer when it is over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return _error(413, f"request body over the limit of {limit} bytes", request_id)
    raw = await request.body()
    if len(raw) > limit:
        return _error(413, f"request body over the limit of {limit} bytes", request_id)
    return raw


def _authorize(settings: ServeSettings, header: str | None, request_id: str) -> JSONResponse | None:
    """None when the bearer token matches; otherwise the 403 or 401 answer to send."""
    expected = settings.admin_token
    if not expected:
        return _error(
            403,
            f"this endpoint is off: no admin token is configured. Set the environment variable "
            f"{settings.admin_token_env} where serving starts (e.g. `retrain serve`) and restart",
            request_id,
        )
    scheme, _, given = (header or "").partition(" ")
    # compare_digest: the time taken does not reveal how much of a guess was right
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.encode()
    ):
        response = _error(
            401, "missing or wrong token; send the header 'Authorization: Bearer <token>'",
            request_id,
        )
        response.headers["www-authenticate"] = "Bearer"
        return response
    return None


def _open_log(settings: ServeSettings) -> tuple[InferenceLog | None, str | None]:
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


def _warm(model: LoadedModel) -> None:
    """One prediction before the swap, so the first real request pays no lazy set-up."""
    start = time.perf_counter()
    model.predict(model.spec.frame(parse_invocation({"dataframe_records": [model.spec.example()]})))
    logger.info("warmed version %s in %.3fs", model.version, time.perf_counter() - start)


@serve.deployment(max_ongoing_requests=16, health_check_period_s=5)
@serve.ingress(api)
class ModelServer:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = ServeSettings(**settings)
        self._model: LoadedModel | None = None
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._log, self._log_error = _open_log(self.settings)
        self._refresh()
        self._poller = threading.Thread(target=self._poll, name="alias-poller", daemon=True)
        self._poller.start()

    # -- registry watch -------------------------------------------------------------------
    def _refresh(self) -> None:
        s = self.settings
        try:
            version = alias_version(s.tracking_uri, s.model_name, s.alias)
            current = self._model.version if self._model else None
            if version is None or version == current:
                return
            model = load_version(s.tracking_uri, s.model_name, version)
            _warm(model)
            self._model = model  # atomic swap: in-flight requests keep the old reference
            self._last_error = None
            logger.info("serving %s version %s", s.model_name, version)
        except Exception as exc:  # keep serving the loaded version; report through /health
            self._last_error = f"{type(exc).__name__}: {exc}"
            logger.warning("could not refresh model: %s", self._last_error)

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.poll_interval_s):
            self._refresh()

    def __del__(self) -> None:
        # Serve 2.60 calls this once per replica after draining in-flight requests, within the
        # deployment's graceful_shutdown_timeout_s (20 s by default): write what is buffered.
        self._stop.set()
        log = getattr(self, "_log", None)  # absent when __init__ failed early
        if log is not None:
            log.close(timeout=10.0)

    # -- HTTP -------------------------------------------------------------------------------
    @api.get("/health")
    def health(self) -> JSONResponse:
        model = self._model
        body = {
            "status": "ok" if model else "no model",
            "model_name": self.settings.model_name,
            "model_version": model.version if model else None,
            "last_error": self._last_error,
            "inference_log": self._log_status(),
        }
        return JSONResponse(body, status_code=200 if model else 503)

    def _log_status(self) -> dict[str, Any]:
        if self._log is not None:
            return {"enabled": True, **self._log.stats().to_dict()}
        return {"enabled": False, "error": self._log_error}

    @api.get("/version")
    def version(self) -> dict[str, Any]:
        model = self._model
        return {
            "model_name": self.settings.model_name,
            "alias": self.settings.alias,
            "model_version": model.version if model else None,
            "features": model.spec.example() if model else None,
        }

    @api.post("/invocations")
    async def invocations(self, request: Request) -> JSONResponse:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        raw = await _body(request, self.settings.max_body_bytes, request_id)
        if isinstance(raw, JSONResponse):
            return raw
        model = self._model  # one model for the whole request, even if a swap happens now
        if model is None:
            return _error(503, "no model version is registered under the alias yet", request_id)
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(400, f"request body is not valid JSON: {exc}", request_id)
        try:
            rows, scores = await run_in_threadpool(_score, model, body, self.settings.max_rows)
        except InvalidInput as exc:
            return _error(400, str(exc), request_id)
        log = self._log
        if log is not None:
            try:  # a buffer append: microseconds, and it never waits for the disk
                log.log_predictions(
                    request_id=request_id, model_version=model.version, spec=model.spec,
                    frame=rows, predictions=scores,
                )
            except Exception:  # logging must never cost an answer
                logger.exception("could not log request %s", request_id)
        return JSONResponse(
            {
                "predictions": scores.tolist(),
                "model_version": model.version,
                "request_id": request_id,
            },
            headers={"x-request-id": request_id, "x-model-version": model.version},
        )

    @api.post("/feedback")
    async def feedback(self, request: Request) -> JSONResponse:
        """Late true labels: ``{"labels": [{"request_id": "...", "row": 0, "label": 1}]}``."""
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        denied = _authorize(self.settings, request.headers.get("authorization"), request_id)
        if denied is not None:
            return denied
        raw = await _body(request, self.settings.max_body_bytes, request_id)
        if isinstance(raw, JSONResponse):
            return raw
        log = self._log
        if log is None:
            why = f" ({self._log_error})" if self._log_error else ""
            return _error(
                503,
                f"labels cannot be stored: the inference log is off{why}; enable "
                "inference_log in the project config and restart serving",
                request_id,
            )
        try:
            items = parse_feedback(json.loads(raw), max_items=self.settings.max_rows)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(400, f"request body is not valid JSON: {exc}", request_id)
        except InvalidFeedback as exc:
            return _error(exc.status, str(exc), request_id)
        if not log.log_feedback(items):
            return _error(
                503, "the inference log's buffer is full (its store is slow or unreachable); "
                "retry later", request_id,
            )
        return JSONResponse({"accepted": len(items), "request_id": request_id},
                            headers={"x-request-id": request_id})

    @api.post("/admin/retrain")
    async def admin_retrain(self, request: Request) -> JSONResponse:
        """Ask ``retrain watch`` for a cycle now; optional body ``{"reason": "..."}``."""
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        denied = _authorize(self.settings, request.headers.get("authorization"), request_id)
        if denied is not None:
            return denied
        raw = await _body(request, 64 * 1024, request_id)
        if isinstance(raw, JSONResponse):
            return raw
        path = self.settings.inference_log_path
        if not path:
            return _error(
                503, "retrain requests cannot be stored: no inference log path is configured",
                request_id,
            )
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(400, f"request body is not valid JSON: {exc}", request_id)
        reason = body.get("reason", "") if isinstance(body, dict) else None
        if not isinstance(body, dict) or set(body) - {"reason"} or not isinstance(reason, str):
            return _error(
                400, 'expected no body or a JSON object like {"reason": "..."}', request_id
            )
        client = request.client.host if request.client else "unknown"
        try:
            made = await run_in_threadpool(request_retrain, path, reason, f"http {client}")
        except ValueError as exc:  # reason too long
            return _error(400, str(exc), request_id)
        except OSError as exc:
            return _error(503, f"cannot store the retrain request under {path}: {exc}",
                          request_id)
        return JSONResponse(
            {"retrain_request_id": made.id, "status": "pending",
             "requested_at": made.requested_at, "request_id": request_id},
            status_code=202,
            headers={"x-request-id": request_id},
        )

    def check_health(self) -> None:
        # Serve restarts a replica whose check raises; a dead poller would freeze the version.
        if not self._poller.is_alive():
            raise RuntimeError("the registry poller thread stopped")
        if self._log is not None and not self._log.alive:
            raise RuntimeError("the inference log's writer thread stopped")


__all__ = ["ModelServer", "ModelUnavailable"]
