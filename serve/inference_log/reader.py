"""The monitor's side: predictions and feedback read back as frames, per hour partition, older
layouts upgraded; `LogTail` for a poller that reads each file once.
"""

from __future__ import annotations

import os
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from serve.inference_log.schema import (
    _ADDED_DEFAULTS,
    _PARTITION,
    FEEDBACK,
    FEEDBACK_COLUMNS,
    PREDICTION_COLUMNS,
    PREDICTIONS,
)
from serve.inference_log.storage import resolve

#: how long after its newest row a file may show as modified, at most, on a store whose clock
#: runs behind the writer's: files modified longer before a read's ``since`` are not read.
#: Generous, since the hour partitions already bound what is read.
MTIME_SLACK_S = 600.0

#: the columns of each kind of file
_SCHEMAS = {PREDICTIONS: PREDICTION_COLUMNS, FEEDBACK: FEEDBACK_COLUMNS}


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
    return _read(path, PREDICTIONS, since=since, limit=limit)


def read_feedback(path: str | os.PathLike[str], *, since: Any = None) -> pd.DataFrame:
    """Logged labels, oldest first: ``request_id, row, label, ts`` (ts: when it arrived).

    A label sent twice for the same row appears twice; the newest one is the last.
    """
    return _read(path, FEEDBACK, since=since, limit=None)


def _read(
    path: str | os.PathLike[str], kind: str, *, since: Any, limit: int | None,
    cache: dict[str, pa.Table] | None = None,
) -> pd.DataFrame:
    """``kind``'s rows at or after ``since``; with ``cache``, tables of files read before are
    taken from it, and it is left holding exactly the files read or taken this time."""
    fs, root = resolve(path)
    start = _utc(since)
    hours = _files(fs, f"{root}/{kind}", start)
    by_hour: list[list[pa.Table]] = []
    held: dict[str, pa.Table] = {}
    rows = 0
    # Hour partitions hold disjoint time ranges: newest first, stop once `limit` rows are in.
    for key in sorted(hours, reverse=True):
        # within an hour, file order (writer, sequence) breaks ties between equal timestamps
        for file in hours[key]:
            known = None if cache is None else cache.get(file)
            held[file] = (known if known is not None
                          else _upgraded(kind, pq.read_table(file, filesystem=fs)))
        by_hour.append([held[file] for file in hours[key]])
        rows += sum(t.num_rows for t in by_hour[-1])
        if limit is not None and rows >= limit:
            break
    if cache is not None:
        cache.clear()
        cache.update(held)
    tables = [table for hour in reversed(by_hour) for table in hour]
    return _frame(tables, _SCHEMAS[kind], start, limit)


class LogTail:
    """One kind of the log (predictions or feedback) since a time that moves on, read again
    and again as the log grows (the rollout driver polls it every step): each file is read
    once.

    A file never changes once it is in its partition (writers rename a finished file into
    place), so a table read stays true; the tables of files from before ``since`` (less
    `MTIME_SLACK_S`) are dropped as ``since`` moves on. Same rows, in the same order, as
    `read_predictions` or `read_feedback` with the same ``since``.
    """

    def __init__(self, path: str | os.PathLike[str], kind: str = PREDICTIONS) -> None:
        if kind not in _SCHEMAS:
            raise ValueError(f"kind must be one of {sorted(_SCHEMAS)}, but got {kind!r}")
        self._path, self._kind = path, kind
        self._tables: dict[str, pa.Table] = {}

    @property
    def files(self) -> tuple[str, ...]:
        """The files whose tables are held now."""
        return tuple(self._tables)

    def read(self, since: Any) -> pd.DataFrame:
        return _read(self._path, self._kind, since=since, limit=None, cache=self._tables)


def _files(fs: pafs.FileSystem, base: str, start: pd.Timestamp | None
           ) -> dict[tuple[str, str], list[str]]:
    """The files that may hold rows at or after ``start``, per hour partition, in order."""
    hours = _partitions(fs, base)
    if start is None:
        return {key: [info.path for info in infos] for key, infos in hours.items()}
    first = (start.strftime("%Y-%m-%d"), start.strftime("%H"))
    # A file is written after its rows, so one modified well before `start` holds none of
    # them; the slack covers a writer's clock running ahead of the store's.
    written_before = start - pd.Timedelta(seconds=MTIME_SLACK_S)
    return {key: [info.path for info in infos
                  if info.mtime is None or pd.Timestamp(info.mtime) >= written_before]
            for key, infos in hours.items() if key >= first}


def _frame(tables: list[pa.Table], schema: pa.Schema, start: pd.Timestamp | None,
           limit: int | None) -> pd.DataFrame:
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


def _partitions(fs: pafs.FileSystem, base: str) -> dict[tuple[str, str], list[pafs.FileInfo]]:
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    hours: dict[tuple[str, str], list[pafs.FileInfo]] = {}
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        match = _PARTITION.search(info.path)
        if match is None:
            continue
        date, hour, name = match.groups()
        if name.startswith((".", "_")) or not name.endswith(".parquet"):
            continue  # a write in progress, or not ours
        hours.setdefault((date, hour), []).append(info)
    for files in hours.values():
        files.sort(key=lambda info: info.path)
    return hours


def _utc(since: Any) -> pd.Timestamp | None:
    if since is None:
        return None
    if isinstance(since, (int, float)) and not isinstance(since, bool):
        return pd.Timestamp(since, unit="s", tz="UTC")
    stamp = pd.Timestamp(since)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
