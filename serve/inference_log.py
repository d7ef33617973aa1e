"""The inference log: every prediction and every late label, as hive-partitioned Parquet.

Layout under one root (a local folder or any pyarrow URI such as ``s3://bucket/log``)::

    <root>/predictions/date=YYYY-MM-DD/hour=HH/<writer-id>-<seq>.parquet
    <root>/feedback/date=YYYY-MM-DD/hour=HH/<writer-id>-<seq>.parquet
    <root>/requests/<id>.json          on-demand retrain requests, pending
    <root>/requests/done/<id>.json     ... and consumed by the controller

Writing (`InferenceLog`) happens inside the Serve replicas; reading (`read_predictions`,
`read_feedback`, `pending_requests`) in the monitor and the controller. The request path only
appends references to a buffer under a lock; a background thread converts and writes, so a
slow disk costs no answer time. Memory stays bounded: past ``max_buffer_rows`` rows, new rows
are dropped and counted rather than blocking a request. Rows are partitioned by the hour
of their own timestamp, so a reader can skip whole hours.

Files appear atomically: on a local filesystem each is written under a hidden temp name and
renamed; object stores (S3, GCS) publish an object only when its upload completes. Readers
skip hidden names. No Ray or MLflow here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from serve.schemas import InvalidInput, check_text, clean_text

logger = logging.getLogger("retrain.serve.inference_log")

PREDICTIONS = "predictions"
FEEDBACK = "feedback"
REQUESTS = "requests"

TIMESTAMP = pa.timestamp("ms", tz="UTC")
#: the columns of every prediction file; one column per model feature follows them
PREDICTION_COLUMNS = pa.schema(
    [
        ("request_id", pa.string()),
        ("row", pa.int64()),
        ("ts", TIMESTAMP),
        ("model_version", pa.string()),
        ("prediction", pa.float64()),
        # the version's own time for the request (queue in its pool + predict), one value
        # on every row of the request: the rollout's p99 gate reads it
        ("latency_ms", pa.float64()),
        # True: a copy of a live request that the shadow version computed, never served
        ("shadow", pa.bool_()),
        # null when the version answered; "<Type>: message" on its one row (row -1) when it
        # failed on the request
        ("error", pa.string()),
    ]
)
#: what files written before these columns existed read back as
_ADDED_DEFAULTS = {"latency_ms": float("nan"), "shadow": False, "error": None}
#: the ``row`` of the one row logged for a request that a version failed on
FAILED_ROW = -1
FEEDBACK_COLUMNS = pa.schema(
    [("request_id", pa.string()), ("row", pa.int64()), ("label", pa.float64()), ("ts", TIMESTAMP)]
)
#: a feature named like a fixed column is written as ``feature_<name>`` instead
FEATURE_PREFIX = "feature_"

_PARTITION = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/([^/]+)$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_REQUEST_ID_CHARS = 256
MAX_REASON_CHARS = 1000
#: a label's row index within its request: an int64 in the log, and no request has more rows
MAX_ROW = 2**31 - 1
# what a request id may be: printable ASCII, like the x-request-id headers it comes from
_REQUEST_ID_TEXT = re.compile(r"[\x20-\x7e]+")


class _Frames(Protocol):
    """Rows that make their frame on demand (`serve.schemas.Rows`)."""

    def __len__(self) -> int: ...

    def frame(self) -> pd.DataFrame: ...


def _as_frame(rows: pd.DataFrame | _Frames) -> pd.DataFrame:
    return rows if isinstance(rows, pd.DataFrame) else rows.frame()


class _Spec(Protocol):
    """What the log needs of a model's `serve.features.FeatureSpec`."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]


# -- value objects --------------------------------------------------------------------------


@dataclass(frozen=True)
class LogStats:
    """What a replica's log has done, for ``/health``."""

    writer_id: str
    predictions_written: int
    feedback_written: int
    files_written: int
    #: rows given up: buffer full, a row that could not be converted, or a failed final write
    rows_dropped: int
    #: rows accepted but not written yet (including a write in progress)
    rows_buffered: int
    last_error: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FeedbackItem:
    """One true label for one row of one answered request."""

    request_id: str
    label: float
    row: int = 0


@dataclass(frozen=True)
class RetrainRequest:
    """An on-demand retrain request, waiting in ``<root>/requests/`` for the controller."""

    id: str
    reason: str
    requested_by: str
    #: ISO 8601, UTC
    requested_at: str


