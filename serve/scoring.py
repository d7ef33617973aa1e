"""From a request's rows to its predictions: the lean path and the pandas path.

The pandas path (`shape_frame`, then the model's ``predict`` on the frame) is what every
request took before: it builds a one-row DataFrame, types each column with
`FeatureSpec.frame` and hands pandas categoricals to XGBoost, which re-codes them by name
against the categories stored in the model. On a single row that costs several times the
prediction itself (issue 13 measured 2.7 ms for the frame and 2.5 ms for predicting on it).

The lean path (`LeanEncoder`) reads the parsed JSON values straight into a float32 row block
in the booster's feature order, each category already coded as the booster codes it, and
predicts with ``inplace_predict`` on that block. It takes a request only where it gives the
pandas path's answer bit for bit (tests/unit/test_lean_path.py checks that on random bodies):
anything it is not sure of (a value that is not a number where one is expected, an
infinite value, a row with no feature, a column missing, a records body in which pandas
would turn the ints of a categorical column into floats, a large batch) goes to the pandas
path, which answers it, or refuses it with the message it always gave. So the validation
is the pandas path's, unchanged; the lean path only skips pandas for requests it accepts.

No Ray and no MLflow here: the replica (serve/versions/) and the evaluator's latency
guardrail (retrain/evaluate.py) both score through `Scorer`, so the guardrail times what a
caller waits for.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from serve.features import FeatureSpec
from serve.loader import LoadedModel
from serve.schemas import InvalidInput, Rows, parse_rows

#: requests of more rows than this take the pandas path. benchmarks/request_path.py, one
#: run on the 2-core dev box: lean 13x faster at 1 row, 4.7x at 100, 1.2x at 1,000, and
#: 0.8x at 5,000 rows (its per-value Python loop loses to pandas' vectorised typing there)
LEAN_MAX_ROWS = 1000
#: the booster's types for a numeric feature (XGBoost's names); categorical is "c"
_NUMERIC_TYPES = frozenset({"float", "q", "int", "i"})
#: the signed 64-bit range: ints outside it change how pandas infers a records column
_INT64 = (-(2**63), 2**63 - 1)


def shape_frame(spec: FeatureSpec, raw: pd.DataFrame, *,
                allow_all_missing_rows: bool = False) -> pd.DataFrame:
    """The pandas path's typing: ``raw`` (a frame of objects, as parsed) as the model's
    columns; `InvalidInput` naming what the caller got wrong."""
    if not allow_all_missing_rows:
        refuse_empty_rows(raw, spec.names)
    try:
        with np.errstate(over="ignore"):  # beyond float32: inf, refused just below
            frame = spec.frame(raw)
    except InvalidInput:
        raise
    except Exception as exc:  # e.g. an integer too large for a float: still the input
        raise InvalidInput(f"the features cannot be read: {_describe(exc)}") from exc
    for name, kind in zip(spec.names, spec.kinds, strict=True):
        # Infinity (or a number beyond float32, which becomes it) is refused here for
        # every flavour: scikit-learn raises on it, which would read as a model failure.
        if kind == "numeric" and np.isinf(frame[name].to_numpy()).any():
            raise InvalidInput(f"feature {name!r} must be a finite number or null (missing), "
                               "but got an infinite or out-of-range value")
    return frame


def refuse_empty_rows(raw: pd.DataFrame, names: tuple[str, ...]) -> None:
    """`InvalidInput` naming the first row in which every feature is absent or null."""
    present = [name for name in names if name in raw.columns]
    if len(present) < len(names):
        return  # spec.frame names the missing columns, a clearer message
    empty = raw[present].isna().all(axis=1).to_numpy()
    if empty.any():
        rows = np.flatnonzero(empty)
        more = f" (and {len(rows) - 1} more)" if len(rows) > 1 else ""
        raise InvalidInput(
            f"row {int(rows[0])}{more} has none of the model's features {list(names)}: every "
            "one is missing or null, so there is nothing to predict from. Send at least one "
            "feature per row (or set serving.allow_all_missing_rows: true)")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def _category_key(value: Any) -> str | None:
    """The text pandas' ``astype("string")`` makes of one parsed JSON value (None: missing)."""
    if type(value) is str:
        return value
    if value is None or (type(value) is float and value != value):
        return None
    return str(value)  # ints, floats and bools: what pandas writes for them


