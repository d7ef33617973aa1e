"""The ingress deployment: the model versions the registry names, side by side, and the split.

Each replica holds every version the registry's traffic split names (serve/versions/):
a request reads the current `Routing` once, is routed by the split (weighted, or sticky on
a header), predicted in its version's own bounded pool, answered, and then mirrored to the
shadow version if there is one. The split lives in the registry as the registered model's
tag ``retrain.traffic``; without it everything goes to the version the ``champion`` alias
names. Every ``poll_interval_s`` the replica reads aliases and tags in one call and, when
they ask for something new, loads and warms the new versions in a background thread while
the old routing keeps answering; the swap is one reference assignment, so no request sees a
half-applied split and none fails during a change. A version that cannot be loaded keeps
the previous routing in place and is reported in ``/health``: a replica never serves a
version the registry does not name.

Every answered request is appended to the inference log (serve/inference_log/) off the
critical path, with the version's own latency; a failed one as one error row; shadow copies
as rows marked ``shadow``. ``POST /feedback``, ``POST /admin/retrain``, the ``/admin/traffic``
endpoints and pinning a request to a version (header ``x-retrain-version``) need
``Authorization: Bearer <token>``.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations
# (`request: Request`) at run time inside the replica, where string annotations of a class
# that Serve shipped by value do not resolve, and the endpoint would answer 422.
import gc
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from ray import serve
from starlette.concurrency import run_in_threadpool

from serve import admin, loader
from serve.answer import answer, choose_runner, failed, import_loader, log_outcome, open_log
from serve.http import (
    Problem,
    _Admitted,
    _authorize,
    _BadBody,
    _body,
    _CheckRequestId,
    _parsed,
    _request_id,
    problem_response,
)
from serve.inference_log import parse_feedback, request_retrain
from serve.loader import ModelUnavailable
from serve.oip import infer_response, model_metadata, parse_infer
from serve.openapi_bodies import BODIES
from serve.schemas import Rows, parse_rows
from serve.settings import ServeSettings
from serve.traffic import PIN_HEADER, TrafficSplit
from serve.versions import Limits, Outcome, Routing, VersionRunner, VersionSet

logger = logging.getLogger("retrain.serve")

# No public /docs, /redoc or /openapi.json: they would list the admin endpoints to anyone.
# GET /openapi.json below serves the document (request bodies described) to the token holder.
api = FastAPI(
    title="retrain inference",
    description="Predictions from the model versions the registry names, split as it says.",
    openapi_url=None, docs_url=None, redoc_url=None,
)
api.add_middleware(_CheckRequestId)


# Every refusal is a `Problem` raised on the request's path and answered here, in one format.
# The other three are a safety net, not the validation: raised while handling a request, each
# can only come from what the request sent (an integer beyond a float, a string that is not
# text, nesting past the interpreter's limit), so it is the caller's 400, not the server's 500.
@api.exception_handler(Problem)
@api.exception_handler(OverflowError)
@api.exception_handler(UnicodeError)
@api.exception_handler(RecursionError)
async def _refused(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, Problem):
        logger.warning("bad input reached %s: %s: %s", request.url.path, type(exc).__name__,
                       exc)
        exc = Problem(400, f"the request cannot be read: {type(exc).__name__}", None)
    return problem_response(exc)


async def _registry(doing: str, request_id: str, call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)`` on the registry, in a worker thread; any failure (unreachable, refused)
    is the caller's 503, saying what could not be done."""
    try:
        return await run_in_threadpool(call, *args)
    except Exception as exc:
        raise Problem(503, f"{doing}: {type(exc).__name__}: {exc}", request_id) from None