class InvalidFeedback(InvalidInput):
    """A feedback body that cannot be stored; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# -- feedback bodies (pure) -----------------------------------------------------------------


def parse_feedback(body: Any, *, max_items: int) -> tuple[FeedbackItem, ...]:
    """Validate ``{"labels": [{"request_id": "...", "row": 0, "label": 1}, ...]}``.

    Raises `InvalidFeedback` (status 400, or 413 for too many items) naming the first problem.
    """
    example = '{"labels": [{"request_id": "...", "row": 0, "label": 1}]}'
    if not isinstance(body, dict) or "labels" not in body:
        got = f"keys {sorted(body)}" if isinstance(body, dict) else f"a JSON {_json_type(body)}"
        raise InvalidFeedback(f"expected a JSON object like {example}, but got {got}")
    unknown = sorted(set(body) - {"labels"})
    if unknown:
        raise InvalidFeedback(f"unknown key(s) {unknown}; the body holds only 'labels'")
    labels = body["labels"]
    if not isinstance(labels, list):
        raise InvalidFeedback(f"'labels' must be a list, but got a JSON {_json_type(labels)}")
    if not labels:
        raise InvalidFeedback("'labels' is empty; send at least one label")
    if len(labels) > max_items:
        raise InvalidFeedback(
            f"'labels' holds {len(labels)} items, more than the limit of {max_items}; "
            "split the request",
            status=413,
        )
    return tuple(_feedback_item(i, item) for i, item in enumerate(labels))


def _feedback_item(i: int, item: Any) -> FeedbackItem:
    where = f"labels[{i}]"
    if not isinstance(item, dict):
        raise InvalidFeedback(f"{where} must be an object, but got a JSON {_json_type(item)}")
    unknown = sorted(set(item) - {"request_id", "row", "label"})
    if unknown:
        raise InvalidFeedback(f"{where} has unknown key(s) {unknown}; use request_id, row, label")
    request_id = item.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise InvalidFeedback(
            f"{where}.request_id must be the non-empty request id of an answered prediction "
            f"(its x-request-id), but got {_shown(request_id)}"
        )
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidFeedback(f"{where}.request_id is longer than {MAX_REQUEST_ID_CHARS} chars")
    if not _REQUEST_ID_TEXT.fullmatch(request_id):
        raise InvalidFeedback(
            f"{where}.request_id must be printable ASCII, as the x-request-id of an answered "
            f"prediction is, but got {_shown(request_id)}")
    if "label" not in item:
        raise InvalidFeedback(f"{where} has no 'label'")
    label = item["label"]
    # JSON true/false is refused on purpose: send 1/0, so no label's meaning is guessed.
    try:  # an integer such as 10**400 is a number, but not one a float column holds
        value = float(label) if _is_number(label) else math.nan
    except OverflowError:
        value = math.nan
    if not math.isfinite(value):
        raise InvalidFeedback(f"{where}.label must be a finite number, but got {_shown(label)}")
    row = item.get("row", 0)
    if not isinstance(row, int) or isinstance(row, bool) or not 0 <= row <= MAX_ROW:
        raise InvalidFeedback(
            f"{where}.row must be the row's index (an integer from 0 to {MAX_ROW}) within its "
            f"request, but got {_shown(row)}"
        )
    return FeedbackItem(request_id=request_id, label=value, row=row)


def _shown(value: Any) -> str:
    """A short, always-encodable rendering of a bad value for an error message."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**20 else (
        f"an integer of {len(str(abs(value)))} digits")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:80]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


# -- the writer -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PredictionEntry:
    ts_ms: int
    request_id: str
    model_version: str
    spec: _Spec
    #: the request's parsed rows as sent (before category encoding); extra columns ignored.
    #: A `serve.schemas.Rows` (the lean request path builds no frame) is made a frame by the
    #: writer thread, off the request's critical path, with the calls that made it before.
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
        moment = datetime.fromtimestamp(entry.ts_ms / 1000, tz=UTC)
        date, hour = moment.strftime("%Y-%m-%d"), moment.strftime("%H")
        if isinstance(entry, _PredictionEntry):
            # Model versions may differ in features; one file holds one feature schema.
            key = (PREDICTIONS, date, hour, tuple(entry.spec.names), tuple(entry.spec.kinds))
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
    # One concat of the whole frames (pandas' fast path when requests share their columns),
    # then one vectorised conversion per feature: per-request column access cost 5x more.
    frame = pd.concat([_as_frame(e.frame) for e in entries], ignore_index=True)
    for name, kind in zip(spec.names, spec.kinds, strict=True):
        raw = frame[name] if name in frame else pd.Series([None] * len(frame), dtype=object)
        column = FEATURE_PREFIX + name if name in PREDICTION_COLUMNS.names else name
        if kind == "numeric":
            # the request passed the model's numeric check; None and NaN both mean missing
            values = pd.to_numeric(raw, errors="coerce").astype("float64")
            columns[column] = pa.array(values, pa.float64(), from_pandas=True)
        else:
            # as the feature spec learns and applies vocabularies: astype("string")
            columns[column] = pa.array(raw.astype("string"), pa.string(), from_pandas=True)
    return pa.table(columns)


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


