"""Partitioned Parquet in, a time-ordered train / validation / holdout split out.

The dataset is hive-partitioned by a period column (``month=4/part-0.parquet``). Partitions
sort by their value; the newest ``holdout_partitions`` form the holdout on which champion and
challenger are compared, and the rest train the candidates. The newest share of the training
rows validates during the search, so trials are ranked on data later than what they fit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from retrain.config import DataConfig
from retrain.errors import DataError
from serve.features import FeatureSpec, is_categorical
from serve.schemas import InvalidInput


@dataclass(frozen=True)
class Partition:
    value: str
    rows: int
    files: tuple[str, ...]
    #: sha256 over the partition's file contents: names the exact data a model saw
    digest: str
    #: why the partition cannot be read at all (a truncated or corrupt file); such a
    #: partition is left out of every split and quarantined by admission
    problem: str | None = None


@dataclass(frozen=True)
class Split:
    spec: FeatureSpec
    x_train: pd.DataFrame
    y_train: np.ndarray
    x_valid: pd.DataFrame
    y_valid: np.ndarray
    x_holdout: pd.DataFrame
    y_holdout: np.ndarray
    #: the holdout's raw feature columns (plus any extra columns asked for, e.g. slices), so
    #: each model applies its own feature spec
    holdout_raw: pd.DataFrame
    train_partitions: tuple[Partition, ...]
    holdout_partitions: tuple[Partition, ...]
    #: (training, validation) rows when the split was loaded without them (``x_train`` and
    #: ``x_valid`` then hold the columns and no rows); None: the frames hold every row
    row_counts: tuple[int, int] | None = None
    #: the holdout partitions' older rows that train (``data.holdout_share``): they follow
    #: the training partitions' rows in ``x_train`` / ``x_valid``
    holdout_head: int = 0

    def pieces(self, *, holdout: bool = False) -> list[Partition]:
        """The partitions behind the rows of ``x_train`` + ``x_valid`` (+ ``x_holdout`` with
        ``holdout``), in row order, each with the rows it gives there: the training
        partitions whole, then the holdout partitions' head, then (``holdout``) their tail."""
        out = list(self.train_partitions)
        bounds, offset = [], 0
        for p in self.holdout_partitions:
            bounds.append((p, offset, offset + p.rows))
            offset += p.rows
        ranges = [(0, self.holdout_head)] + ([(self.holdout_head, offset)] if holdout else [])
        for lo, hi in ranges:
            for p, start, stop in bounds:
                rows = min(stop, hi) - max(start, lo)
                if rows > 0:
                    out.append(Partition(p.value, rows, p.files, p.digest))
        return out

    @property
    def holds_training_rows(self) -> bool:
        return self.row_counts is None

    @property
    def train_rows(self) -> int:
        return len(self.x_train) if self.row_counts is None else self.row_counts[0]

    @property
    def valid_rows(self) -> int:
        return len(self.x_valid) if self.row_counts is None else self.row_counts[1]

    def lineage(self) -> dict[str, str]:
        """Flat tags naming the data snapshot behind a model."""
        def names(parts: tuple[Partition, ...]) -> str:
            return ",".join(p.value for p in parts)

        digest = hashlib.sha256(
            "".join(p.digest for p in (*self.train_partitions, *self.holdout_partitions)).encode()
        ).hexdigest()
        return {
            "data.train_partitions": names(self.train_partitions),
            "data.holdout_partitions": names(self.holdout_partitions),
            "data.holdout_head_rows": str(self.holdout_head),
            "data.train_rows": str(self.train_rows + self.valid_rows),
            "data.holdout_rows": str(len(self.x_holdout)),
            "data.digest": digest,
        }


def _sort_key(value: str) -> tuple[int, float | str]:
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)


def open_dataset(config: DataConfig) -> pads.Dataset:
    path = Path(config.path)
    if not path.exists():
        raise DataError(
            f"data.path {str(path)!r} does not exist; point it at a folder of hive-partitioned "
            f"Parquet files like {path}/{config.partition_column}=1/part-0.parquet"
        )
    try:
        dataset = pads.dataset(path, format="parquet", partitioning="hive")
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read Parquet under {path}: {exc}") from exc
    if not dataset.files:
        raise DataError(f"no Parquet files under {path}; expected <column>=<value>/*.parquet")
    if config.partition_column not in dataset.schema.names:
        raise DataError(
            f"partition column {config.partition_column!r} not found under {path}; the "
            f"dataset has columns {dataset.schema.names}. Partition folders must be named "
            f"{config.partition_column}=<value>, or set data.partition_column"
        )
    return dataset


