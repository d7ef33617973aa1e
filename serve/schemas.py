"""Request bodies: the MLflow scoring format, parsed into a DataFrame or rejected with a reason.

Accepted (exactly one key per body), as MLflow's ``/invocations`` does:

- ``{"dataframe_split": {"columns": [...], "data": [[...], ...]}}``
- ``{"dataframe_records": [{"col": value, ...}, ...]}``
- ``{"instances": [{...}, ...]}`` or ``{"inputs": [{...}, ...]}`` (records), or
  ``{"inputs": {"col": [values...], ...}}`` (columns)

Everything here is pure: no Ray, no MLflow. A body that cannot be used raises `InvalidInput`,
which the HTTP layer turns into a 400 with the message.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


class InvalidInput(ValueError):
    """The request cannot be scored; the message says why and what is expected."""


def parse_invocation(body: Any, *, max_rows: int = 10_000) -> pd.DataFrame:
    if not isinstance(body, dict):
        raise InvalidInput(
            f"expected a JSON object with one of the keys {list(FORMATS)}, "
            f"but got a JSON {type(body).__name__}"
        )
    keys = [key for key in FORMATS if key in body]
    unknown = sorted(set(body) - set(FORMATS) - {"params"})
    if len(keys) != 1 or unknown:
        raise InvalidInput(
            f"expected exactly one of the keys {list(FORMATS)}, but got keys {sorted(body)}"
        )
    key = keys[0]
    payload = body[key]
    if key == "dataframe_split":
        frame = _from_split(payload)
    elif isinstance(payload, dict) and key != "dataframe_records":
        frame = _from_columns(key, payload)
    else:
        frame = _from_records(key, payload)
    if frame.empty:
        raise InvalidInput(f"{key!r} holds no rows; send at least one")
    if len(frame) > max_rows:
        raise InvalidInput(
            f"{key!r} holds {len(frame)} rows, more than the limit of {max_rows}; "
            "split the request"
        )
    return frame


def _from_split(payload: Any) -> pd.DataFrame:
    if not isinstance(payload, dict) or "columns" not in payload or "data" not in payload:
        raise InvalidInput(
            "'dataframe_split' must be an object with 'columns' (a list of names) "
            "and 'data' (a list of rows)"
        )
    columns, data = payload["columns"], payload["data"]
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InvalidInput("'dataframe_split.columns' must be a list of column names (strings)")
    if len(set(columns)) != len(columns):
        raise InvalidInput(f"'dataframe_split.columns' repeats a name: {columns}")
    if not isinstance(data, list):
        raise InvalidInput("'dataframe_split.data' must be a list of rows")
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            raise InvalidInput(
                f"'dataframe_split.data[{i}]' must be a list of {len(columns)} values "
                f"(one per column), but got {row!r:.80}"
            )
        _check_scalars(f"dataframe_split.data[{i}]", row)
    return pd.DataFrame(data, columns=columns, dtype=object)


def _from_records(key: str, payload: Any) -> pd.DataFrame:
    if not isinstance(payload, list):
        raise InvalidInput(f"{key!r} must be a list of records (objects), got {_kind(payload)}")
    for i, record in enumerate(payload):
        if not isinstance(record, dict):
            raise InvalidInput(
                f"'{key}[{i}]' must be an object mapping column names to values, "
                f"but got {_kind(record)}"
            )
        _check_scalars(f"{key}[{i}]", list(record.values()))
    return pd.DataFrame.from_records(payload).astype(object)


def _from_columns(key: str, payload: dict) -> pd.DataFrame:
    lengths = set()
    for name, values in payload.items():
        if not isinstance(values, list):
            raise InvalidInput(f"'{key}.{name}' must be a list of values, got {_kind(values)}")
        _check_scalars(f"{key}.{name}", values)
        lengths.add(len(values))
    if len(lengths) > 1:
        raise InvalidInput(f"the columns of {key!r} have different lengths: {sorted(lengths)}")
    return pd.DataFrame({name: pd.Series(v, dtype=object) for name, v in payload.items()})


def _check_scalars(where: str, values: list) -> None:
    for value in values:
        if isinstance(value, (dict, list)):
            raise InvalidInput(f"'{where}' holds a nested {_kind(value)}; values must be scalars")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), repr(value)[:40])
