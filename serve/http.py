"""Reading a request and answering a bad one, shared by every endpoint: the request id (checked
before any endpoint runs), the body read as it streams in under a size and a time limit, its
JSON, the bearer token, and the JSON error answer.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from serve.schemas import InvalidInput, refuse_surrogates
from serve.settings import ServeSettings

# Bodies up to this size are parsed on the event loop: a thread hop costs more than parsing
# them. Bigger ones go to a worker thread so that they do not hold up other requests.
_INLINE_BYTES = 64 * 1024
#: what an x-request-id may be: printable ASCII, as every log and header can carry it
_REQUEST_ID = re.compile(rb"[\x20-\x7e]{1,256}")


class _CheckRequestId:
    """Refuses (400) a request whose x-request-id is not printable ASCII of at most 256
    characters, before any endpoint runs: the id is echoed in headers and bodies and written
    to the inference log, where other bytes would fail. A plain ASGI middleware: the
    BaseHTTPMiddleware kind costs measurable throughput."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            for key, value in scope["headers"]:
                if key == b"x-request-id" and not _REQUEST_ID.fullmatch(value):
                    response = JSONResponse({"error": (
                        "the x-request-id header must be 1 to 256 printable ASCII characters; "
                        "send another id or none (one is made for you)"), "request_id": None},
                        status_code=400)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class _BadBody(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Problem(Exception):
    """What a request gets instead of an answer, raised anywhere on its path and answered by
    the app's one handler (`problem_response`): a JSON body with the message and the request
    id, and the version that failed where one did."""

    def __init__(self, status: int, message: str, request_id: str | None,
                 version: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.request_id = status, message, request_id
        self.version, self.headers = version, dict(headers or {})


def problem_response(problem: Problem) -> JSONResponse:
    response = _error(problem.status, problem.message, problem.request_id, problem.version)
    response.headers.update(problem.headers)
    return response


def _error(status: int, message: str, request_id: str | None,
           version: str | None = None) -> JSONResponse:
    headers: dict[str, str] = {}
    body: dict[str, Any] = {"error": message, "request_id": request_id}
    if version is not None:
        headers["x-model-version"] = version
        body["model_version"] = version
    return JSONResponse(body, status_code=status, headers=headers)


class _TooBig(Exception):
    pass


async def _body(request: Request, limit: int, request_id: str, timeout_s: float) -> bytes:
    """The raw body, read as it streams in: a 413 answer as soon as it passes ``limit``
    bytes (with or without a content-length: a chunked body is never read whole first), a
    408 when it has not arrived whole within ``timeout_s`` seconds (a slow or stalled upload
    holds a replica slot only that long), raised as a `Problem`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise Problem(400, "the content-length header must be a number of bytes",
                          request_id)
        if len(declared) > 18 or int(declared) > limit:
            raise Problem(413, f"request body over the limit of {limit} bytes", request_id)
    chunks: list[bytes] = []

    async def read() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _TooBig
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout_s)
    except _TooBig:
        raise Problem(413, f"request body over the limit of {limit} bytes", request_id) from None
    except TimeoutError:
        raise Problem(408, f"the request body did not arrive within {timeout_s:g} s; send it "
                      "whole, faster, or in smaller requests", request_id) from None
    except ClientDisconnect:
        raise Problem(400, "the client closed the connection before the body ended",
                      request_id) from None
    return b"".join(chunks)


def _json(raw: bytes) -> Any:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _BadBody(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise _BadBody(400, "request body is nested too deeply") from None
    except ValueError as exc:  # Python's limit on integer digits (4300), before any use
        raise _BadBody(400, f"request body holds a number that cannot be read ({exc}); send "
                       "numbers of at most a few hundred digits") from None
    try:
        refuse_surrogates(raw, body)
    except InvalidInput as exc:
        raise _BadBody(400, str(exc)) from None
    return body


async def _parsed(raw: bytes, parse: Callable[[Any], Any]) -> Any:
    """``parse(json)`` of the body: inline when small, in a worker thread when big."""
    def run() -> Any:
        body = _json(raw)
        try:
            return parse(body)
        except InvalidInput as exc:
            raise _BadBody(getattr(exc, "status", 400), str(exc)) from None

    return run() if len(raw) <= _INLINE_BYTES else await run_in_threadpool(run)


def _token_ok(settings: ServeSettings, header: str | None) -> bool:
    if not settings.admin_token_hash:
        return False
    scheme, _, given = (header or "").partition(" ")
    # the settings hold only a salted hash; the comparison is constant-time
    return scheme.lower() == "bearer" and settings.token_matches(given.strip())


def _authorize(settings: ServeSettings, header: str | None, request_id: str) -> None:
    """Returns when the bearer token matches; otherwise raises the 403 or 401 `Problem`."""
    if not settings.admin_token_hash:
        raise Problem(
            403,
            f"this endpoint is off: no admin token is configured. Set the environment variable "
            f"{settings.admin_token_env} where serving starts (e.g. `retrain serve`) and restart",
            request_id,
        )
    if not _token_ok(settings, header):
        raise Problem(
            401, "missing or wrong token; send the header 'Authorization: Bearer <token>'",
            request_id, headers={"www-authenticate": "Bearer"},
        )


@dataclass(frozen=True)
class _Admitted:
    """A request that passed the shared preamble: its id and its parsed body (None when the
    endpoint takes none)."""

    request_id: str
    body: Any = None


def _request_id(request: Request) -> str:
    """Serve's proxy gives every request an ``x-request-id`` header (the caller's own, or a
    new one) and echoes it on the answer, so the app never sets that header itself: a second
    copy would read as "id, id". The fallback is for calls that bypass the HTTP proxy."""
    return request.headers.get("x-request-id") or uuid.uuid4().hex
