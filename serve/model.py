"""The model deployment: answers HTTP predictions with the version the registry alias names.

Each replica loads the aliased version once at start and then checks the alias every
``poll_interval_s``. A new version is downloaded and warmed in a background thread while the
old one keeps answering; the swap is one reference assignment, so no request ever sees a
half-loaded model and none fails during a promotion. The registry stays the source of truth:
a replica never serves a version the alias did not name.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations
# (`request: Request`) at run time inside the replica, where string annotations of a class
# that Serve shipped by value do not resolve, and the endpoint would answer 422.
import json
import logging
import threading
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.concurrency import run_in_threadpool

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


def _score(model: LoadedModel, body: Any, max_rows: int) -> list[float]:
    frame = model.spec.frame(parse_invocation(body, max_rows=max_rows))
    return model.predict(frame).tolist()


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
        self._stop.set()

    # -- HTTP -------------------------------------------------------------------------------
    @api.get("/health")
    def health(self) -> JSONResponse:
        model = self._model
        body = {
            "status": "ok" if model else "no model",
            "model_name": self.settings.model_name,
            "model_version": model.version if model else None,
            "last_error": self._last_error,
        }
        return JSONResponse(body, status_code=200 if model else 503)

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
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _error(413, f"request body over the limit of {limit} bytes", request_id)
        raw = await request.body()
        if len(raw) > limit:
            return _error(413, f"request body over the limit of {limit} bytes", request_id)
        model = self._model  # one model for the whole request, even if a swap happens now
        if model is None:
            return _error(503, "no model version is registered under the alias yet", request_id)
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(400, f"request body is not valid JSON: {exc}", request_id)
        try:
            predictions = await run_in_threadpool(_score, model, body, self.settings.max_rows)
        except InvalidInput as exc:
            return _error(400, str(exc), request_id)
        return JSONResponse(
            {
                "predictions": predictions,
                "model_version": model.version,
                "request_id": request_id,
            },
            headers={"x-request-id": request_id, "x-model-version": model.version},
        )

    def check_health(self) -> None:
        # Serve restarts a replica whose check raises; a dead poller would freeze the version.
        if not self._poller.is_alive():
            raise RuntimeError("the registry poller thread stopped")


__all__ = ["ModelServer", "ModelUnavailable"]
