"""The replica's side: predictions and feedback buffered in memory and written as Parquet files off
the request path, bounded, never blocking a caller.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from serve.inference_log.feedback import FeedbackItem
from serve.inference_log.schema import (
    FAILED_ROW,
    FEATURE_PREFIX,
    FEEDBACK,
    FEEDBACK_COLUMNS,
    PREDICTION_COLUMNS,
    PREDICTIONS,
    TIMESTAMP,
    LogStats,
    _Frames,
    _Spec,
)
from serve.inference_log.storage import _atomic_write, resolve

logger = logging.getLogger("retrain.serve.inference_log")


@dataclass(frozen=True, slots=True)
class _PredictionEntry:
    ts_ms: int
    request_id: str
    model_version: str
    spec: _Spec
    #: the request's parsed rows as sent (before category encoding); extra columns ignored.
    #: A `serve.schemas.Rows` (the lean request path builds no frame) is read by the writer
    #: thread, off the request's critical path, as the frame it would make (`_feature_values`).
    frame: pd.DataFrame | _Frames
    predictions: np.ndarray
    latency_ms: float = math.nan
    shadow: bool = False
    #: set on a failed request's single entry (no features, one NaN prediction, row -1)
    error: str | None = None

    @property
    def rows(self) -> int:
        return len(self.predictions)


@dataclass(frozen=True, slots=True)
class _FeedbackEntry:
    ts_ms: int
    items: tuple[FeedbackItem, ...]

    @property
    def rows(self) -> int:
        return len(self.items)


_Entry = _PredictionEntry | _FeedbackEntry
_NO_FEATURES = pd.DataFrame(index=pd.RangeIndex(1))  # a failed request's row: features null
_FAILED_ROWS = np.full(1, FAILED_ROW, dtype=np.int64)


def new_writer_id() -> str:
    """Unique per process: several replicas (and restarts) never write the same file name."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class InferenceLog:
    """A buffered, bounded, background-flushed Parquet writer of predictions and labels.

    ``log_predictions`` and ``log_feedback`` never touch the disk and never block on it: they
    append to a buffer (or drop and count when it is full) and return at once. A daemon thread
    writes when ``flush_rows`` rows are buffered or the oldest is ``flush_interval_s`` old.
    Call `close` to write what is left.
    """

    def __init__(
        self,
        path: str,
        *,
        flush_rows: int = 5000,
        flush_interval_s: float = 5.0,
        max_buffer_rows: int = 100_000,
        writer_id: str | None = None,
        clock: Callable[[], float] = time.time,
        start: bool = True,
    ) -> None:
        if flush_rows < 1 or max_buffer_rows < 1 or not flush_interval_s > 0:
            raise ValueError(
                "flush_rows and max_buffer_rows must be >= 1 and flush_interval_s > 0, but got "
                f"{flush_rows=}, {max_buffer_rows=}, {flush_interval_s=}"
            )
        self.fs, self.root = resolve(path)
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self.max_buffer_rows = max_buffer_rows
        self.writer_id = writer_id or new_writer_id()
        self._clock = clock
        self._cond = threading.Condition()
        self._io = threading.Lock()  # one write at a time: file sequence numbers stay ordered
        self._entries: list[_Entry] = []
        self._buffered = 0  # rows in _entries
        self._in_flight = 0  # rows taken by a write not finished yet
        self._oldest: float | None = None  # monotonic time the oldest buffered row arrived
        self._retry_at = 0.0
        self._closed = False
        self._seq = 0
        self._dirs: set[str] = set()
        self._predictions_written = 0
        self._feedback_written = 0
        self._files = 0
        self._dropped = 0
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        if start:
            self._thread.start()

    # -- the request path ---------------------------------------------------------------------
    def log_predictions(
        self,
        *,
        request_id: str,
        model_version: str,
        spec: _Spec,
        frame: pd.DataFrame | _Frames,
        predictions: Sequence[float] | np.ndarray,
        latency_ms: float = math.nan,
        shadow: bool = False,
    ) -> bool:
        """Buffer one answered request's rows; False when they were dropped (buffer full).

        ``latency_ms`` is the version's own time for the request; ``shadow`` marks the rows
        of a mirrored copy computed by the shadow version.
        """
        entry = _PredictionEntry(
            ts_ms=self._now_ms(), request_id=request_id, model_version=model_version,
            spec=spec, frame=frame, predictions=np.asarray(predictions, dtype=np.float64),
            latency_ms=float(latency_ms), shadow=bool(shadow),
        )
        if len(frame) != entry.rows:
            raise ValueError(f"{len(frame)} feature rows but {entry.rows} predictions")
        return self._add(entry)

    def log_failure(
        self,
        *,
        request_id: str,
        model_version: str,
        spec: _Spec,
        error: str,
        latency_ms: float = math.nan,
        shadow: bool = False,
    ) -> bool:
        """Buffer the one row of a request that ``model_version`` failed on: row -1, NaN
        prediction, no features, ``error`` as "<Type>: message"."""
        if not error:
            raise ValueError("a failure needs its error message, but got an empty one")
        return self._add(_PredictionEntry(
            ts_ms=self._now_ms(), request_id=request_id, model_version=model_version,
            spec=spec, frame=_NO_FEATURES, predictions=np.full(1, np.nan),
            latency_ms=float(latency_ms), shadow=bool(shadow), error=error,
        ))

    def log_feedback(self, items: Iterable[FeedbackItem]) -> bool:
        """Buffer labels (validated by `parse_feedback`); False when they were dropped."""
        return self._add(_FeedbackEntry(ts_ms=self._now_ms(), items=tuple(items)))

    def _add(self, entry: _Entry) -> bool:
        n = entry.rows
        with self._cond:
            if self._closed or self._buffered + self._in_flight + n > self.max_buffer_rows:
                self._dropped += n
                return False
            self._entries.append(entry)
            self._buffered += n
            if self._oldest is None:
                # The writer sleeps without a deadline while the buffer is empty: wake it so
                # it starts this row's flush_interval_s clock.
                self._oldest = time.monotonic()
                self._cond.notify()
            elif self._buffered >= self.flush_rows:
                self._cond.notify()
        return True

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- flushing -----------------------------------------------------------------------------
    def flush(self) -> None:
        """Write everything buffered now, in the caller's thread (tests, shutdown)."""
        self._flush(final=False)

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting rows and write what is left (waits at most ``timeout`` seconds)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("inference log: final flush still running after %.1fs", timeout)
        else:
            self._flush(final=True)

    @property
    def alive(self) -> bool:
        """The background writer runs (or has ended because the log was closed)."""
        return self._thread.is_alive() or self._closed

    def stats(self) -> LogStats:
        with self._cond:
            return LogStats(
                writer_id=self.writer_id,
                predictions_written=self._predictions_written,
                feedback_written=self._feedback_written,
                files_written=self._files,
                rows_dropped=self._dropped,
                rows_buffered=self._buffered + self._in_flight,
                last_error=self._last_error,
            )

    def _due(self, now: float) -> bool:
        if not self._entries or now < self._retry_at:
            return False
        age = now - self._oldest if self._oldest is not None else 0.0
        return self._buffered >= self.flush_rows or age >= self.flush_interval_s

    def _wait_s(self, now: float) -> float | None:
        if not self._entries:
            return None  # nothing to age: sleep until a row arrives past flush_rows, or close
        due = max((self._oldest or now) + self.flush_interval_s, self._retry_at)
        return max(due - now, 0.001)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._due(time.monotonic()):
                    self._cond.wait(self._wait_s(time.monotonic()))
                closing = self._closed
            try:
                self._flush(final=closing)
            except Exception as exc:  # never let the writer thread die; report through stats
                self._note_error(f"{type(exc).__name__}: {exc}")
            if closing:
                return

    def _flush(self, *, final: bool) -> None:
        with self._io:
            with self._cond:
                entries, self._entries = self._entries, []
                taken, self._buffered = self._buffered, 0
                self._in_flight += taken
                self._oldest = None
            failed: list[_Entry] = []
            try:
                if entries:
                    failed = self._write(entries)
            finally:
                with self._cond:
                    self._in_flight -= taken
                    lost = sum(e.rows for e in failed)
                    if failed and final:
                        self._dropped += lost
                    elif failed:
                        # Back in front, to retry after a pause; the bound still holds because
                        # these rows were counted (in flight) when newer rows were admitted.
                        self._entries[:0] = failed
                        self._buffered += lost
                        self._oldest = time.monotonic()
                        self._retry_at = time.monotonic() + self.flush_interval_s

    def _write(self, entries: list[_Entry]) -> list[_Entry]:
        """Write one file per (table, hour, feature schema); return entries to retry."""
        failed: list[_Entry] = []
        for kind, date, hour, group in _groups(entries):
            table = self._table(kind, group)
            if table is None:
                continue
            try:
                self._write_file(kind, date, hour, table)
            except OSError as exc:  # the store is unreachable or full: keep the rows, retry
                failed.extend(group)
                self._note_error(f"cannot write {kind} to {self.root}: {exc}")
                continue
            with self._cond:
                self._files += 1
                if kind == PREDICTIONS:
                    self._predictions_written += table.num_rows
                else:
                    self._feedback_written += table.num_rows
        return failed

    def _table(self, kind: str, group: list[_Entry]) -> pa.Table | None:
        """The group's rows as one table. When it cannot be built, each entry is converted
        on its own: the ones that cannot be are dropped and counted, and every other row is
        kept, so one bad request never costs the batch it was flushed with."""
        convert = _prediction_table if kind == PREDICTIONS else _feedback_table
        try:
            return convert(group)
        except Exception as exc:  # a value that cannot be typed: find which entries
            first = f"{type(exc).__name__}: {exc}"
        good: list[pa.Table] = []
        for entry in group:
            try:
                good.append(convert([entry]))
            except Exception:  # this entry is the bad one
                with self._cond:
                    self._dropped += entry.rows
        lost = sum(e.rows for e in group) - sum(t.num_rows for t in good)
        self._note_error(f"dropped {lost} {kind} row(s) that cannot be converted: "
                         f"{first[:300]}")
        if not good:
            return None
        try:
            return pa.concat_tables(good, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # typed alike by construction; still
            with self._cond:
                self._dropped += sum(t.num_rows for t in good)
            return None

    def _write_file(self, kind: str, date: str, hour: str, table: pa.Table) -> None:
        folder = f"{self.root}/{kind}/date={date}/hour={hour}"
        if folder not in self._dirs:
            self.fs.create_dir(folder, recursive=True)
            self._dirs.add(folder)
        self._seq += 1
        name = f"{self.writer_id}-{self._seq:08d}.parquet"
        _atomic_write(self.fs, folder, name, lambda target: pq.write_table(
            table, target, filesystem=self.fs
        ))

    def _note_error(self, message: str) -> None:
        logger.warning("inference log: %s", message)
        with self._cond:
            self._last_error = message


def _groups(entries: list[_Entry]) -> list[tuple[str, str, str, list[_Entry]]]:
    """Entries by table, hour of their timestamp and (for predictions) feature schema."""
    groups: dict[tuple, list[_Entry]] = {}
    for entry in entries:
        moment = datetime.fromtimestamp(entry.ts_ms / 1000, tz=timezone.utc)
        date, hour = moment.strftime("%Y-%m-%d"), moment.strftime("%H")
        if isinstance(entry, _PredictionEntry):
            # Model versions may differ in features; one file holds one feature schema.
            key: tuple[Any, ...] = (PREDICTIONS, date, hour, tuple(entry.spec.names),
                                    tuple(entry.spec.kinds))
        else:
            key = (FEEDBACK, date, hour)
        groups.setdefault(key, []).append(entry)
    return [(key[0], key[1], key[2], group) for key, group in groups.items()]


def _prediction_table(group: list[_Entry]) -> pa.Table:
    entries: list[_PredictionEntry] = group  # type: ignore[assignment]
    spec = entries[0].spec
    counts = [e.rows for e in entries]
    errors = [e.error for e in entries]
    columns: dict[str, pa.Array] = {
        "request_id": pa.array(np.repeat([e.request_id for e in entries], counts), pa.string()),
        "row": pa.array(np.concatenate([
            _FAILED_ROWS if e.error is not None else np.arange(e.rows, dtype=np.int64)
            for e in entries
        ])),
        "ts": pa.array(np.repeat([e.ts_ms for e in entries], counts), pa.int64()).cast(TIMESTAMP),
        "model_version": pa.array(
            np.repeat([e.model_version for e in entries], counts), pa.string()
        ),
        "prediction": pa.array(np.concatenate([e.predictions for e in entries]), pa.float64()),
        "latency_ms": pa.array(np.repeat([e.latency_ms for e in entries], counts), pa.float64()),
        "shadow": pa.array(np.repeat([e.shadow for e in entries], counts), pa.bool_()),
        # almost always all null: one cheap array then, without repeating Python objects
        "error": (pa.nulls(sum(counts), pa.string()) if not any(errors) else pa.array(
            np.repeat(np.array(errors, dtype=object), counts), pa.string(), from_pandas=True)),
    }
    for name, kind in zip(spec.names, spec.kinds, strict=True):
        raw = pd.Series(_feature_values(entries, name, kind), dtype=object)
        column = FEATURE_PREFIX + name if name in PREDICTION_COLUMNS.names else name
        if kind == "numeric":
            # the request passed the model's numeric check; None and NaN both mean missing
            values = pd.to_numeric(raw, errors="coerce").astype("float64")
            columns[column] = pa.array(values, pa.float64(), from_pandas=True)
        else:
            # as the feature spec learns and applies vocabularies: astype("string")
            columns[column] = pa.array(raw.astype("string"), pa.string(), from_pandas=True)
    return pa.table(columns)


def _feature_values(entries: list[_PredictionEntry], name: str, kind: str) -> list[Any]:
    """One feature's values over the group's rows, as the rows' frames hold them (None where a
    request did not send it), read from the parsed rows without making a frame per request:
    building those frames was most of the log's cost per request. A records body whose
    category column holds a non-text value reads it from its frame, where pandas may have
    retyped it (an int beside a null becomes a float, logged "1.0")."""
    values: list[Any] = []
    for entry in entries:
        rows = entry.frame
        if isinstance(rows, pd.DataFrame):
            sent = rows[name].tolist() if name in rows else None
        else:
            sent = rows.column(name)
            if (sent is not None and kind != "numeric" and rows.infers_dtypes
                    and not all(v is None or isinstance(v, str) for v in sent)):
                sent = rows.frame()[name].tolist()
        values.extend([None] * entry.rows if sent is None else sent)
    return values


def _feedback_table(group: list[_Entry]) -> pa.Table:
    entries: list[_FeedbackEntry] = group  # type: ignore[assignment]
    items = [(item, e.ts_ms) for e in entries for item in e.items]
    return pa.table(
        {
            "request_id": pa.array([i.request_id for i, _ in items], pa.string()),
            "row": pa.array([i.row for i, _ in items], pa.int64()),
            "label": pa.array([i.label for i, _ in items], pa.float64()),
            "ts": pa.array([ts for _, ts in items], pa.int64()).cast(TIMESTAMP),
        },
        schema=FEEDBACK_COLUMNS,
    )
