"""The training rows as row ranges of the Parquet files: the same partitions and time cut as
`retrain.data.load_split`, planned without reading a row. Pure except the readers.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from retrain.errors import DataError, InvalidValueError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from retrain.config import DataConfig
    from retrain.data import Partition, Split
    from serve.features import FeatureSpec


@dataclass(frozen=True)
class FileRows:
    """One Parquet file of a partition, in the order `retrain.data.load_split` reads it."""

    partition: str
    path: str
    rows: int


@dataclass(frozen=True)
class RowRange:
    """Rows ``[start, stop)`` of one Parquet file that holds ``file_rows`` rows."""

    path: str
    start: int
    stop: int
    file_rows: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop == self.file_rows


def plan_rows(
    files: Sequence[FileRows], n_train: int, *, skip: Collection[str] = (),
) -> tuple[tuple[RowRange, ...], tuple[RowRange, ...]]:
    """The training and validation row ranges of time-ordered ``files``.

    The first ``n_train`` rows (in file order) train and the rest validate, as in
    `retrain.data.load_split`. Training rows of partitions in ``skip`` are left out (a warm
    start boosts only on partitions its champion has not seen); validation keeps every row,
    so all trials are ranked on the same rows.
    """
    total = sum(f.rows for f in files)
    if not 0 < n_train < total:
        raise InvalidValueError(f"n_train={n_train} must lie strictly between 0 and {total} rows")
    train: list[RowRange] = []
    valid: list[RowRange] = []
    offset = 0
    for f in files:
        if f.rows == 0:
            continue
        low, high = offset, offset + f.rows
        offset = high
        if low < n_train and f.partition not in skip:
            train.append(RowRange(f.path, 0, min(high, n_train) - low, f.rows))
        if high > n_train:
            valid.append(RowRange(f.path, max(low, n_train) - low, f.rows, f.rows))
    if not train:
        raise DataError(
            f"every training row belongs to a skipped partition ({sorted(skip)}); there is "
            "nothing to train on"
        )
    return tuple(train), tuple(valid)


@dataclass(frozen=True)
class ParquetRows:
    """What a data-parallel trial reads, and how it turns rows into model input."""

    train: tuple[RowRange, ...]
    valid: tuple[RowRange, ...]
    spec: FeatureSpec
    #: the data section: the target column and the messages of `retrain.data.target_values`
    data: DataConfig = field(repr=False)
    task: str

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.spec.names, self.data.target)

    @property
    def train_rows(self) -> int:
        return sum(r.rows for r in self.train)

    @property
    def valid_rows(self) -> int:
        return sum(r.rows for r in self.valid)


def file_rows(partitions: Sequence[Partition]) -> tuple[FileRows, ...]:
    """Each file of ``partitions`` with its row count (from the Parquet footer only)."""
    import pyarrow.parquet as pq

    return tuple(FileRows(p.value, path, pq.read_metadata(path).num_rows)
                 for p in partitions for path in p.files)


def parquet_rows(split: Split, data: DataConfig, task: str, *,
                 skip: Collection[str] = ()) -> ParquetRows:
    """The row plan of ``split``'s training partitions (call it on the driver, once per
    search, and hand the result to the trials). ``skip`` names partitions whose training
    rows are left out (a warm start's ``seen`` partitions with ``rows: new``)."""
    files = file_rows(split.train_partitions)
    loaded = split.train_rows + split.valid_rows
    found = sum(f.rows for f in files)
    if found != loaded:
        raise DataError(
            f"the training partitions' files hold {found} rows but held {loaded} when the "
            f"cycle read them; the data under {data.path} changed during the cycle: run it "
            "again"
        )
    train, valid = plan_rows(files, split.train_rows, skip=skip)
    return ParquetRows(train=train, valid=valid, spec=split.spec, data=data, task=task)


def read_ranges(ranges: Sequence[RowRange], columns: Sequence[str]) -> pa.Table:
    """The rows of ``ranges`` as one Arrow table, reading only the row groups they touch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for r in ranges:
        source = pq.ParquetFile(r.path)
        groups, first, offset = [], None, 0
        for i in range(source.metadata.num_row_groups):
            size = source.metadata.row_group(i).num_rows
            if offset < r.stop and offset + size > r.start:
                groups.append(i)
                first = offset if first is None else first
            offset += size
        table = source.read_row_groups(groups, columns=list(columns))
        tables.append(table.slice(r.start - (first or 0), r.rows))
    return pa.concat_tables(tables, promote_options="permissive")


def read_tasks(ranges: Sequence[RowRange], *, max_rows: int,
               min_tasks: int = 1) -> tuple[RowRange, ...]:
    """``ranges`` cut into read tasks of at most ``max_rows`` rows, and into at least
    ``min_tasks`` (as far as rows allow), so that a few big files still give every worker a
    share: Train splits a dataset between workers block by block, one block per task here."""
    tasks: list[RowRange] = []
    for r in ranges:
        parts = -(-r.rows // max_rows)
        bounds = [r.start + r.rows * i // parts for i in range(parts + 1)]
        tasks += [RowRange(r.path, a, b, r.file_rows) for a, b in pairwise(bounds)]
    while tasks and len(tasks) < min_tasks:
        big = max(range(len(tasks)), key=lambda i: tasks[i].rows)
        r = tasks[big]
        if r.rows < 2:
            break
        middle = r.start + r.rows // 2
        tasks[big:big + 1] = [RowRange(r.path, r.start, middle, r.file_rows),
                              RowRange(r.path, middle, r.stop, r.file_rows)]
    return tuple(tasks)


def frame_rows(table: pa.Table, rows: ParquetRows) -> tuple[pd.DataFrame, Any]:
    """Model input and labels from raw rows, exactly as `retrain.data.load_split` builds
    them: Arrow to pandas, the split's feature spec, the same label checks."""
    from retrain.data import target_values
    from serve.schemas import InvalidInput

    raw = table.to_pandas()
    try:
        x = rows.spec.frame(raw)
    except InvalidInput as exc:
        raise DataError(f"the data does not fit the features: {exc}") from exc
    return x, target_values(rows.data, rows.task, raw[rows.data.target])
