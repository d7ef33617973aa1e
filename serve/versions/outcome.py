"""A version's bounds inside a replica (`Limits`), what one request to it came to (`Outcome`), and
its counters.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Per-version bounds inside one replica (see the module docstring)."""

    threads: int = 2
    #: requests that may wait for a busy version beyond its threads; more are refused (503)
    queue: int = 64
    #: a request waiting longer than this for its version fails (504), counted as an error
    timeout_s: float = 10.0
    #: shadow copies in flight at most; more are dropped and counted
    shadow_pending: int = 64
    #: > 1: requests that queue for a busy version are predicted together, up to this many
    batch_max_size: int = 0
    batch_wait_s: float = 0.0
    #: False: a row in which every feature is missing is refused (400 naming it), since a
    #: prediction from no input at all is almost always a caller's mistake
    allow_all_missing_rows: bool = False

    def __post_init__(self) -> None:
        for name in ("threads", "shadow_pending"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, but got {name}={getattr(self, name)}")
        if self.queue < 0 or self.batch_max_size < 0:
            raise ValueError(f"queue and batch_max_size must be >= 0, but got "
                             f"queue={self.queue}, batch_max_size={self.batch_max_size}")
        if not self.timeout_s > 0 or not self.batch_wait_s >= 0:
            raise ValueError(f"timeout_s must be > 0 and batch_wait_s >= 0, but got "
                             f"timeout_s={self.timeout_s}, batch_wait_s={self.batch_wait_s}")

    @property
    def batching(self) -> bool:
        return self.batch_max_size > 1


@dataclass(frozen=True)
class Outcome:
    """What one version made of one request."""

    version: str
    #: the version's own time for the request: waiting for its pool, shaping, predicting
    latency_ms: float
    predictions: np.ndarray | None = None
    #: the input cannot be shaped into this version's features: the caller's fault (400)
    invalid: str | None = None
    #: "<Type>: message" when the version failed on a valid request
    error: str | None = None
    #: the HTTP status that the failure maps to: 500 failed, 503 overloaded, 504 timed out
    status: int = 200

    @property
    def ok(self) -> bool:
        return self.predictions is not None


class Overloaded(RuntimeError):
    """A version has ``threads + queue`` requests in flight already."""


class VersionTimeout(TimeoutError):
    """A request waited longer than ``timeout_s`` for its version."""


@dataclass
class VersionCounters:
    """What one version did in this replica since it started (kept when it is unloaded)."""

    requests: int = 0
    answered: int = 0
    #: failed requests, including timed out and overloaded ones
    errors: int = 0
    timeouts: int = 0
    overloaded: int = 0
    #: requests whose input this version could not read (4xx; not an error of the version)
    invalid: int = 0
    #: requests pinned to it with the admin header
    pinned: int = 0
    shadow_requests: int = 0
    shadow_errors: int = 0
    shadow_dropped: int = 0
    #: with batching on: predictions made for several requests at once, and those requests
    batches: int = 0
    batched_requests: int = 0
    latency_ms_total: float = 0.0
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, outcome: Outcome, *, pinned: bool = False, shadow: bool = False) -> None:
        with self._lock:
            if shadow:
                self.shadow_requests += 1
                if outcome.error is not None:
                    self.shadow_errors += 1
                    self.last_error = outcome.error
                return
            self.requests += 1
            self.pinned += pinned
            if outcome.invalid is not None:
                self.invalid += 1
                return
            if outcome.ok:
                self.answered += 1
                self.latency_ms_total += outcome.latency_ms
                return
            self.errors += 1
            self.timeouts += outcome.status == 504
            self.overloaded += outcome.status == 503
            self.last_error = outcome.error

    def dropped_shadow(self) -> None:
        with self._lock:
            self.shadow_dropped += 1

    def batched(self, requests: int) -> None:
        with self._lock:
            self.batches += 1
            self.batched_requests += requests

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            out = {f.name: getattr(self, f.name) for f in fields(self)
                   if not f.name.startswith("_")}
        total = out.pop("latency_ms_total")
        out["mean_latency_ms"] = round(total / out["answered"], 3) if out["answered"] else None
        return out


@dataclass(frozen=True, slots=True)
class _Done:
    """A pool task's result: it never raises, so no exception crosses threads unseen."""

    latency_ms: float
    predictions: np.ndarray | None = None
    exc: BaseException | None = None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
