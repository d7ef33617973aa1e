"""Request bodies: the MLflow scoring format, parsed into rows (`Rows`, a frame on demand) or
rejected with a reason.

Accepted (exactly one key per body), as MLflow's ``/invocations`` does:

- ``{"dataframe_split": {"columns": [...], "data": [[...], ...]}}``
- ``{"dataframe_records": [{"col": value, ...}, ...]}``
- ``{"instances": [{...}, ...]}`` or ``{"inputs": [{...}, ...]}`` (records), or
  ``{"inputs": {"col": [values...], ...}}`` (columns)

Everything here is pure: no Ray, no MLflow. A body that cannot be used raises `InvalidInput`,
which the HTTP layer turns into a 400 with the message.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
#: a string value (a category) longer than this is refused: no vocabulary holds one, and
#: every value reaches the inference log
MAX_TEXT_CHARS = 1024
#: columns one request may name, and values (rows x columns) it may hold, by default; the
#: server's limits come from its settings. Checked before a frame is built: a frame of
#: 150,000 columns costs seconds of CPU to build and is refused anyway.
MAX_COLUMNS = 1024
MAX_CELLS = 1_000_000
# How a lone surrogate gets into a parsed body: a JSON escape (\\ud800), or its 3 bytes
# (ED A0..BF xx), which json.loads decodes with "surrogatepass". Bodies with neither skip
# the walk.
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]|\xed[\xa0-\xbf]")


class InvalidInput(ValueError):
    """The request cannot be scored; the message says why and what is expected."""


def check_text(where: str, value: str, *, max_chars: int) -> str:
    """``value`` when it can be stored anywhere (valid UTF-8, no control characters but tab
    and newline, at most ``max_chars``); `InvalidInput` naming ``where`` otherwise."""
    if len(value) > max_chars:
        raise InvalidInput(f"{where} is {len(value)} characters long, more than the limit of "
                           f"{max_chars}; shorten it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{where} holds a lone UTF-16 surrogate (such as \\ud800), which is "
                           "not text; send valid UTF-8") from None
    if any((ord(c) < 32 and c not in "\t\n") or ord(c) == 127 for c in value):
        raise InvalidInput(f"{where} holds a control character; send printable text")
    return value


def clean_text(value: str, *, max_chars: int) -> str:
    """``value`` made storable and printable for a reader of stored data: lone surrogates
    become U+FFFD and the text is cut at ``max_chars`` (marked with an ellipsis)."""
    text = value if _encodes(value) else _SURROGATE.sub("\ufffd", value)
    return text if len(text) <= max_chars else text[: max_chars - 1] + "\u2026"


def _encodes(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def refuse_surrogates(raw: bytes, body: Any) -> None:
    """Refuse a parsed JSON body holding a lone surrogate in any key or string: it is not
    text, cannot be encoded into an answer, a log file or a registry, and would fail there."""
    if not _SURROGATE_ESCAPE.search(raw):
        return
    stack: list[tuple[str, Any]] = [("body", body)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            _utf8(where, value)
        elif isinstance(value, dict):
            for key, item in value.items():
                _utf8(f"a key in {where}", key)
                stack.append((f"{where}.{key}", item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))


def _utf8(where: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        shown = where.encode("utf-8", "backslashreplace").decode("utf-8")[:120]
        raise InvalidInput(f"{shown} holds a lone UTF-16 surrogate (such as \\ud800), which "
                           "is not text; send valid UTF-8 strings") from None


def parse_invocation(body: Any, *, max_rows: int = 10_000, max_columns: int = MAX_COLUMNS,
                     max_cells: int = MAX_CELLS) -> pd.DataFrame:
    """The body's rows as a frame of objects (what the pandas path reads); see `parse_rows`."""
    return parse_rows(body, max_rows=max_rows, max_columns=max_columns,
                      max_cells=max_cells).frame()


def parse_rows(body: Any, *, max_rows: int = 10_000, max_columns: int = MAX_COLUMNS,
               max_cells: int = MAX_CELLS) -> Rows:
    """The body's rows, checked, without building a frame (the lean request path reads them
    directly; `Rows.frame` builds the frame `parse_invocation` returns)."""
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
    limits = _Limits(key, max_rows, max_columns, max_cells)
    if key == "dataframe_split":
        rows: Rows = _from_split(payload, limits)
    elif isinstance(payload, dict) and key != "dataframe_records":
        rows = _from_columns(key, payload, limits)
    else:
        rows = _from_records(key, payload, limits)
    if rows.empty:
        raise InvalidInput(f"{key!r} holds no rows; send at least one")
    return rows


class Rows:
    """A request's rows as sent, checked but not made into a frame.

    The lean request path reads the values straight from the parsed JSON (`column`); `frame`
    builds the frame of objects the pandas path and the inference log read, with the same
    pandas calls as before this class existed (so both read exactly what they read then),
    once, and keeps it. The parsed body is shared, never changed.
    """

    __slots__ = ("_frame",)
    #: True when pandas infers each column's dtype across rows before making it objects
    #: (records): a column of ints and nulls then reads as floats (1 becomes 1.0)
    infers_dtypes = False

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def empty(self) -> bool:
        """As ``frame().empty``: no rows, or no columns."""
        raise NotImplementedError

    def column(self, name: str) -> list[Any] | None:
        """The values sent for ``name`` (None: a missing key of a record), or None when the
        column is not sent at all."""
        raise NotImplementedError

    def _build(self) -> pd.DataFrame:
        raise NotImplementedError

    _frame: pd.DataFrame  # built on first use

    def frame(self) -> pd.DataFrame:
        try:
            return self._frame
        except AttributeError:
            self._frame = self._build()
            return self._frame