def list_partitions(config: DataConfig) -> list[Partition]:
    """Partitions sorted oldest first, with row counts and content digests."""
    dataset = open_dataset(config)
    by_value: dict[str, list[pads.Fragment]] = {}
    for fragment in dataset.get_fragments():
        keys = pads.get_partition_keys(fragment.partition_expression)
        value = keys.get(config.partition_column)
        if value is None:
            raise DataError(
                f"{fragment.path} is outside a {config.partition_column}=<value> folder; "
                "move it into its partition"
            )
        by_value.setdefault(str(value), []).append(fragment)
    partitions = []
    for value in sorted(by_value, key=_sort_key):
        fragments = by_value[value]
        digest = hashlib.sha256()
        for fragment in sorted(fragments, key=lambda f: f.path):
            digest.update(Path(fragment.path).read_bytes())
        try:
            rows, problem = sum(f.count_rows() for f in fragments), None
        except (pa.ArrowInvalid, OSError) as exc:
            # one unreadable partition must not block the others: it is quarantined
            first = (str(exc).strip().splitlines() or ["unreadable"])[0][:300]
            rows, problem = 0, f"unreadable Parquet ({type(exc).__name__}: {first})"
        partitions.append(
            Partition(
                value=value,
                rows=rows,
                files=tuple(sorted(f.path for f in fragments)),
                digest=digest.hexdigest(),
                problem=problem,
            )
        )
    return partitions


def feature_names(config: DataConfig, columns: list[str]) -> tuple[str, ...]:
    if config.features:
        return config.features
    skip = {config.target, config.partition_column, *config.exclude}
    return tuple(c for c in columns if c not in skip)


def check_columns(schema_names: list[str], **fields: tuple[str, ...]) -> None:
    """A `DataError` naming the config field (``data_features`` -> ``data.features``) whose
    columns the data lacks, with the columns it has."""
    problems, named = [], []
    for field, columns in fields.items():
        missing = [c for c in dict.fromkeys(columns) if c not in schema_names]
        if missing:
            named.append(field.replace("_", ".", 1))
            problems.append(f"{named[-1]} names column(s) {missing} not in the data")
    if problems:
        raise DataError(
            f"{'; '.join(problems)}; the data has {sorted(schema_names)}. "
            f"Fix {' and '.join(named)}"
        )


def _read(config: DataConfig, partitions: list[Partition], columns: list[str]) -> pd.DataFrame:
    return _dataset(partitions, columns).to_table(columns=columns).to_pandas()


def _dataset(partitions: list[Partition], columns: list[str]) -> pads.Dataset:
    """The partitions' files as one dataset that holds ``columns`` (a `DataError` if not)."""
    files = [f for p in partitions for f in p.files]
    dataset = pads.dataset(files, format="parquet", partitioning="hive")
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise DataError(
            f"column(s) {missing} named in the config are not in the data; "
            f"the data has {sorted(dataset.schema.names)}"
        )
    return dataset


def target_values(config: DataConfig, task: str, values: pd.Series) -> np.ndarray:
    missing = int(values.isna().sum())
    if missing:
        raise DataError(
            f"target {config.target!r} has {missing} missing value(s); drop or fill those rows"
        )
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            raise DataError(
                f"regression target {config.target!r} must be numeric, got dtype {values.dtype}"
            )
        return values.to_numpy(dtype=np.float64)
    distinct = set(pd.unique(values).tolist())
    if not distinct <= {0, 1}:
        shown = sorted(map(str, distinct))[:10]
        raise DataError(
            f"classification target {config.target!r} must be binary (0/1 or boolean), but "
            f"it holds {shown}; encode it as 0/1 (multi-class is not supported yet)"
        )
    return values.astype(np.int8).to_numpy()


def read_partition(config: DataConfig, partition: Partition, columns: tuple[str, ...]):
    """One partition's rows, with whichever of ``columns`` it has (admission checks the rest)."""
    dataset = pads.dataset(list(partition.files), format="parquet", partitioning="hive")
    present = [c for c in columns if c in dataset.schema.names]
    return dataset.to_table(columns=present).to_pandas()


