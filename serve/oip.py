"""The Open Inference Protocol (KServe v2) over HTTP/JSON: request bodies and answers.

    POST /v2/models/{name}/infer
    {"id": "optional", "inputs": [{"name": "x1", "shape": [2], "datatype": "FP64",
                                   "data": [0.3, 1.2]}, ...]}

Two input layouts are read:

- one input per feature column, each of shape ``[n]`` or ``[n, 1]`` (any order; features
  the model does not use are ignored), the layout for models that mix numbers and
  categories (``BYTES``);
- one 2-D input of shape ``[n, k]`` whose columns are the model's ``k`` features in order.

``data`` is the tensor flattened in row-major order (nested lists are flattened too). The
answer has one output, ``predict``: FP64, shape ``[n]`` (P(class 1), or the regression
value). Pure: no Ray, no MLflow; a body that cannot be used raises `InvalidInput`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from serve.features import FeatureSpec
from serve.schemas import MAX_CELLS, MAX_COLUMNS, MAX_TEXT_CHARS, ColumnRows, InvalidInput, Rows

OUTPUT = "predict"
_NUMERIC = {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
            "FP16", "FP32", "FP64"}
DATATYPES = frozenset(_NUMERIC | {"BOOL", "BYTES"})
_REQUEST_KEYS = {"id", "parameters", "inputs", "outputs"}
_INPUT_KEYS = {"name", "shape", "datatype", "data", "parameters"}
_EXAMPLE = ('{"inputs": [{"name": "x1", "shape": [1], "datatype": "FP64", "data": [0.3]}, '
            '...]}')


@dataclass(frozen=True)
class InferRequest:
    """A parsed infer body: its optional id and the rows as sent (before feature typing)."""

    id: str | None
    parsed: Rows

    @property
    def rows(self) -> pd.DataFrame:
        """The rows as a frame of objects (what the pandas path reads)."""
        return self.parsed.frame()


def parse_infer(body: Any, names: Sequence[str], *, max_rows: int,
                max_columns: int = MAX_COLUMNS, max_cells: int = MAX_CELLS) -> InferRequest:
    """Read an infer body for a model whose features are ``names`` (in order)."""
    if not isinstance(body, dict):
        raise InvalidInput(f"expected a JSON object like {_EXAMPLE}, but got a JSON "
                           f"{_json_type(body)}")
    unknown = sorted(set(body) - _REQUEST_KEYS)
    if unknown:
        raise InvalidInput(f"unknown key(s) {unknown} in an infer request; expected some of "
                           f"{sorted(_REQUEST_KEYS)}")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, but got {request_id!r:.60}")
    if request_id is not None and len(request_id) > 256:
        raise InvalidInput(f"'id' is {len(request_id)} characters long, more than 256")
    if "parameters" in body and not isinstance(body["parameters"], dict):
        raise InvalidInput("'parameters' must be an object")
    _check_outputs(body.get("outputs"))
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput(f"'inputs' must be a non-empty list of tensors like {_EXAMPLE}")
    if len(inputs) > max_columns:
        raise InvalidInput(f"'inputs' holds {len(inputs)} tensors, more than the limit of "
                           f"{max_columns}; send only the model's features")
    tensors, cells = [], 0
    for i, item in enumerate(inputs):  # sizes are checked before any frame is built
        tensors.append(_tensor(i, item))
        cells += len(tensors[-1].data)
        if cells > max_cells:
            raise InvalidInput(f"the inputs hold more than {max_cells} values, the limit; "
                               "split the request")
    rows: Rows
    if len(tensors) == 1 and _is_matrix(tensors[0], names):
        rows = _from_matrix(tensors[0], names)
    else:
        rows = _from_columns(tensors)
    if len(rows) > max_rows:
        raise InvalidInput(f"the inputs hold {len(rows)} rows, more than the limit of "
                           f"{max_rows}; split the request")
    return InferRequest(request_id, rows)


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]
    datatype: str
    data: list[Any]


def _tensor(i: int, item: Any) -> _Tensor:
    where = f"inputs[{i}]"
    if not isinstance(item, dict):
        raise InvalidInput(f"{where} must be an object with name, shape, datatype and data, "
                           f"but got a JSON {_json_type(item)}")
    unknown = sorted(set(item) - _INPUT_KEYS)
    missing = [k for k in ("name", "shape", "datatype", "data") if k not in item]
    if unknown or missing:
        raise InvalidInput(f"{where} must have name, shape, datatype and data (and optional "
                           f"parameters); missing {missing}, unknown {unknown}")
    name, shape, datatype = item["name"], item["shape"], item["datatype"]
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{where}.name must be a non-empty string, but got {name!r:.60}")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 2
            or not all(_is_int(d) and d >= 0 for d in shape)):
        raise InvalidInput(f"{where}.shape must be [rows] or [rows, columns] (integers >= 0), "
                           f"but got {shape!r:.60}")
    if datatype not in DATATYPES:
        raise InvalidInput(f"{where}.datatype must be one of {sorted(DATATYPES)}, but got "
                           f"{datatype!r:.40}")
    if "parameters" in item and not isinstance(item["parameters"], dict):
        raise InvalidInput(f"{where}.parameters must be an object")
    data = _flat(where, item["data"])
    expected = math.prod(shape)
    if len(data) != expected:
        raise InvalidInput(f"{where} has shape {shape}, so {expected} values, but its data "
                           f"holds {len(data)}")
    for value in data:
        _check_value(where, datatype, value)
    return _Tensor(name, tuple(shape), datatype, data)


def _flat(where: str, data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise InvalidInput(f"{where}.data must be a list, but got a JSON {_json_type(data)}")
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    for row in data:  # one level of nesting: a 2-D tensor written row by row
        if not isinstance(row, list) or any(isinstance(v, (list, dict)) for v in row):
            raise InvalidInput(f"{where}.data must be flat, or a list of rows of scalars")
        flat.extend(row)
    return flat


def _check_value(where: str, datatype: str, value: Any) -> None:
    if value is None:
        return  # a missing value
    if datatype == "BYTES":
        ok = isinstance(value, str)
        if ok and len(value) > MAX_TEXT_CHARS:
            raise InvalidInput(f"{where}.data holds a string of {len(value)} characters, more "
                               f"than the limit of {MAX_TEXT_CHARS}")
    elif datatype == "BOOL":
        ok = isinstance(value, bool)
    elif datatype.startswith(("INT", "UINT")):
        ok = _is_int(value)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise InvalidInput(f"{where}.data holds {value!r:.40}, which is not {datatype}")


def _is_matrix(tensor: _Tensor, names: Sequence[str]) -> bool:
    """A single 2-D input holds all features, unless it is one [n, 1] feature column."""
    return len(tensor.shape) == 2 and (tensor.shape[1] != 1 or tensor.name not in names)


class MatrixRows(Rows):
    """One 2-D tensor whose columns are the model's features in order (row-major data)."""

    __slots__ = ("_index", "_rows", "data", "names")

    def __init__(self, names: Sequence[str], data: list[Any], rows: int) -> None:
        self.names, self.data, self._rows = list(names), data, rows
        self._index = {name: j for j, name in enumerate(self.names)}

    def __len__(self) -> int:
        return self._rows

    @property
    def empty(self) -> bool:
        return not self._rows or not self.names

    def column(self, name: str) -> list[Any] | None:
        j = self._index.get(name)
        return None if j is None else self.data[j::len(self.names)]

    def _build(self) -> pd.DataFrame:
        data = np.array(self.data, dtype=object).reshape(self._rows, len(self.names))
        return pd.DataFrame(data, columns=self.names, dtype=object)