class SplitRows(Rows):
    __slots__ = ("_index", "columns", "data")

    def __init__(self, columns: list[str], data: list[list[Any]]) -> None:
        self.columns, self.data = columns, data
        self._index = {name: i for i, name in enumerate(columns)}

    def __len__(self) -> int:
        return len(self.data)

    @property
    def empty(self) -> bool:
        return not self.data or not self.columns

    def column(self, name: str) -> list[Any] | None:
        i = self._index.get(name)
        return None if i is None else [row[i] for row in self.data]

    def _build(self) -> pd.DataFrame:
        return pd.DataFrame(self.data, columns=self.columns, dtype=object)


class RecordRows(Rows):
    __slots__ = ("names", "records")
    infers_dtypes = True

    def __init__(self, records: list[dict[str, Any]], names: set[str]) -> None:
        self.records, self.names = records, names

    def __len__(self) -> int:
        return len(self.records)

    @property
    def empty(self) -> bool:
        return not self.records or not self.names

    def column(self, name: str) -> list[Any] | None:
        if name not in self.names:
            return None
        return [record.get(name) for record in self.records]

    def _build(self) -> pd.DataFrame:
        return pd.DataFrame.from_records(self.records).astype(object)


class ColumnRows(Rows):
    """Columns by name, each a list of one value per row (all of one length, checked)."""

    __slots__ = ("_rows", "payload")

    def __init__(self, payload: dict[str, list[Any]], rows: int) -> None:
        self.payload, self._rows = payload, rows

    def __len__(self) -> int:
        return self._rows

    @property
    def empty(self) -> bool:
        return not self._rows or not self.payload

    def column(self, name: str) -> list[Any] | None:
        return self.payload.get(name)

    def _build(self) -> pd.DataFrame:
        return pd.DataFrame({name: pd.Series(v, dtype=object) for name, v in self.payload.items()})


class _Limits:
    """The request's size limits, checked as the body is walked, before any frame exists."""

    def __init__(self, key: str, rows: int, columns: int, cells: int) -> None:
        self.key, self.rows, self.columns, self.cells = key, rows, columns, cells

    def check(self, rows: int, columns: int, cells: int) -> None:
        key = self.key
        if rows > self.rows:
            raise InvalidInput(f"{key!r} holds {rows} rows, more than the limit of "
                               f"{self.rows}; split the request")
        if columns > self.columns:
            raise InvalidInput(f"{key!r} names {columns} columns, more than the limit of "
                               f"{self.columns}; send only the model's features")
        if cells > self.cells:
            raise InvalidInput(f"{key!r} holds {cells} values, more than the limit of "
                               f"{self.cells}; split the request or send only the model's "
                               "features")


def _from_split(payload: Any, limits: _Limits) -> SplitRows:
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
    limits.check(len(data), len(columns), len(data) * len(columns))
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            raise InvalidInput(
                f"'dataframe_split.data[{i}]' must be a list of {len(columns)} values "
                f"(one per column), but got {row!r:.80}"
            )
        _check_scalars(f"dataframe_split.data[{i}]", row)
    return SplitRows(columns, data)


def _from_records(key: str, payload: Any, limits: _Limits) -> RecordRows:
    if not isinstance(payload, list):
        raise InvalidInput(f"{key!r} must be a list of records (objects), got {_kind(payload)}")
    limits.check(len(payload), 0, 0)
    names: set[str] = set()
    cells = 0
    for i, record in enumerate(payload):
        if not isinstance(record, dict):
            raise InvalidInput(
                f"'{key}[{i}]' must be an object mapping column names to values, "
                f"but got {_kind(record)}"
            )
        names.update(record)
        cells += len(record)
        limits.check(len(payload), len(names), cells)
        _check_scalars(f"{key}[{i}]", list(record.values()))
    return RecordRows(payload, names)


def _from_columns(key: str, payload: dict, limits: _Limits) -> ColumnRows:
    lengths = set()
    limits.check(0, len(payload), 0)
    cells = 0
    for name, values in payload.items():
        if not isinstance(values, list):
            raise InvalidInput(f"'{key}.{name}' must be a list of values, got {_kind(values)}")
        cells += len(values)
        limits.check(len(values), len(payload), cells)
        _check_scalars(f"{key}.{name}", values)
        lengths.add(len(values))
    if len(lengths) > 1:
        raise InvalidInput(f"the columns of {key!r} have different lengths: {sorted(lengths)}")
    return ColumnRows(payload, lengths.pop() if lengths else 0)


def _check_scalars(where: str, values: list) -> None:
    for value in values:
        if isinstance(value, (dict, list)):
            raise InvalidInput(f"'{where}' holds a nested {_kind(value)}; values must be scalars")
        if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            raise InvalidInput(f"'{where}' holds a string of {len(value)} characters, more "
                               f"than the limit of {MAX_TEXT_CHARS}")


def _kind(value: Any) -> str:
    kinds: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    return kinds.get(type(value), repr(value)[:40])