def load_split(
    config: DataConfig, task: str, *, extra_columns: tuple[str, ...] = (),
    exclude: frozenset[str] = frozenset(), partitions: list[Partition] | None = None,
    training_rows: bool = True, base_spec: FeatureSpec | None = None,
    holdout_share: float | None = None,
) -> Split:
    """Read the dataset and split it by time, leaving out the ``exclude``d partitions
    (quarantined ones). ``partitions`` spares a caller that listed them already a second
    pass of content hashing. Raises `DataError` with the fix on bad data.

    ``training_rows=False``: for trials that read their own rows (data-parallel), the
    training and validation rows are not loaded. Only the holdout is; the feature spec is
    learned from the categorical columns alone (numeric ones are never read) and the target
    column is read to be checked. `Split.row_counts` then holds the row counts, and
    `training_sample` draws rows where some are needed. Such a split judges on its whole
    holdout partitions (its workers read whole training partitions).

    ``holdout_share`` (default ``data.holdout_share``): the newest share of the holdout rows
    judges, the older rest is appended to the training rows (`Split.holdout_head`).

    ``base_spec`` (the champion's): vocabularies grow from it rather than being learned
    afresh (`FeatureSpec.grown_from`), so categories keep the codes the champion knows."""
    train_parts, holdout_parts = _split_partitions(config, partitions, exclude)
    names, extra = _columns_of(config, extra_columns)
    columns = [*names, config.target]
    holdout = _read(config, holdout_parts, [*columns, *extra])
    if training_rows:
        train = _read(config, train_parts, columns)
        spec = FeatureSpec.learn(train, names, categorical=config.categorical)
        targets = train[config.target]
    else:
        train, spec, targets = _training_contract(config, train_parts, names)
    spec = spec.grown_from(base_spec)
    try:
        x_all, x_holdout = spec.frame(train), spec.frame(holdout)
    except InvalidInput as exc:
        raise DataError(f"the data does not fit the features: {exc}") from exc
    _refuse_infinities(x_all, "training")
    _refuse_infinities(x_holdout, "holdout")
    y_all, y_holdout = (target_values(config, task, t) for t in (targets, holdout[config.target]))
    share = config.holdout_share if holdout_share is None else holdout_share
    head = 0 if not training_rows else len(y_holdout) - max(1, round(len(y_holdout) * share))
    if head > 0:
        # the holdout's older rows are the newest training rows
        x_all = pd.concat([x_all, x_holdout.iloc[:head]], ignore_index=True)
        y_all = np.concatenate([y_all, y_holdout[:head]])
        x_holdout, y_holdout = x_holdout.iloc[head:], y_holdout[head:]
        holdout = holdout.iloc[head:]
    cut = _cut(config, len(y_all))
    counts = None if training_rows else (cut, len(y_all) - cut)
    if not training_rows:  # x_all holds no rows, and the split no training targets
        cut, y_all = 0, y_all[:0]
    return Split(
        spec=spec, x_train=x_all.iloc[:cut].reset_index(drop=True), y_train=y_all[:cut],
        x_valid=x_all.iloc[cut:].reset_index(drop=True), y_valid=y_all[cut:],
        x_holdout=x_holdout.reset_index(drop=True), y_holdout=y_holdout,
        holdout_raw=holdout[[*names, *extra]].reset_index(drop=True),
        train_partitions=tuple(train_parts), holdout_partitions=tuple(holdout_parts),
        row_counts=counts, holdout_head=max(0, head),
    )


def _columns_of(config: DataConfig, extra_columns: tuple[str, ...]
                ) -> tuple[tuple[str, ...], list[str]]:
    """The feature columns, and the other columns to keep beside the holdout (slices);
    `DataError` naming what is missing."""
    schema_names = open_dataset(config).schema.names
    names = feature_names(config, schema_names)
    if config.target not in schema_names:
        raise DataError(
            f"target column {config.target!r} is not in the data; the data has "
            f"{sorted(schema_names)}. Set data.target"
        )
    check_columns(schema_names, data_features=config.features,
                  evaluation_slices=extra_columns)
    extra = [c for c in dict.fromkeys(extra_columns) if c not in names and c != config.target]
    return names, extra


def _refuse_infinities(frame: pd.DataFrame, where: str) -> None:
    """XGBoost refuses infinite inputs (every trial would fail with a native backtrace); a
    float32 frame also turns overflowing values (1e300) into infinities. Named here, once."""
    bad = {name: int(np.isinf(frame[name].to_numpy()).sum()) for name in frame.columns
           if not isinstance(frame[name].dtype, pd.CategoricalDtype)}
    bad = {name: n for name, n in bad.items() if n}
    if bad:
        raise DataError(
            f"the {where} rows hold infinite or overflowing values (beyond float32) in "
            f"{bad} (column: rows); no model can train on them: fix or drop those rows, or "
            "leave the column out with data.exclude (admission quarantines such new partitions)")