@serve.deployment(max_ongoing_requests=256, health_check_period_s=5)
@serve.ingress(api)
class ModelServer:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = s = ServeSettings(**settings)
        load = import_loader(s.model_loader)
        self._versions = VersionSet(
            lambda version: load(s.tracking_uri, s.model_name, version),
            alias=s.alias,
            limits=Limits(threads=s.version_threads, queue=s.version_queue,
                          timeout_s=s.version_timeout_s, shadow_pending=s.shadow_max_pending,
                          batch_max_size=s.batch_max_size, batch_wait_s=s.batch_wait_s,
                          allow_all_missing_rows=s.allow_all_missing_rows),
        )
        self._stop = threading.Event()
        self._openapi: dict[str, Any] | None = None
        self._log, self._log_error = open_log(s)
        self._refresh()
        # What is loaded by now (Ray, FastAPI, MLflow, pandas) lives as long as the replica.
        # Frozen, it is out of the cyclic collector's way: a full collection no longer scans
        # it. One took 120 ms on a quiet box in a process with these imports, and holds every
        # request in the replica meanwhile. With this and the same in its client,
        # benchmarks/rollout_under_load.py's longest gap between answers went from 207-265 ms
        # to 30-37 ms. The first version is frozen too; retired, it is freed by reference
        # counting (test_a_retired_version_is_freed_though_it_was_frozen_at_start).
        gc.collect()
        gc.freeze()
        self._poller = threading.Thread(target=self._poll, name="registry-poller", daemon=True)
        self._poller.start()

    # -- registry watch -------------------------------------------------------------------
    def _refresh(self) -> None:
        s = self.settings
        try:
            state = loader.registry_state(s.tracking_uri, s.model_name)
        except Exception as exc:  # keep serving what is loaded; report through /health
            self._versions.note_error(f"cannot read the registry: {type(exc).__name__}: {exc}")
            logger.warning("could not read the registry: %s", exc)
            return
        self._versions.refresh(state)

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.poll_interval_s):
            self._refresh()

    def __del__(self) -> None:
        # Serve 2.60 calls this once per replica after draining in-flight requests, within the
        # deployment's graceful_shutdown_timeout_s (20 s by default): write what is buffered.
        stop = getattr(self, "_stop", None)  # absent when __init__ failed early
        if stop is not None:
            stop.set()
        log = getattr(self, "_log", None)
        if log is not None:
            log.close(timeout=10.0)

    # -- routing and predicting -------------------------------------------------------------
    async def _predict(self, routing: Routing, runner: VersionRunner, pinned: bool,
                       rows: Rows, request_id: str) -> Outcome:
        outcome = await runner.predict(rows)
        runner.counters.record(outcome, pinned=pinned)
        if outcome.invalid is not None:
            return outcome  # the caller's fault: a 4xx, not the version's error, not logged
        log_outcome(self._log, request_id, runner.model, rows, outcome, shadow=False)
        shadow = routing.split.shadow
        target = routing.runners.get(shadow) if shadow and not pinned else None
        if target is not None and target is not runner:
            model = target.model
            # after the answer is computed, in the shadow's own pool: it costs the live
            # answer only this submit, and is dropped (counted) when the shadow lags
            target.mirror(rows, lambda done: log_outcome(self._log, request_id, model, rows,
                                                          done, shadow=True))
        return outcome

    # -- HTTP: predictions ---------------------------------------------------------------------
    @api.post("/invocations", openapi_extra={"requestBody": BODIES["invocations"]})
    async def invocations(self, request: Request) -> JSONResponse:
        request_id = _request_id(request)
        raw = await _body(request, self.settings.max_body_bytes, request_id,
                          self.settings.body_timeout_s)
        routing = self._versions.routing  # one routing for the whole request
        if routing is None:
            raise Problem(503, "no model version is registered under the alias yet", request_id)
        s = self.settings
        try:
            rows = await _parsed(raw, lambda body: parse_rows(
                body, max_rows=s.max_rows, max_columns=s.max_columns, max_cells=s.max_cells))
        except _BadBody as exc:
            raise Problem(exc.status, str(exc), request_id) from None
        chosen = choose_runner(self.settings, request, routing, request_id)
        runner, pinned = chosen
        outcome = await self._predict(routing, runner, pinned, rows, request_id)
        if outcome.predictions is None:
            raise failed(outcome, request_id)
        return answer({"predictions": outcome.predictions.tolist(),
                             "model_version": outcome.version, "request_id": request_id},
                            outcome.version)

    @api.post("/v2/models/{name}/infer", openapi_extra={"requestBody": BODIES["infer"]})
    async def infer(self, name: str, request: Request) -> JSONResponse:
        """Open Inference Protocol (v2) inference; see serve/oip.py for the body."""
        request_id = _request_id(request)
        if name != self.settings.model_name:
            raise self._unknown_model(name, request_id)
        raw = await _body(request, self.settings.max_body_bytes, request_id,
                          self.settings.body_timeout_s)
        routing = self._versions.routing
        if routing is None:
            raise Problem(503, "no model version is registered under the alias yet", request_id)
        chosen = choose_runner(self.settings, request, routing, request_id)
        runner, pinned = chosen
        names, s = runner.model.spec.names, self.settings
        try:
            parsed = await _parsed(raw, lambda body: parse_infer(
                body, names, max_rows=s.max_rows, max_columns=s.max_columns,
                max_cells=s.max_cells))
        except _BadBody as exc:
            raise Problem(exc.status, str(exc), request_id) from None
        outcome = await self._predict(routing, runner, pinned, parsed.parsed, request_id)
        if outcome.predictions is None:
            raise failed(outcome, request_id)
        # "id" echoes the body's own id (the protocol's rule); the log, and so feedback, key
        # on x-request-id, as for /invocations
        return answer(infer_response(name, outcome.version, parsed.id or request_id,
                                           outcome.predictions), outcome.version)

    def _unknown_model(self, name: str, request_id: str) -> Problem:
        return Problem(404, f"no model named {name!r:.100} here; this server serves "
                       f"{self.settings.model_name!r}", request_id)

    @api.get("/v2")
    def server_metadata(self) -> dict[str, Any]:
        return {"name": "retrain", "version": "2", "extensions": []}

    @api.get("/v2/health/live")
    def live(self) -> dict[str, Any]:
        return {"live": True}

    @api.get("/v2/health/ready")
    def ready(self) -> JSONResponse:
        ready = self._versions.routing is not None
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @api.get("/v2/models/{name}/ready")
    def model_ready(self, name: str, request: Request) -> JSONResponse:
        if name != self.settings.model_name:
            raise self._unknown_model(name, _request_id(request))
        ready = self._versions.routing is not None
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)

    @api.get("/v2/models/{name}")
    def metadata(self, name: str, request: Request) -> JSONResponse:
        request_id = _request_id(request)
        if name != self.settings.model_name:
            raise self._unknown_model(name, request_id)
        routing = self._versions.routing
        if routing is None:
            raise Problem(503, "no model version is registered under the alias yet", request_id)
        model = routing.runners[routing.primary].model
        return JSONResponse(model_metadata(name, routing.loaded, model.spec, model.flavor),
                            headers={"x-model-version": model.version})

    # -- HTTP: state ---------------------------------------------------------------------------
    def _traffic(self) -> dict[str, Any]:
        routing, versions = self._versions.routing, self._versions
        pending = versions.pending
        return {
            "traffic": routing.split.to_dict() if routing else None,
            "traffic_source": routing.source if routing else None,
            "loaded_versions": routing.loaded if routing else [],
            "pending_traffic": pending.to_dict() if pending else None,
            "last_error": versions.last_error,
        }

    @api.get("/health")
    def health(self) -> JSONResponse:
        routing = self._versions.routing
        body = {
            "status": "ok" if routing else "no model",
            "model_name": self.settings.model_name,
            # the version taking the largest share: the alias' version when there is no split
            "model_version": routing.primary if routing else None,
            **self._traffic(),
            "inference_log": self._log_status(),
        }
        return JSONResponse(body, status_code=200 if routing else 503)

    def _log_status(self) -> dict[str, Any]:
        if self._log is not None:
            return {"enabled": True, **self._log.stats().to_dict()}
        return {"enabled": False, "error": self._log_error}

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> JSONResponse:
        """The OpenAPI document, request bodies described; for token holders only, since it
        lists the admin endpoints (there are no public /docs)."""
        await self._admit(request)  # the token, checked
        if self._openapi is None:
            self._openapi = get_openapi(title=api.title, version="1", routes=api.routes,
                                        description=api.description)
        return JSONResponse(self._openapi)

    @api.get("/version")
    def version(self) -> dict[str, Any]:
        routing = self._versions.routing
        model = routing.runners[routing.primary].model if routing else None
        return {
            "model_name": self.settings.model_name,
            "alias": self.settings.alias,
            "model_version": model.version if model else None,
            "traffic": routing.split.to_dict() if routing else None,
            "features": model.spec.example() if model else None,
        }

    # -- HTTP: labels and admin ------------------------------------------------------------
    async def _admit(self, request: Request, *, body_limit: int | None = None,
                     unavailable: str | None = None, parse: Callable[[Any], Any] = lambda b: b,
                     blank_ok: bool = False) -> _Admitted:
        """The preamble /feedback and every admin endpoint share, in this order: the request
        id; the bearer token (403 when no token is configured, 401 when it is wrong); then, for
        an endpoint with a body (``body_limit`` set), the body read up to that many bytes
        (413); ``unavailable``, the reason the endpoint cannot act now (503); and ``parse`` of
        its JSON (400, or the parser's status). ``blank_ok``: an empty body reads as ``{}``.
        The admitted request, or a `Problem` raised."""
        request_id = _request_id(request)
        _authorize(self.settings, request.headers.get("authorization"), request_id)
        if body_limit is None:
            return _Admitted(request_id)
        raw = await _body(request, body_limit, request_id, self.settings.body_timeout_s)
        if unavailable is not None:
            raise Problem(503, unavailable, request_id)
        if blank_ok and not raw.strip():
            raw = b"{}"
        try:
            return _Admitted(request_id, await _parsed(raw, parse))
        except _BadBody as exc:
            raise Problem(exc.status, str(exc), request_id) from None

    @api.post("/feedback", openapi_extra={"requestBody": BODIES["feedback"]})
    async def feedback(self, request: Request) -> JSONResponse:
        """Late true labels: ``{"labels": [{"request_id": "...", "row": 0, "label": 1}]}``."""
        log, max_items = self._log, self.settings.max_rows
        off = None
        if log is None:
            why = f" ({self._log_error})" if self._log_error else ""
            off = (f"labels cannot be stored: the inference log is off{why}; enable "
                   "inference_log in the project config and restart serving")
        call = await self._admit(request, body_limit=self.settings.max_body_bytes,
                                 unavailable=off,
                                 parse=lambda body: parse_feedback(body, max_items=max_items))
        assert log is not None  # `unavailable` answered otherwise
        if not log.log_feedback(call.body):
            raise Problem(
                503, "the inference log's buffer is full (its store is slow or unreachable); "
                "retry later", call.request_id,
            )
        return JSONResponse({"accepted": len(call.body), "request_id": call.request_id})

    @api.post("/admin/retrain", openapi_extra={"requestBody": BODIES["retrain"]})
    async def admin_retrain(self, request: Request) -> JSONResponse:
        """Ask ``retrain watch`` for a cycle now; optional body ``{"reason": "..."}``."""
        path = self.settings.inference_log_path
        call = await self._admit(
            request, body_limit=admin.BODY_BYTES, parse=admin.retrain_body, blank_ok=True,
            unavailable=None if path else
            "retrain requests cannot be stored: no inference log path is configured",
        )
        request_id = call.request_id
        try:
            assert path is not None  # `unavailable` answered otherwise
            made = await run_in_threadpool(request_retrain, path, call.body,
                                           admin.caller(request))
        except ValueError as exc:  # reason too long
            raise Problem(400, str(exc), request_id) from None
        except OSError as exc:
            raise Problem(503, f"cannot store the retrain request under {path}: {exc}",
                           request_id) from None
        return JSONResponse(
            {"retrain_request_id": made.id, "status": "pending",
             "requested_at": made.requested_at, "request_id": request_id},
            status_code=202,
        )

    @api.get("/admin/traffic")
    async def get_traffic(self, request: Request) -> JSONResponse:
        """The split this replica applies, what it has loaded, and per-version counters."""
        call = await self._admit(request)
        return JSONResponse({**self._traffic(), "counters": self._versions.counters_dict(),
                             "request_id": call.request_id})

    @api.put("/admin/traffic", openapi_extra={"requestBody": BODIES["traffic"]})
    async def put_traffic(self, request: Request) -> JSONResponse:
        """Write a new split (body: a `TrafficSplit` dict) to the registry; replicas apply it
        once every version it names is loaded."""
        call = await self._admit(request, body_limit=admin.BODY_BYTES, parse=admin.split_body)
        request_id, split, s = call.request_id, call.body, self.settings
        doing = "cannot write the split to the registry"
        missing = await _registry(doing, request_id, loader.unknown_versions, s.tracking_uri,
                                  s.model_name, split.deployed)
        if missing:
            raise Problem(409, f"version(s) {missing} of model {s.model_name!r} are not "
                           "registered; a split may only name registered versions", request_id)
        await _registry(doing, request_id, loader.write_traffic_tag, s.tracking_uri,
                        s.model_name, json.dumps(split.to_dict()))
        noted = await run_in_threadpool(admin.note, s, "traffic", admin.caller(request),
                                        request_id, weights=dict(split.weights))
        return JSONResponse(
            {"traffic": split.to_dict(), "request_id": request_id, "noted": noted,
             "note": f"replicas apply it within {s.poll_interval_s:g} s once every version it "
                     "names is loaded; GET /admin/traffic shows what they apply"},
        )

    @api.post("/admin/rollback")
    async def rollback(self, request: Request) -> JSONResponse:
        """All traffic back to the alias' version: removes the registry's split tag."""
        call = await self._admit(request)
        request_id, s = call.request_id, self.settings
        doing = "cannot change the registry"
        state = await _registry(doing, request_id, loader.registry_state, s.tracking_uri,
                                s.model_name)
        champion = state.aliases.get(s.alias)
        if champion is None:
            raise Problem(409, f"no version has the alias {s.alias!r}: there is nothing to "
                           "roll back to; the split is left as it is", request_id)
        await _registry(doing, request_id, loader.write_traffic_tag, s.tracking_uri,
                        s.model_name, None)
        noted = await run_in_threadpool(admin.note, s, "rollback", admin.caller(request),
                                        request_id, version=champion)
        return JSONResponse(
            {"traffic": TrafficSplit.single(champion).to_dict(), "champion": champion,
             "request_id": request_id, "noted": noted},
        )

    @api.get("/admin/rollout")
    async def rollout_status(self, request: Request) -> JSONResponse:
        """The rollout in progress as the driver last recorded it in the registry, and the
        split this replica applies."""
        call = await self._admit(request)
        request_id, s = call.request_id, self.settings
        state = await _registry("cannot read the registry", request_id, loader.registry_state,
                                s.tracking_uri, s.model_name)
        return JSONResponse({"rollout": admin.rollout_summary(state), "champion":
                             state.aliases.get(s.alias), **self._traffic(),
                             "request_id": request_id})

    @api.post("/admin/promote", openapi_extra={"requestBody": BODIES["promote"]})
    async def promote(self, request: Request) -> JSONResponse:
        """Move the alias to a version (body: {"version": "4"}): all traffic to it, no gates.
        Refused (409) while a rollout is in progress: roll it back or let it finish."""
        call = await self._admit(request, body_limit=admin.BODY_BYTES, parse=admin.promote_body)
        request_id, version, s = call.request_id, call.body, self.settings
        doing = "cannot read the registry; nothing was changed"
        state = await _registry(doing, request_id, loader.registry_state, s.tracking_uri,
                                s.model_name)
        active = admin.rollout_summary(state)
        if active and active.get("stage") not in ("completed", "rolled_back"):
            raise Problem(409, f"a rollout of version {active.get('challenger')} is in "
                           f"progress ({active.get('stage')}); roll it back first", request_id)
        if await _registry(doing, request_id, loader.unknown_versions, s.tracking_uri,
                           s.model_name, (version,)):
            raise Problem(409, f"version {version} of model {s.model_name!r} is not "
                           "registered", request_id)
        previous = state.aliases.get(s.alias)
        await _registry("cannot move the alias; nothing was changed", request_id,
                        loader.set_alias, s.tracking_uri, s.model_name, s.alias, version)
        try:
            await run_in_threadpool(loader.write_traffic_tag, s.tracking_uri, s.model_name, None)
        except Exception as exc:
            # All or nothing: the alias moved but the split could not be removed, so put
            # the alias back (a split naming other versions would keep them serving).
            undone = await run_in_threadpool(admin.restore_alias, s, previous)
            raise Problem(503, f"cannot remove the traffic split ({type(exc).__name__}: "
                           f"{exc}); {undone}", request_id) from None
        noted = await run_in_threadpool(admin.note, s, "promote", admin.caller(request),
                                        request_id, version=version, previous=previous,
                                        alias=s.alias)
        return JSONResponse({"champion": version, "previous": previous,
                             "traffic": TrafficSplit.single(version).to_dict(),
                             "request_id": request_id, "noted": noted})

    def check_health(self) -> None:
        # Serve restarts a replica whose check raises; a dead poller would freeze the split.
        if not self._poller.is_alive():
            raise RuntimeError("the registry poller thread stopped")
        if self._log is not None and not self._log.alive:
            raise RuntimeError("the inference log's writer thread stopped")


__all__ = ["PIN_HEADER", "ModelServer", "ModelUnavailable"]
