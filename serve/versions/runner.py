"""`VersionRunner`: one loaded version with its own bounded thread pool, its optional batch queue,
and its shadow copies.

Batching (``batch_max_size`` > 1) batches only when requests queue: a request that finds one
of the version's threads free is predicted at once, alone; requests that arrive while every
thread is busy wait in the version's queue, and the next thread to free takes up to
``batch_max_size`` of them as one batch (waiting up to ``batch_wait_s`` for a batch that is
not full to fill; 0, the default, takes what is there). So a lone caller never waits for a
batch, and under load the batches grow with the queue. (Serve's ``@serve.batch``, used
before, waits for every batch: see benchmarks/serve_overhead.py for what each paid.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from serve.loader import LoadedModel
from serve.schemas import InvalidInput, Rows, parse_rows
from serve.scoring import Scorer, concat
from serve.versions.outcome import (
    Limits,
    Outcome,
    Overloaded,
    VersionCounters,
    VersionTimeout,
    _describe,
    _Done,
    _ms_since,
)

logger = logging.getLogger("retrain.serve.versions")

#: a request waiting for a thread with batching on: its rows, when it came, its future, and
#: the event loop that future belongs to
_Queued = tuple[Rows | pd.DataFrame, float, asyncio.Future, asyncio.AbstractEventLoop]


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
        #: with batching on: requests waiting for a thread, and the threads taking batches
        self._queued: deque[_Queued] = deque()
        self._draining = 0
        self._filled = threading.Condition(self._lock)

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
                scores = self.scorer.predict(x)  # before the clock is read: it is the cost
            except Exception as exc:
                done[i] = _Done(_ms_since(items[i][1]), exc=exc)
            else:
                done[i] = _Done(_ms_since(items[i][1]), predictions=scores)
        return done  # type: ignore[return-value]

    def _enqueue(self, raw: Rows | pd.DataFrame, submitted: float) -> asyncio.Future | None:
        """Batching: the request's future, in the queue a thread takes batches from (a thread
        is started when one is free); None when the queue is full."""
        loop = asyncio.get_running_loop()
        waiting = loop.create_future()
        item = (raw, submitted, waiting, loop)
        with self._lock:
            start = self._draining < self.limits.threads
            if not start and len(self._queued) >= self.limits.queue:
                return None
            self._queued.append(item)
            self._draining += start
            if len(self._queued) >= self.limits.batch_max_size:
                self._filled.notify()
        if start and self._submit(self._drain) is None:  # shadow copies fill the pool
            with self._lock:
                self._draining -= 1
                # by identity: deque.remove would compare the rows (a frame's == is no bool)
                at = next((i for i, queued in enumerate(self._queued) if queued is item), None)
                if at is None:
                    return waiting  # a running thread took it: it will be answered
                del self._queued[at]
            return None
        return waiting

    def _drain(self) -> list[_Done]:
        """A pool thread's loop with batching on: take what is queued (up to a batch), score
        it, hand the answers to the event loop in one call (one wake-up per batch, not per
        request); end when the queue is empty."""
        limit, wait = self.limits.batch_max_size, self.limits.batch_wait_s
        first = True  # the request that found this thread free is not kept waiting
        while True:
            with self._lock:
                if wait > 0 and not first and 0 < len(self._queued) < limit:
                    self._filled.wait_for(lambda: len(self._queued) >= limit, timeout=wait)
                first = False
                batch: list[_Queued] = []
                while self._queued and len(batch) < limit:
                    item = self._queued.popleft()
                    if not item[2].cancelled():  # cancelled: its caller timed out
                        batch.append(item)
                if not batch:  # the queue is empty
                    self._draining -= 1
                    return []
            if len(batch) > 1:
                self.counters.batched(len(batch))
            try:
                done = self._score_many([(rows, submitted) for rows, submitted, _, _ in batch])
            except Exception as exc:  # never leave a caller waiting for its timeout
                done = [_Done(_ms_since(submitted), exc=exc) for _, submitted, _, _ in batch]
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, _Done]]] = {}
            for (_, _, waiting, loop), result in zip(batch, done, strict=True):
                by_loop.setdefault(loop, []).append((waiting, result))
            for loop, answers in by_loop.items():
                with contextlib.suppress(RuntimeError):  # its loop closed: nobody waits
                    loop.call_soon_threadsafe(_answer, answers)

    def _saturated(self) -> str:
        return (f"version {self.version} has {self.limits.threads + self.limits.queue} "
                "requests in flight already; retry later")

    # -- the request path ------------------------------------------------------------------
    async def predict(self, raw: Rows | pd.DataFrame) -> Outcome:
        """This version's answer to the request's parsed rows; never raises for a failure."""
        submitted = time.perf_counter()
        if self.limits.batching:
            waiting = self._enqueue(raw, submitted)
        else:
            future = self._submit(self._score, raw, submitted)
            waiting = None if future is None else asyncio.wrap_future(future)
        if waiting is None:
            return self._outcome(_Done(_ms_since(submitted), exc=Overloaded(self._saturated())))
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


def _answer(answers: list[tuple[asyncio.Future, _Done]]) -> None:
    """On the event loop: each waiting request's answer (one whose caller gave up is skipped)."""
    for waiting, done in answers:
        if not waiting.done():
            waiting.set_result(done)
