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
from serve.features import FeatureSpec
from serve.schemas import InvalidInput


@dataclass(frozen=True)
class Partition:
    value: str
    rows: int
    files: tuple[str, ...]
    #: sha256 over the partition's file contents: names the exact data a model saw
    digest: str


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
            "data.train_rows": str(len(self.x_train) + len(self.x_valid)),
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
        partitions.append(
            Partition(
                value=value,
                rows=sum(f.count_rows() for f in fragments),
                files=tuple(sorted(f.path for f in fragments)),
                digest=digest.hexdigest(),
            )
        )
    return partitions


def feature_names(config: DataConfig, columns: list[str]) -> tuple[str, ...]:
    if config.features:
        return config.features
    skip = {config.target, config.partition_column, *config.exclude}
    return tuple(c for c in columns if c not in skip)


def _read(config: DataConfig, partitions: list[Partition], columns: list[str]) -> pd.DataFrame:
    files = [f for p in partitions for f in p.files]
    dataset = pads.dataset(files, format="parquet", partitioning="hive")
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise DataError(
            f"column(s) {missing} named in the config are not in the data; "
            f"the data has {sorted(dataset.schema.names)}"
        )
    return dataset.to_table(columns=columns).to_pandas()


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
) -> Split:
    """Read the dataset and split it by time, leaving out the ``exclude``d partitions
    (quarantined ones). ``partitions`` spares a caller that listed them already a second
    pass of content hashing. Raises `DataError` with the fix on bad data."""
    listed = list_partitions(config) if partitions is None else partitions
    partitions = [p for p in listed if p.value not in exclude]
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
    schema_names = open_dataset(config).schema.names
    names = feature_names(config, schema_names)
    if config.target not in schema_names:
        raise DataError(
            f"target column {config.target!r} is not in the data; the data has "
            f"{sorted(schema_names)}. Set data.target"
        )
    extra = [c for c in dict.fromkeys(extra_columns) if c not in names and c != config.target]
    columns = [*names, config.target]
    train_parts = partitions[: -config.holdout_partitions]
    holdout_parts = partitions[-config.holdout_partitions :]
    train = _read(config, train_parts, columns)
    holdout = _read(config, holdout_parts, [*columns, *extra])
    spec = FeatureSpec.learn(train, names, categorical=config.categorical)
    try:
        x_all, x_holdout = spec.frame(train), spec.frame(holdout)
    except InvalidInput as exc:
        raise DataError(f"the data does not fit the features: {exc}") from exc
    y_all = target_values(config, task, train[config.target])
    y_holdout = target_values(config, task, holdout[config.target])
    cut = round(len(x_all) * (1 - config.validation_fraction))
    if cut < 1 or cut >= len(x_all):
        raise DataError(
            f"{len(x_all)} training row(s) cannot be split with validation_fraction="
            f"{config.validation_fraction}; add data or change the fraction"
        )
    return Split(
        spec=spec,
        x_train=x_all.iloc[:cut].reset_index(drop=True),
        y_train=y_all[:cut],
        x_valid=x_all.iloc[cut:].reset_index(drop=True),
        y_valid=y_all[cut:],
        x_holdout=x_holdout.reset_index(drop=True),
        y_holdout=y_holdout,
        holdout_raw=holdout[[*names, *extra]].reset_index(drop=True),
        train_partitions=tuple(train_parts),
        holdout_partitions=tuple(holdout_parts),
    )