# -- storage helpers ------------------------------------------------------------------------


def resolve(path: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The filesystem and root path of a local folder or a pyarrow URI (s3://, gs://, ...)."""
    text = os.fspath(path)
    if "://" in text:
        fs, root = pafs.FileSystem.from_uri(text)
        return fs, root.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(text)


def _atomic_write(
    fs: pafs.FileSystem, folder: str, name: str, write: Callable[[str], None]
) -> str:
    final = f"{folder}/{name}"
    if fs.type_name != "local":
        write(final)  # object stores publish an object only once its upload completes
        return final
    temp = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp"  # hidden: readers skip it
    try:
        write(temp)
        fs.move(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):  # it may never have been created
            fs.delete_file(temp)
        raise
    return final


# -- readers (the monitor's side) -----------------------------------------------------------


def read_predictions(
    path: str | os.PathLike[str], *, since: Any = None, limit: int | None = None
) -> pd.DataFrame:
    """Logged predictions, oldest first: ``request_id, row, ts, model_version, prediction,
    latency_ms, shadow, error`` and one column per feature (float64 for numeric, string for
    categorical features, raw as sent). ``since`` (datetime, pandas Timestamp or epoch
    seconds; naive means UTC) keeps rows at or after it; ``limit`` keeps the newest N rows.
    Only the hour partitions needed are read. Columns of features that a file's model version
    lacked are missing (NaN/None).

    Rows with ``shadow`` True are copies computed by a shadow version and were never served;
    a row with an ``error`` (row -1, prediction NaN, no features) is a request its version
    failed on. Readers of what callers were answered (drift, live metric) skip both. Files
    written before these columns existed read as latency NaN, shadow False, error None.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, but got {limit=}")
    return _read(path, PREDICTIONS, PREDICTION_COLUMNS, since=since, limit=limit)


def read_feedback(path: str | os.PathLike[str], *, since: Any = None) -> pd.DataFrame:
    """Logged labels, oldest first: ``request_id, row, label, ts`` (ts: when it arrived).

    A label sent twice for the same row appears twice; the newest one is the last.
    """
    return _read(path, FEEDBACK, FEEDBACK_COLUMNS, since=since, limit=None)


def _read(
    path: str | os.PathLike[str], kind: str, schema: pa.Schema, *, since: Any, limit: int | None
) -> pd.DataFrame:
    fs, root = resolve(path)
    start = _utc(since)
    hours = _partitions(fs, f"{root}/{kind}")
    if start is not None:
        first = (start.strftime("%Y-%m-%d"), start.strftime("%H"))
        hours = {key: files for key, files in hours.items() if key >= first}
    by_hour: list[list[pa.Table]] = []
    rows = 0
    # Hour partitions hold disjoint time ranges: newest first, stop once `limit` rows are in.
    for key in sorted(hours, reverse=True):
        # within an hour, file order (writer, sequence) breaks ties between equal timestamps
        by_hour.append([_upgraded(kind, pq.read_table(file, filesystem=fs))
                        for file in sorted(hours[key])])
        rows += sum(t.num_rows for t in by_hour[-1])
        if limit is not None and rows >= limit:
            break
    tables = [table for hour in reversed(by_hour) for table in hour]
    if not tables:
        return schema.empty_table().to_pandas()
    frame = _concat(tables)
    if start is not None:
        frame = frame[frame["ts"] >= start]
    frame = frame.sort_values("ts", kind="stable")
    if limit is not None:
        frame = frame.tail(limit)
    return frame.reset_index(drop=True)


def _upgraded(kind: str, table: pa.Table) -> pa.Table:
    """A prediction file in today's layout: columns added since it was written get their
    defaults, and the fixed columns come first, in order."""
    if kind != PREDICTIONS:
        return table
    names = table.column_names
    for name, value in _ADDED_DEFAULTS.items():
        if name not in names:
            kind_of = PREDICTION_COLUMNS.field(name).type
            table = table.append_column(name, pa.array([value] * table.num_rows, kind_of,
                                                       from_pandas=True))
    if table.column_names[: len(PREDICTION_COLUMNS)] == PREDICTION_COLUMNS.names:
        return table
    fixed = PREDICTION_COLUMNS.names
    return table.select(fixed + [n for n in table.column_names if n not in fixed])


def _concat(tables: list[pa.Table]) -> pd.DataFrame:
    try:
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # A feature changed kind between versions (numeric in one, categorical in another):
        # pandas keeps both as objects rather than failing the read.
        return pd.concat([t.to_pandas() for t in tables], ignore_index=True)


def _partitions(fs: pafs.FileSystem, base: str) -> dict[tuple[str, str], list[str]]:
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    hours: dict[tuple[str, str], list[str]] = {}
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        match = _PARTITION.search(info.path)
        if match is None:
            continue
        date, hour, name = match.groups()
        if name.startswith((".", "_")) or not name.endswith(".parquet"):
            continue  # a write in progress, or not ours
        hours.setdefault((date, hour), []).append(info.path)
    return hours


def _utc(since: Any) -> pd.Timestamp | None:
    if since is None:
        return None
    if isinstance(since, (int, float)) and not isinstance(since, bool):
        return pd.Timestamp(since, unit="s", tz="UTC")
    stamp = pd.Timestamp(since)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


# -- on-demand retrain requests (the controller's inbox) ------------------------------------


def request_retrain(
    path: str | os.PathLike[str], reason: str = "", requested_by: str = ""
) -> RetrainRequest:
    """Leave a retrain request for the controller (``retrain watch``) to pick up."""
    # it is copied into the ledger and shown by `retrain history`: text, bounded
    check_text("the reason", reason, max_chars=MAX_REASON_CHARS)
    now = datetime.now(UTC)
    request = RetrainRequest(
        # sortable by time; the suffix keeps two requests in one microsecond apart
        id=f"{now:%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:8]}",
        reason=reason,
        requested_by=requested_by,
        requested_at=now.isoformat(),
    )
    fs, root = resolve(path)
    folder = f"{root}/{REQUESTS}"
    fs.create_dir(folder, recursive=True)
    payload = json.dumps(asdict(request), indent=2).encode()

    def write(target: str) -> None:
        with fs.open_output_stream(target) as out:
            out.write(payload)

    _atomic_write(fs, folder, f"{request.id}.json", write)
    return request


def pending_requests(path: str | os.PathLike[str]) -> list[RetrainRequest]:
    """Requests not consumed yet, oldest first. Unreadable files are skipped (and logged)."""
    fs, root = resolve(path)
    infos = fs.get_file_info(pafs.FileSelector(f"{root}/{REQUESTS}", allow_not_found=True))
    requests: list[RetrainRequest] = []
    for info in infos:
        if info.type != pafs.FileType.File or info.base_name.startswith((".", "_")):
            continue
        if not info.base_name.endswith(".json"):
            continue
        try:
            with fs.open_input_stream(info.path) as stream:
                raw = json.loads(stream.read())
            # a request stored before reasons were checked is read, not fatal: its texts
            # are cleaned and bounded (it goes on to the ledger and the terminal)
            requests.append(RetrainRequest(**{
                key: clean_text(value, max_chars=MAX_REASON_CHARS) if isinstance(value, str)
                else value for key, value in raw.items()}))
        except FileNotFoundError:
            continue  # consumed between the listing and the read
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("skipping unreadable retrain request %s: %s", info.path, exc)
    return sorted(requests, key=lambda r: r.id)


def consume_request(path: str | os.PathLike[str], request_id: str) -> bool:
    """Mark a request done (move it to ``requests/done/``); True for the one caller that did.

    On a local or POSIX shared filesystem the move is one rename, so of several controllers
    racing for a request exactly one gets True. Object stores move by copy and delete, which
    is not atomic: run a single controller there.
    """
    if not _REQUEST_ID.match(request_id):
        raise ValueError(f"not a retrain request id: {request_id!r}")
    fs, root = resolve(path)
    done = f"{root}/{REQUESTS}/done"
    fs.create_dir(done, recursive=True)
    source = f"{root}/{REQUESTS}/{request_id}.json"
    if fs.type_name != "local" and fs.get_file_info(source).type == pafs.FileType.NotFound:
        return False
    try:
        fs.move(source, f"{done}/{request_id}.json")
    except FileNotFoundError:
        return False
    return True
