"""The model's input contract: feature names, kinds and category vocabularies.

Training and serving must turn raw columns into the same model input; otherwise a category
gets one code in training and another in a request. The spec is learned from the training
data, stored with the model version (as MLflow model metadata), and applied on both sides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from serve.schemas import InvalidInput

Kind = Literal["numeric", "categorical"]


def is_categorical(name: str, column: pd.Series, categorical=()) -> bool:
    """Whether `FeatureSpec.learn` makes ``column`` categorical: named so, or by its dtype
    (strings, categoricals, bools, anything not numeric)."""
    is_numeric = pd.api.types.is_numeric_dtype(column) and not isinstance(
        column.dtype, pd.CategoricalDtype
    )
    return name in categorical or not is_numeric or pd.api.types.is_bool_dtype(column)


@dataclass(frozen=True)
class FeatureSpec:
    names: tuple[str, ...]
    kinds: tuple[Kind, ...]
    #: categorical feature -> its vocabulary; values outside it become missing
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.names) != len(self.kinds):
            raise ValueError(f"{len(self.names)} names but {len(self.kinds)} kinds")
        if not self.names:
            raise ValueError("a feature spec needs at least one feature")

    @classmethod
    def learn(cls, frame: Mapping[str, pd.Series], names: tuple[str, ...],
              categorical=()) -> FeatureSpec:
        """Learn kinds and vocabularies from training data: a frame, or any mapping of
        columns (a numeric column is only asked its dtype, so it may hold no rows)."""
        kinds: list[Kind] = []
        categories: dict[str, tuple[str, ...]] = {}
        for name in names:
            column = frame[name]
            if is_categorical(name, column, categorical):
                kinds.append("categorical")
                # distinct values first, then their text (then distinct again: 1 and 1.0
                # read the same): a string per row would cost far more than the column
                values = pd.Series(column.dropna().unique()).astype("string").unique()
                categories[name] = tuple(sorted(str(v) for v in values))
            else:
                kinds.append("numeric")
        return cls(names=tuple(names), kinds=tuple(kinds), categories=categories)

    def grown_from(self, base: FeatureSpec | None) -> FeatureSpec:
        """This spec with ``base``'s category codes kept: each vocabulary is ``base``'s, in
        its order, followed by the categories new here (sorted). A model trained with
        ``base`` then reads the same codes for the categories it knew, so its trees stay
        valid (a warm start can continue them) while new categories get codes of their own.
        Categories gone from the new data keep their codes. With other names or kinds than
        ``base`` (or no base), this spec as it is."""
        if base is None or base.names != self.names or base.kinds != self.kinds:
            return self
        categories = {}
        for name, vocabulary in self.categories.items():
            known = base.categories.get(name, ())
            seen = set(known)
            categories[name] = (*known, *(v for v in vocabulary if v not in seen))
        return FeatureSpec(names=self.names, kinds=self.kinds, categories=categories)

    def extends(self, base: FeatureSpec) -> bool:
        """Whether this spec reads every column of ``base`` the same way: same names and
        kinds, and each of ``base``'s vocabularies a prefix of this one's (same codes)."""
        return base.names == self.names and base.kinds == self.kinds and all(
            self.categories.get(name, ())[: len(known)] == known
            for name, known in base.categories.items())

    def narrow(self, frame: pd.DataFrame, base: FeatureSpec) -> pd.DataFrame:
        """``frame`` (typed by this spec, which `extends` ``base``) as ``base`` types it:
        categories ``base`` does not know become missing, known ones keep their codes. A
        model trained with ``base`` (XGBoost stores its categories and refuses to continue
        on data with more) reads it as it read its own data."""
        out = {}
        for name, kind in zip(self.names, self.kinds, strict=True):
            column = frame[name]
            if kind == "categorical" and self.categories[name] != base.categories[name]:
                known = len(base.categories[name])
                codes = column.cat.codes.to_numpy()
                column = pd.Series(pd.Categorical.from_codes(
                    np.where(codes < known, codes, -1), categories=list(base.categories[name])),
                    index=frame.index)
            out[name] = column
        return pd.DataFrame(out, index=frame.index)

    def frame(self, data: pd.DataFrame) -> pd.DataFrame:
        """Select, order and type the model's columns; raise `InvalidInput` on what cannot be."""
        missing = [name for name in self.names if name not in data.columns]
        if missing:
            raise InvalidInput(
                f"missing feature column(s) {missing}; the model expects {list(self.names)}"
            )
        columns: dict[str, Any] = {}
        for name, kind in zip(self.names, self.kinds, strict=True):
            column = data[name]
            if kind == "numeric":
                columns[name] = _numeric(name, column)
            else:
                text = column.astype("string")
                columns[name] = pd.Categorical(text, categories=list(self.categories[name]))
        return pd.DataFrame(columns, index=data.index)

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "kinds": list(self.kinds),
            "categories": {k: list(v) for k, v in self.categories.items()},
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FeatureSpec:
        return cls(
            names=tuple(raw["names"]),
            kinds=tuple(raw["kinds"]),
            categories={k: tuple(v) for k, v in raw.get("categories", {}).items()},
        )

    def example(self) -> dict[str, Any]:
        """One plausible input row, for docs, smoke tests and curl examples."""
        row: dict[str, Any] = {}
        for name, kind in zip(self.names, self.kinds, strict=True):
            vocab = self.categories.get(name, ())
            row[name] = (vocab[0] if vocab else None) if kind == "categorical" else 0.0
        return row


def _numeric(name: str, column: pd.Series) -> np.ndarray:
    if pd.api.types.is_bool_dtype(column) or not (
        pd.api.types.is_numeric_dtype(column) or column.dtype == object
    ):
        raise InvalidInput(f"feature {name!r} must be numeric, but got dtype {column.dtype}")
    # a value beyond float32 becomes an infinity, which callers refuse by name (training:
    # `retrain.data`; serving checks ranges before this), so numpy's warning adds nothing
    if pd.api.types.is_numeric_dtype(column):
        with np.errstate(over="ignore"):
            return column.to_numpy(dtype=np.float32, na_value=np.nan)
    bad = [v for v in column if v is not None and not _is_number(v)]
    if bad:
        raise InvalidInput(f"feature {name!r} must be numeric, but got {bad[0]!r}")
    with np.errstate(over="ignore"):
        return column.astype("float64").to_numpy(dtype=np.float32, na_value=np.nan)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
