"""A bounded HTTP load generator for the demo, the benchmarks and the Serve tests.

Client threads post one JSON body to one URL (loopback in the demo and the tests) until
stopped, and record every request: when it started, how long it took, the HTTP status (0 when
no answer came) and the model version that answered (the ``x-model-version`` header). The
aggregate view (`LoadStats`) is computed from those records.

Standard library HTTP, one keep-alive connection per thread: the demo runs without the test
dependencies, and a new TCP connection per request would measure connection set-up rather
than the server.
"""

from __future__ import annotations

import http.client
import json
import select
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from retrain.errors import InvalidValueError

VERSION_HEADER = "x-model-version"


@dataclass(frozen=True, slots=True)
class Answer:
    """One request. ``started`` is `time.monotonic()` when it was sent (compare it with your
    own ``time.monotonic()`` marks); ``status`` is 0 when no HTTP answer came, and ``error``
    then names the exception."""

    started: float
    seconds: float
    status: int
    version: str | None = None
    request_id: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def finished(self) -> float:
        """When the answer (or the error) came, on the `time.monotonic()` clock of ``started``."""
        return self.started + self.seconds

    def in_flight(self, start: float, end: float | None = None) -> bool:
        """Whether this request was sent and not yet answered at some moment of
        [``start``, ``end``] (one moment when ``end`` is omitted)."""
        return self.started <= (start if end is None else end) and self.finished >= start


@dataclass
class LoadStats:
    """Totals over a run: answers with status 200 count as ok; their versions and latencies."""

    ok: int = 0
    failed: int = 0
    versions: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.ok + self.failed

    @classmethod
    def of(cls, answers: list[Answer]) -> LoadStats:
        stats = cls()
        for a in answers:
            if a.ok:
                stats.ok += 1
                stats.versions[a.version] += 1
                stats.latencies.append(a.seconds)
            else:
                stats.failed += 1
                stats.errors[a.error or f"HTTP {a.status}"] += 1
        return stats


class _Client:
    """One thread's keep-alive connection to one URL."""

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidValueError(
                f"expected an http(s) URL like http://127.0.0.1:8000/invocations, "
                f"but got {url!r}")
        https = parts.scheme == "https"
        kind = http.client.HTTPSConnection if https else http.client.HTTPConnection
        host = parts.hostname
        self._connect = lambda: kind(host, parts.port, timeout=timeout_s)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
        if self._conn is not None and self._conn.sock is not None \
                and _closed_by_peer(self._conn.sock):
            self.close()  # the server closed the idle connection: reconnect, do not fail
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        try:
            conn.request("POST", self._path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()  # the whole answer, so that the connection can be reused
        except BaseException:
            self.close()
            raise
        if response.will_close:
            self.close()
        return response

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _closed_by_peer(sock) -> bool:
    # An idle keep-alive connection has nothing to read; readable means the server closed it
    # (EOF), which would fail the next request for a reason that is not the server's answer.
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


class LoadGenerator:
    """Posts ``body`` to ``url`` from ``threads`` threads until stopped or ``max_seconds``,
    pausing ``pause_s`` after each answer; ``answers`` holds one `Answer` per request.

    ``next_body``, when given, is called before each request for the body to send instead
    (from the client threads: it must be thread-safe), so a load can carry changing rows."""

    def __init__(
        self, url: str, body: Any, *, threads: int = 2, pause_s: float = 0.02,
        max_seconds: float = 3600.0, headers: Mapping[str, str] | None = None,
        timeout_s: float = 30.0, next_body: Callable[[], Any] | None = None,
    ) -> None:
        if threads < 1:
            raise InvalidValueError(f"threads must be at least 1, but got {threads=}")
        _Client(url, timeout_s)  # a bad URL fails here, not silently in every thread
        self.url, self.body, self.pause_s = url, body, pause_s
        self.max_seconds, self.timeout_s = max_seconds, timeout_s
        self.answers: list[Answer] = []
        self._payload = json.dumps(body).encode()
        self._next_body = next_body
        self._headers = {"content-type": "application/json", **(headers or {})}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True, name=f"load-{i}")
                         for i in range(threads)]

    def __enter__(self) -> LoadGenerator:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> LoadStats:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 5)
        return self.stats

    @property
    def stats(self) -> LoadStats:
        """Totals over the answers so far (a snapshot)."""
        return LoadStats.of(self.snapshot())

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def after(self, moment: float) -> list[Answer]:
        """Requests started after ``moment`` (a `time.monotonic()` value)."""
        return [a for a in self.snapshot() if a.started > moment]

    def in_flight(self, start: float, end: float | None = None) -> list[Answer]:
        """Requests that were sent and not yet answered at some moment of [``start``,
        ``end``] (`time.monotonic()` values; one moment when ``end`` is omitted)."""
        return [a for a in self.snapshot() if a.in_flight(start, end)]

    def failures(self) -> list[Answer]:
        return [a for a in self.snapshot() if not a.ok]

    def _run(self) -> None:
        client = _Client(self.url, self.timeout_s)
        deadline = time.monotonic() + self.max_seconds
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                answer = self._one(client)
                with self._lock:
                    self.answers.append(answer)
                if self.pause_s > 0:
                    self._stop.wait(self.pause_s)
        finally:
            client.close()

    def _one(self, client: _Client) -> Answer:
        payload = (self._payload if self._next_body is None
                   else json.dumps(self._next_body()).encode())
        started, tick = time.monotonic(), time.perf_counter()
        try:
            response = client.post(payload, self._headers)
        except Exception as exc:  # a failed request is what we count, whatever its kind
            return Answer(started, time.perf_counter() - tick, 0, error=type(exc).__name__)
        return Answer(started, time.perf_counter() - tick, response.status,
                      response.getheader(VERSION_HEADER),
                      response.getheader("x-request-id"))


__all__ = ["Answer", "LoadGenerator", "LoadStats"]