def _from_matrix(tensor: _Tensor, names: Sequence[str]) -> MatrixRows:
    rows, columns = tensor.shape
    if columns != len(names):
        raise InvalidInput(
            f"a 2-D input must have one column per feature: shape [rows, {len(names)}] for "
            f"{list(names)}, but got {list(tensor.shape)}; or send one input per feature")
    _check_rows(rows)
    return MatrixRows(names, tensor.data, rows)


def _from_columns(tensors: list[_Tensor]) -> ColumnRows:
    seen: set[str] = set()
    rows: set[int] = set()
    for t in tensors:
        if t.name in seen:
            raise InvalidInput(f"input {t.name!r} is sent twice")
        seen.add(t.name)
        if len(t.shape) == 2 and t.shape[1] != 1:
            raise InvalidInput(f"input {t.name!r} has shape {list(t.shape)}; with one input "
                               "per feature each must be [rows] or [rows, 1]")
        rows.add(t.shape[0])
    if len(rows) > 1:
        raise InvalidInput(f"the inputs have different numbers of rows: {sorted(rows)}")
    count = rows.pop()
    _check_rows(count)
    return ColumnRows({t.name: t.data for t in tensors}, count)


def _check_rows(rows: int) -> None:
    if rows < 1:
        raise InvalidInput("the inputs hold no rows; send at least one")


def _check_outputs(outputs: Any) -> None:
    if outputs is None:
        return
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and o.get("name") == OUTPUT and set(o) <= {"name", "parameters"}
        for o in outputs
    ):
        raise InvalidInput(f"'outputs' may only ask for [{{\"name\": \"{OUTPUT}\"}}], the one "
                           "output of this model")


def infer_response(model_name: str, version: str, request_id: str,
                   predictions: np.ndarray) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "model_version": version,
        "id": request_id,
        "outputs": [{"name": OUTPUT, "shape": [len(predictions)], "datatype": "FP64",
                     "data": predictions.tolist()}],
    }


def model_metadata(model_name: str, versions: Sequence[str], spec: FeatureSpec,
                   platform: str) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the inputs it reads (numbers as FP64, categories as BYTES)."""
    return {
        "name": model_name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [{"name": name, "datatype": "BYTES" if kind == "categorical" else "FP64",
                    "shape": [-1]} for name, kind in zip(spec.names, spec.kinds, strict=True)],
        "outputs": [{"name": OUTPUT, "datatype": "FP64", "shape": [-1]}],
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")
