"""Model versions side by side inside one replica, and the traffic split over them.

Why inside the replica and not one deployment per version behind a router: a handle hop
between deployments costs milliseconds per request on top of Serve's proxy hop, while
choosing a version here costs microseconds (see README, "Design notes"). Isolation between
the versions of one replica comes from these rules instead:

- each version predicts in its own bounded thread pool (`VersionRunner`): a slow version
  queues only its own requests; a request to it that waits longer than ``timeout_s`` fails
  (counted as that version's error); past ``threads + queue`` requests in flight, new ones
  are refused at once (overloaded) rather than queued without bound;
- a version's exception is caught and becomes that request's `Outcome`, never the replica's;
- a shadow copy is submitted after the live answer is computed, bounded by
  ``shadow_pending``; when that is reached the copy is dropped and counted, so a shadow can
  never slow or fail a live answer;
- `VersionSet.refresh` applies a new split only once every version it names is loaded and
  warmed; then the split and the version -> runner map swap in one reference assignment of
  an immutable `Routing`. A request reads the routing once and keeps its runner, so a
  version dropped from the map finishes what it has in flight.

No Ray here except ``serve.batch``, imported only when batching is on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from serve.loader import TRAFFIC_TAG, LoadedModel, RegistryState
from serve.schemas import InvalidInput, Rows, parse_rows
from serve.scoring import Scorer, concat
from serve.traffic import TrafficSplit

logger = logging.getLogger("retrain.serve.versions")


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
    #: > 1: concurrent requests to a version are predicted together (``serve.batch``)
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


class VersionRunner:
    """One loaded version with its own bounded pool (see the module docstring)."""

    def __init__(self, model: LoadedModel, limits: Limits, counters: VersionCounters) -> None:
        self.model = model
        self.limits = limits
        self.counters = counters
        self.scorer = Scorer(model, allow_all_missing_rows=limits.allow_all_missing_rows)
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        self._in_flight = 0  # submitted to the pool and not finished, shadow copies included
        self._shadow_in_flight = 0
        self._retired = False
        self._closed = False
        self._batched: Callable[..., Any] | None = None
        if limits.batching:
            from ray import serve

            # One batch queue per version, so a slow version never holds up a batch of
            # another one. The queue is made lazily on the replica's event loop.
            self._batched = serve.batch(
                max_batch_size=limits.batch_max_size,
                batch_wait_timeout_s=limits.batch_wait_s,
            )(self._predict_batch)

    @property
    def version(self) -> str:
        return self.model.version

    def _new_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.limits.threads,
                                  thread_name_prefix=f"version-{self.model.version}")

    # -- the pool ---------------------------------------------------------------------------
    def _submit(self, fn: Callable[..., _Done | list[_Done]], *args: Any,
                shadow: bool = False) -> Future | None:
        """The task's future, or None when the version is saturated (nothing submitted)."""
        with self._lock:
            if self._in_flight >= self.limits.threads + self.limits.queue:
                return None
            if shadow and self._shadow_in_flight >= self.limits.shadow_pending:
                return None
            if self._closed:
                # A request that read the routing just before this version was retired: a
                # fresh pool serves it, and closes again once idle.
                self._pool, self._closed = self._new_pool(), False
            self._in_flight += 1
            self._shadow_in_flight += shadow
            future = self._pool.submit(fn, *args)
        future.add_done_callback(lambda _: self._finished(shadow))
        return future

    def _finished(self, shadow: bool) -> None:
        with self._lock:
            self._in_flight -= 1
            self._shadow_in_flight -= shadow
            if self._retired and self._in_flight == 0 and not self._closed:
                self._closed = True
                self._pool.shutdown(wait=False)

    def retire(self) -> None:
        """No longer routed to: let its threads go once what it has in flight is done."""
        with self._lock:
            self._retired = True
            if self._in_flight == 0 and not self._closed:
                self._closed = True
                self._pool.shutdown(wait=False)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- work done in the pool -------------------------------------------------------------
    def _score(self, rows: Rows | pd.DataFrame, submitted: float) -> _Done:
        try:
            scores = self.scorer.score(rows)
        except Exception as exc:
            return _Done(_ms_since(submitted), exc=exc)
        return _Done(_ms_since(submitted), predictions=scores)

    def _score_many(self, items: list[tuple[Rows | pd.DataFrame, float]]) -> list[_Done]:
        """One prediction per kind of model input (lean blocks, frames) for a batch; a
        failing batch is retried request by request, so a failure is charged to the requests
        that cause it."""
        done: list[_Done | None] = [None] * len(items)
        shaped: list[tuple[int, np.ndarray | pd.DataFrame]] = []
        for i, (rows, submitted) in enumerate(items):
            try:
                shaped.append((i, self.scorer.shape(rows)))
            except InvalidInput as exc:
                done[i] = _Done(_ms_since(submitted), exc=exc)
        alone: list[tuple[int, np.ndarray | pd.DataFrame]] = []
        for kind in (np.ndarray, pd.DataFrame):
            group = [(i, x) for i, x in shaped if isinstance(x, kind)]
            if len(group) < 2:
                alone += group
                continue
            try:
                inputs = [x for _, x in group]
                scores = self.scorer.predict(concat(inputs))
                bounds = np.cumsum([0] + [len(x) for x in inputs])
                for k, (i, _) in enumerate(group):
                    done[i] = _Done(_ms_since(items[i][1]),
                                    predictions=scores[bounds[k]:bounds[k + 1]])
            except Exception:
                logger.debug("batch of version %s failed; retrying one by one", self.version)
                alone += group
        for i, x in alone:
            try:
                done[i] = _Done(_ms_since(items[i][1]), predictions=self.scorer.predict(x))
            except Exception as exc:
                done[i] = _Done(_ms_since(items[i][1]), exc=exc)
        return done  # type: ignore[return-value]

    async def _predict_batch(self, items: list[tuple[Rows | pd.DataFrame, float]]
                             ) -> list[_Done]:
        self.counters.batched(len(items))
        future = self._submit(self._score_many, items)
        if future is None:
            overloaded = Overloaded(self._saturated())
            return [_Done(_ms_since(submitted), exc=overloaded) for _, submitted in items]
        return await asyncio.wrap_future(future)

    def _saturated(self) -> str:
        return (f"version {self.version} has {self.limits.threads + self.limits.queue} "
                "requests in flight already; retry later")

    # -- the request path ------------------------------------------------------------------
    async def predict(self, raw: Rows | pd.DataFrame) -> Outcome:
        """This version's answer to the request's parsed rows; never raises for a failure."""
        submitted = time.perf_counter()
        if self._batched is not None:
            waiting: asyncio.Future = asyncio.ensure_future(self._batched((raw, submitted)))
        else:
            future = self._submit(self._score, raw, submitted)
            if future is None:
                return self._outcome(_Done(_ms_since(submitted),
                                           exc=Overloaded(self._saturated())))
            waiting = asyncio.wrap_future(future)
        finished, _ = await asyncio.wait({waiting}, timeout=self.limits.timeout_s)
        if not finished:
            # a queued task is taken off the queue; a running one cannot be stopped and
            # keeps its thread (and its place in the bound) until it returns
            waiting.cancel()
            return self._outcome(_Done(_ms_since(submitted), exc=VersionTimeout(
                f"version {self.version} did not answer within {self.limits.timeout_s:g} s")))
        return self._outcome(waiting.result())

    def mirror(self, raw: Rows | pd.DataFrame, done: Callable[[Outcome], None]) -> bool:
        """Compute a shadow copy in the background and hand its outcome to ``done`` (in a
        pool thread). False, and counted, when the copy was dropped."""
        future = self._submit(self._score, raw, time.perf_counter(), shadow=True)
        if future is None:
            self.counters.dropped_shadow()
            return False

        def finished(f: Future) -> None:
            outcome = self._outcome(f.result())
            if outcome.invalid is not None:
                # the live version read this request: a shadow that cannot is failing on it
                outcome = Outcome(self.version, outcome.latency_ms, status=500,
                                  error=f"InvalidInput: {outcome.invalid}")
            self.counters.record(outcome, shadow=True)
            try:
                done(outcome)
            except Exception:  # the shadow's bookkeeping must never surface anywhere
                logger.exception("shadow copy of version %s: the callback failed", self.version)

        future.add_done_callback(finished)
        return True

    def _outcome(self, done: _Done) -> Outcome:
        exc, version = done.exc, self.version
        if exc is None:
            return Outcome(version, done.latency_ms, predictions=done.predictions)
        if isinstance(exc, InvalidInput):
            return Outcome(version, done.latency_ms, invalid=str(exc), status=400)
        status = 504 if isinstance(exc, VersionTimeout) else 503 if isinstance(
            exc, Overloaded) else 500
        return Outcome(version, done.latency_ms, error=_describe(exc), status=status)

    def warm(self, timeout_s: float = 60.0) -> float:
        """One prediction of the spec's example row through the pool, before any request
        is routed here, by the path a request takes and, where that is the lean path, by the
        pandas path too (big requests take it): returns the seconds of the first. Raises
        what the version raises."""
        rows = parse_rows({"dataframe_records": [self.model.spec.example()]})
        start = time.perf_counter()
        seconds = 0.0
        lean = self.scorer.encoder is not None
        for example in (rows, rows.frame()) if lean else (rows,):
            future = self._submit(self._score, example, start)
            if future is None:  # cannot happen on a fresh runner; said plainly if it does
                raise Overloaded(self._saturated())
            done: _Done = future.result(timeout=timeout_s)
            if done.exc is not None:
                raise done.exc
            seconds = seconds or time.perf_counter() - start
        return seconds


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


