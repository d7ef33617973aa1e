"""ASGI middleware in front of Serve's HTTP proxy: headers it would fail on, answered with a
400; a request it could not answer at all, answered with a 503 to retry.

Serve's proxy reads some request headers before any application code runs (``x-request-id``,
the multiplexed model id, the session id, ``traceparent``) and decodes them as UTF-8; a value
that is not (``x-request-id: \\x80``) makes the proxy answer 500. Ray lets a deployment add
ASGI middleware in front of its proxy through the environment variable
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``, read where each proxy starts (every node of the
cluster, so it belongs in the environment of ``ray start``)::

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve.proxy:middlewares ray start --head ...

`retrain serve` sets it for a local Ray runtime it starts itself, and so does
``cluster/local_cluster.py``. Without it everything else still holds; only such a header
gets Serve's 500 instead of this 400. Starlette only: the proxy imports this.
"""

from __future__ import annotations

import json
import re

from starlette.middleware import Middleware

#: the environment variable Ray reads, and the value that installs `middlewares`
CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "serve.proxy:middlewares"
#: what the app accepts as a request id (serve/model.py checks the same)
REQUEST_ID = re.compile(rb"[\x20-\x7e]{1,256}")


class HeaderCheck:
    """A plain ASGI middleware: 400 for a request whose x-request-id is not printable ASCII
    (1 to 256 characters), or whose header values are not UTF-8."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            problem = _problem(scope.get("headers") or [])
            if problem is not None:
                body = json.dumps({"error": problem, "request_id": None}).encode()
                await send({"type": "http.response.start", "status": 400,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class RetryWhenUnanswered:
    """A 503 with ``Retry-After`` for an HTTP request the proxy returns from without starting
    any response.

    The proxy does that when the replica holding the request died (``RayActorError``) or the
    call failed outside the application, and the HTTP server then answers a bare 500. The
    application itself always answers (its own errors included, as JSON with the request's
    id), so a request left unanswered was lost with its replica, not refused: a retry reaches
    a live replica, and 503 says so to clients and load balancers that retry on it.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, receive, watched)
        if not started:
            request_id = _request_id(scope.get("headers") or [])
            body = json.dumps({
                "error": "the replica answering this request stopped before it answered "
                         "(it is being replaced); send the request again",
                "request_id": request_id}).encode()
            try:
                await send({"type": "http.response.start", "status": 503,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()),
                                        (b"retry-after", b"1")]})
                await send({"type": "http.response.body", "body": body})
            except Exception:  # the client is gone (the proxy's 499): nobody to answer
                return


def _request_id(headers) -> str | None:
    for key, value in headers:
        if key == b"x-request-id" and REQUEST_ID.fullmatch(value):
            return value.decode("ascii")
    return None


def _problem(headers) -> str | None:
    for key, value in headers:
        if key == b"x-request-id" and not REQUEST_ID.fullmatch(value):
            return ("the x-request-id header must be 1 to 256 printable ASCII characters; "
                    "send another id or none (one is made for you)")
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            name = key.decode("latin-1")[:60]
            return f"the {name} header is not UTF-8 text; send it as UTF-8 (or ASCII)"
    return None


def middlewares() -> list[Middleware]:
    """The callback Serve's proxy calls (see the module docstring)."""
    # the header check outermost: a refused request never reaches the proxy
    return [Middleware(HeaderCheck), Middleware(RetryWhenUnanswered)]