def training_row_count(config: DataConfig, partitions: list[Partition],
                       exclude: frozenset[str] = frozenset()) -> int:
    """The training rows (validation rows not counted) `load_split` would give, from the
    partitions' row counts alone."""
    train_parts, _ = _split_partitions(config, partitions, exclude)
    return _cut(config, sum(p.rows for p in train_parts))


def training_sample(config: DataConfig, task: str, split: Split, rows: int,
                    seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Up to ``rows`` of the split's training and validation rows, drawn uniformly without
    replacement (seeded) and typed by its feature spec: for a split loaded without them."""
    total = split.train_rows + split.valid_rows
    rng = np.random.default_rng(seed)
    if total <= 4 * rows:
        picked = rng.permutation(total)[:rows]
    else:
        # without a permutation of every row (400 MB at 50M rows): distinct uniform draws
        # are a uniform subset; a quarter more draws covers the few repeats
        drawn = np.unique(rng.integers(0, total, size=rows + rows // 4 + 16))
        picked = rng.choice(drawn, size=min(rows, len(drawn)), replace=False)
    picked = np.sort(picked)
    columns = [*split.spec.names, config.target]
    dataset = _dataset(list(split.train_partitions), columns)
    # row group by row group (`Dataset.take` reads many at once: at 9M rows it held twice
    # the memory the sample needs), each read as the whole dataset reads it (its schema)
    pieces: list[pa.Table] = []
    offset = 0
    for fragment in dataset.get_fragments():
        for group in fragment.split_by_row_group():
            size = group.row_groups[0].num_rows
            lo, hi = np.searchsorted(picked, [offset, offset + size])
            if hi > lo:
                table = group.to_table(schema=dataset.schema, columns=columns)
                pieces.append(table.take(pa.array(picked[lo:hi] - offset)))
            offset += size
    frame = pa.concat_tables(pieces).to_pandas()
    return split.spec.frame(frame), target_values(config, task, frame[config.target])


def _split_partitions(config: DataConfig, partitions: list[Partition] | None,
                      exclude: frozenset[str]) -> tuple[list[Partition], list[Partition]]:
    """(training, holdout) partitions, the ``exclude``d ones left out."""
    listed = list_partitions(config) if partitions is None else partitions
    partitions = [p for p in listed if p.value not in exclude and p.problem is None]
    for partition in partitions:
        if partition.rows < config.min_rows_per_partition:
            raise DataError(
                f"partition {config.partition_column}={partition.value} has {partition.rows} "
                f"row(s), fewer than data.min_rows_per_partition={config.min_rows_per_partition}"
            )
    needed = config.holdout_partitions + 1
    if len(partitions) < needed:
        raise DataError(
            f"found {len(partitions)} partition(s) under {config.path}, but need at least "
            f"{needed}: {config.holdout_partitions} for the holdout and one to train on"
        )
    return partitions[: -config.holdout_partitions], partitions[-config.holdout_partitions :]


def _cut(config: DataConfig, rows: int) -> int:
    """Where validation starts among ``rows`` training rows."""
    cut = round(rows * (1 - config.validation_fraction))
    if cut < 1 or cut >= rows:
        raise DataError(
            f"{rows} training row(s) cannot be split with validation_fraction="
            f"{config.validation_fraction}; add data or change the fraction"
        )
    return cut


def _training_contract(config: DataConfig, partitions: list[Partition], names: tuple[str, ...]):
    """What a split without its training rows still needs from them, read column by column:
    the columns and dtypes (no rows), the feature spec and the target. Only categorical
    columns are read whole (their vocabularies); a numeric column's kind is its dtype."""
    columns = [*names, config.target]
    dataset = _dataset(partitions, columns)
    # kinds from the dtypes of no rows: these can differ from a whole read's (int64 with
    # nulls reads as float64, bool with nulls as object) but never in kind
    empty = dataset.schema.empty_table().select(columns).to_pandas()
    whole = [n for n in names if is_categorical(n, empty[n], config.categorical)]
    read = dataset.to_table(columns=[*whole, config.target]).to_pandas()
    spec = FeatureSpec.learn({n: read[n] if n in whole else empty[n] for n in names}, names,
                             categorical=config.categorical)
    return empty, spec, read[config.target]