# --------------------------------------------------------------------------------------------
# the routing snapshot and its refresh
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Routing:
    """What a replica applies now: one immutable value, replaced as a whole."""

    split: TrafficSplit
    runners: Mapping[str, VersionRunner]
    #: "tag": the registry's split tag; "alias": no (readable) tag, all to the alias' version
    source: str

    @property
    def primary(self) -> str:
        """The version taking the largest share (the newer one on a tie)."""
        return max(self.split.versions, key=lambda v: (self.split.weight(v), int(v)))

    @property
    def loaded(self) -> list[str]:
        return sorted(self.runners, key=int)


def wanted_split(state: RegistryState, alias: str) -> tuple[TrafficSplit | None, str, str | None]:
    """The split the registry asks for, where it comes from, and a problem to report.

    No tag, or one that cannot be read: all traffic to the version ``alias`` names.
    """
    problem = None
    raw = state.tags.get(TRAFFIC_TAG)
    if raw:
        try:
            return TrafficSplit.from_dict(json.loads(raw)), "tag", None
        except (ValueError, TypeError, RecursionError) as exc:
            problem = (f"the registry's {TRAFFIC_TAG} tag is unreadable ({exc}); serving the "
                       f"{alias!r} alias' version instead. Fix it with PUT /admin/traffic or "
                       "reset it with POST /admin/rollback")
    champion = state.aliases.get(alias)
    if champion is None:
        return None, "none", problem
    return TrafficSplit.single(champion), "alias", problem