class LeanEncoder:
    """A model's request rows straight into the float32 block its booster reads.

    Built once per loaded version; `encode` returns None for every request it leaves to the
    pandas path (see the module docstring). `for_model` returns None for a model it cannot
    serve exactly as the pandas path does: not an XGBoost booster, a booster whose feature
    names or types are not the spec's, or one whose stored categories lack a category of
    the spec's vocabulary (the pandas path fails on every request there; it stays so)."""

    def __init__(self, spec: FeatureSpec, codes: Sequence[dict[str, float] | None],
                 max_rows: int = LEAN_MAX_ROWS) -> None:
        self.spec = spec
        #: per feature: None for a number, else category text -> the booster's code
        self.codes = tuple(codes)
        self.max_rows = max_rows
        self._numeric = np.array([c is None for c in self.codes])

    @classmethod
    def for_model(cls, model: LoadedModel, max_rows: int = LEAN_MAX_ROWS) -> LeanEncoder | None:
        if model.flavor != "xgboost":
            return None  # scikit-learn pipelines read frames
        booster, spec = model.booster, model.spec
        names = getattr(booster, "feature_names", None)
        types = getattr(booster, "feature_types", None)
        if names is None or list(names) != list(spec.names) or types is None:
            return None  # the block's column order could not be checked
        read = _stored_categories(booster)
        if not (read is None or isinstance(read, dict)):
            return None  # _UNREADABLE
        stored: dict[str, list[str] | None] | None = read
        codes: list[dict[str, float] | None] = []
        for name, kind, typ in zip(spec.names, spec.kinds, types, strict=True):
            if kind == "numeric":
                if typ not in _NUMERIC_TYPES:
                    return None
                codes.append(None)
                continue
            if typ != "c":
                return None
            vocabulary = spec.categories.get(name, ())
            known = stored.get(name) if stored else None
            if stored and known is None:
                return None
            if known is None:
                # No categories stored (a model from before XGBoost 3.1): XGBoost reads a
                # pandas categorical's codes as they are, the vocabulary's positions.
                codes.append({v: float(i) for i, v in enumerate(vocabulary)})
                continue
            # XGBoost 3.1+ stores the training categories and re-codes a pandas categorical
            # by name to their positions: the block must hold those positions.
            position = {v: i for i, v in enumerate(known)}
            if any(v not in position for v in vocabulary):
                return None
            codes.append({v: float(position[v]) for v in vocabulary})
        return cls(spec, codes, max_rows)

    def encode(self, rows: Rows, *, allow_all_missing_rows: bool = False) -> np.ndarray | None:
        """The request's float32 block, or None to let the pandas path take it."""
        n = len(rows)
        if n > self.max_rows or n == 0:
            return None
        block = np.empty((n, len(self.codes)), dtype=np.float64)
        present = np.zeros(n, dtype=bool)
        nan = math.nan
        for j, (name, codes) in enumerate(zip(self.spec.names, self.codes, strict=True)):
            values = rows.column(name)
            if values is None:
                return None  # the pandas path names the missing column
            if codes is None:
                for i, v in enumerate(values):
                    t = type(v)
                    if t is float:
                        block[i, j] = v
                        present[i] |= v == v
                    elif t is int:
                        try:
                            block[i, j] = float(v)
                        except OverflowError:
                            return None
                        present[i] = True
                    elif v is None:
                        block[i, j] = nan
                    else:
                        return None  # not a number: the pandas path says so
            else:
                if rows.infers_dtypes and n > 1 and _ints_may_become_floats(values):
                    return None
                for i, v in enumerate(values):
                    key = _category_key(v)
                    if key is None:
                        block[i, j] = nan
                    else:
                        block[i, j] = codes.get(key, nan)  # outside the vocabulary: missing
                        present[i] = True
        if not allow_all_missing_rows and not present.all():
            return None
        # float64 first, then float32: the pandas path's own two steps (astype("float64"),
        # then to float32), so every number rounds exactly as it did there
        with np.errstate(over="ignore"):
            out = block.astype(np.float32)
        if np.isinf(out[:, self._numeric]).any():
            return None
        return out


_UNREADABLE = object()