class VersionSet:
    """The versions one replica serves and the split over them, kept in step with the
    registry by `refresh` (called by one poller thread at a time)."""

    def __init__(self, load: Callable[[str], LoadedModel], *, alias: str,
                 limits: Limits) -> None:
        self._load = load
        self.alias = alias
        self.limits = limits
        #: read once per request; replaced, never changed
        self.routing: Routing | None = None
        #: a split the registry asks for that cannot be applied yet (a version fails to load)
        self.pending: TrafficSplit | None = None
        self.last_error: str | None = None
        self.counters: dict[str, VersionCounters] = {}
        # loaded and warmed for a split that could not be applied yet: not reloaded on retry
        self._staged: dict[str, VersionRunner] = {}
        self._lock = threading.Lock()

    def refresh(self, state: RegistryState) -> bool:
        """Apply what ``state`` asks for if every version it names loads; True on a swap."""
        with self._lock:
            return self._refresh(state)

    def _refresh(self, state: RegistryState) -> bool:
        split, source, problem = wanted_split(state, self.alias)
        current = self.routing
        if split is None:
            # Nothing is named (no alias, no tag): keep what is served, say so.
            self.pending = None
            self.last_error = problem or (
                None if current else f"no version has the alias {self.alias!r} yet")
            return False
        if current is not None and current.split == split and current.source == source:
            self.pending, self.last_error = None, problem
            self._retire_staged(keep=())
            return False
        runners: dict[str, VersionRunner] = {}
        failures: list[str] = []
        for version in split.deployed:
            runner = (current.runners.get(version) if current else None) or self._staged.get(
                version)
            if runner is None:
                try:
                    runner = self._start(version)
                except Exception as exc:  # any load or warm failure: keep the old routing
                    failures.append(f"version {version}: {_describe(exc)}")
                    continue
                self._staged[version] = runner
            runners[version] = runner
        if failures:
            self.pending = split
            serving = current.split.to_dict() if current else "nothing"
            self.last_error = (f"cannot apply the split {split.to_dict()} yet: "
                               + "; ".join(failures) + f". Still serving {serving}")
            self._retire_staged(keep=split.deployed)
            return False
        self.routing = Routing(split, MappingProxyType(runners), source)  # the atomic swap
        for version, runner in (current.runners.items() if current else ()):
            if version not in runners:
                runner.retire()  # in-flight requests hold their own reference
        self._staged = {v: r for v, r in self._staged.items() if v not in runners}
        self._retire_staged(keep=())
        self.pending, self.last_error = None, problem
        logger.info("applying split %s (%s)", split.to_dict(), source)
        return True

    def _start(self, version: str) -> VersionRunner:
        model = self._load(version)
        counters = self.counters.setdefault(version, VersionCounters())
        runner = VersionRunner(model, self.limits, counters)
        try:
            seconds = runner.warm()
        except BaseException:
            runner.retire()
            raise
        logger.info("loaded and warmed version %s in %.3fs", version, seconds)
        return runner

    def _retire_staged(self, keep: tuple[str, ...]) -> None:
        for version in [v for v in self._staged if v not in keep]:
            self._staged.pop(version).retire()

    def note_error(self, message: str) -> None:
        """A registry read that failed: keep serving, report through /health."""
        self.last_error = message

    def counters_dict(self) -> dict[str, dict[str, Any]]:
        items = list(self.counters.items())  # the poller may add a version meanwhile
        return {v: c.to_dict() for v, c in sorted(items, key=lambda kv: int(kv[0]))}


__all__ = ["Limits", "Outcome", "Routing", "VersionCounters", "VersionRunner", "VersionSet",
           "wanted_split"]