def _stored_categories(booster: Any) -> dict[str, list[str] | None] | object | None:
    """Feature -> the categories the booster stores (None for a numeric feature); None when it
    stores none; `_UNREADABLE` when they cannot be read."""
    get = getattr(booster, "get_categories", None)
    if get is None:
        return None  # XGBoost before 3.1: no stored categories, no re-coding
    try:
        categories = get(export_to_arrow=True)
        if categories.empty():
            return None
        return {name: None if values is None else [str(v) for v in values.to_pylist()]
                for name, values in categories.to_arrow()}
    except Exception:  # an unexpected layout: the pandas path stays exact
        return _UNREADABLE


def _ints_may_become_floats(values: list[Any]) -> bool:
    """Whether pandas, inferring a records column's dtype, might read its ints as floats or
    as another integer type: ints beside any other value (a float, a null, a missing key),
    or ints outside int64. Only then does a category's text depend on the whole column."""
    ints = [v for v in values if type(v) is int]
    if not ints:
        return False
    return len(ints) != len(values) or not all(_INT64[0] <= v <= _INT64[1] for v in ints)


class Scorer:
    """One model's request path: rows (parsed JSON, or a frame) to checked predictions."""

    def __init__(self, model: LoadedModel, *, allow_all_missing_rows: bool = False,
                 lean: bool = True, lean_max_rows: int = LEAN_MAX_ROWS) -> None:
        self.model = model
        self.allow_all_missing_rows = allow_all_missing_rows
        self.encoder = LeanEncoder.for_model(model, lean_max_rows) if lean else None

    def shape(self, rows: Rows | pd.DataFrame) -> np.ndarray | pd.DataFrame:
        """The model's input: a float32 block (lean) or a typed frame; `InvalidInput` when the
        caller's rows cannot be read."""
        if self.encoder is not None and isinstance(rows, Rows):
            try:
                block = self.encoder.encode(rows,
                                            allow_all_missing_rows=self.allow_all_missing_rows)
            except Exception:  # a value it did not foresee: the pandas path judges it
                block = None
            if block is not None:
                return block
        raw = rows.frame() if isinstance(rows, Rows) else rows
        return shape_frame(self.model.spec, raw,
                           allow_all_missing_rows=self.allow_all_missing_rows)

    def predict(self, shaped: np.ndarray | pd.DataFrame) -> np.ndarray:
        """Predictions for `shape`'s output, checked: one finite float per row."""
        if isinstance(shaped, np.ndarray):
            scores = np.asarray(self.model.booster.inplace_predict(shaped), dtype=np.float64)
        else:
            scores = np.asarray(self.model.predict(shaped), dtype=np.float64)
        rows = len(shaped)
        if scores.shape != (rows,):
            raise ValueError(f"the model returned {scores.shape} predictions for {rows} rows")
        if not np.isfinite(scores).all():
            raise ValueError("the model returned a non-finite prediction")
        return scores

    def score(self, rows: Rows | pd.DataFrame) -> np.ndarray:
        return self.predict(self.shape(rows))

    def score_body(self, raw: bytes | pd.DataFrame) -> np.ndarray:
        """A whole ``/invocations`` body as the replica reads it: JSON, rows, predictions
        (the evaluator's guardrail times this; a frame is scored as it is)."""
        if isinstance(raw, pd.DataFrame):
            return self.score(raw)
        return self.score(parse_rows(json.loads(raw)))


def concat(shaped: list[np.ndarray | pd.DataFrame]) -> np.ndarray | pd.DataFrame:
    """Several requests' model inputs of one kind as one (a batch)."""
    if isinstance(shaped[0], np.ndarray):
        return np.concatenate(shaped)
    return pd.concat(shaped, ignore_index=True)


def request_body(frame: pd.DataFrame, names: Sequence[str]) -> bytes | pd.DataFrame:
    """``frame``'s ``names`` columns as a ``dataframe_split`` body, nulls as JSON null; the
    frame itself when a value has no JSON form (then it is scored as a frame)."""
    columns = []
    for name in names:
        column = frame[name].astype(object)
        columns.append(column.where(column.notna(), None).tolist())
    data = [list(row) for row in zip(*columns, strict=True)]
    try:
        return json.dumps({"dataframe_split": {"columns": list(names), "data": data}},
                          default=_native).encode()
    except (TypeError, ValueError):
        return frame


def _native(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} has no JSON form")


__all__ = ["LEAN_MAX_ROWS", "LeanEncoder", "Scorer", "concat", "refuse_empty_rows",
           "request_body", "shape_frame"]
