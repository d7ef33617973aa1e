"""The reference sketch of a model's training data: per feature, equal-frequency bins and exact
percentiles (numeric) or the top-K categories (categorical), a few KB, JSON-safe.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd

from retrain.errors import InvalidValueError

Kind = Literal["numeric", "categorical"]

OTHER = "__other__"  # the pooled bucket of categories beyond the reference's top K
UNSEEN = "__unseen__"  # the bucket of new values outside a complete reference vocabulary
FORMAT = 1  # version of the to_dict layout, for readers of sketches stored long ago




class _Counted:
    """Row counts shared by both sketch kinds (``count`` includes the missing rows)."""

    count: int
    missing: int

    @property
    def valid(self) -> int:
        return self.count - self.missing

    @property
    def missing_rate(self) -> float:
        return self.missing / self.count if self.count else 0.0


@dataclass(frozen=True)
class NumericSketch(_Counted):
    """A numeric reference column: counts between its quantiles, and its moments.

    ``grid`` holds the reference quantiles at levels 1/R .. (R-1)/R; a value with a large
    mass repeats (kept, so that every sketch of a reference has the same shape). ``counts``
    has one cell more: cell j counts reference values in (grid[j-1], grid[j]], with -inf and
    +inf outside, so the reference CDF is known *exactly* at every grid point (the KS test
    uses it). The ``bins`` PSI bins are equal-frequency: their edges are every (R/bins)-th
    grid point, so bins are unions of cells.
    """

    grid: tuple[float, ...]
    counts: tuple[int, ...]
    bins: int
    missing: int
    count: int  # rows, missing included
    min: float | None
    max: float | None
    mean: float | None
    std: float | None

    kind: Kind = field(default="numeric", init=False)

    @cached_property  # read on every comparison, for `Shares`
    def edges(self) -> tuple[float, ...]:
        """Inner PSI bin edges, de-duplicated (the outer edges are -inf and +inf)."""
        return tuple(sorted(set(self._edges.tolist())))

    @property
    def bin_edges(self) -> tuple[float, ...]:
        return (-math.inf, *self.edges, math.inf)

    @property
    def shares(self) -> tuple[float, ...]:
        """The reference share of each bin between `bin_edges`."""
        at = np.searchsorted(self.grid_array, self.edges, side="right") - 1
        cdf = np.concatenate(([0.0], self.cdf[at], [1.0 if self.valid else 0.0]))
        return tuple(np.diff(cdf).tolist())

    # Arrays for the statistics, made once per sketch (the tuples keep the sketch hashable
    # and comparable; cached_property writes past the frozen __setattr__).
    @cached_property
    def grid_array(self) -> np.ndarray:
        return np.asarray(self.grid, dtype=np.float64)

    @cached_property
    def _cells(self) -> np.ndarray:
        return np.asarray(self.counts, dtype=np.float64)

    @cached_property
    def edge_index(self) -> np.ndarray:
        """Grid positions of the PSI edges (repeats included)."""
        step = (len(self.grid) + 1) // self.bins
        if step == 0:
            return np.zeros(0, dtype=np.intp)  # no grid: the reference had no values
        return np.arange(step - 1, len(self.grid), step)[: self.bins - 1]

    @cached_property
    def _edges(self) -> np.ndarray:
        return self.grid_array[self.edge_index]

    @cached_property
    def distinct_bins(self) -> tuple[int, ...] | None:
        """Positions of the PSI bins of non-zero width (None: all), the bins of `edges`."""
        # bin i > 0 is (edge[i-1], edge[i]]: empty on both sides when the two edges are equal
        wide = np.diff(self._edges) > 0
        return None if wide.all() else (0, *(np.flatnonzero(wide) + 1).tolist(), len(wide) + 1)

    @cached_property
    def cdf(self) -> np.ndarray:
        """The reference CDF at each grid point."""
        return np.cumsum(self._cells[:-1]) / max(self.valid, 1)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["grid"] = [_json_number(v) for v in self.grid]
        out["counts"] = list(self.counts)
        out["min"], out["max"] = _json_number(self.min), _json_number(self.max)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> NumericSketch:
        def number(value: Any) -> float | None:
            return None if value is None else float(value)  # float("inf") reads "inf"

        return cls(
            grid=tuple(float(v) for v in raw["grid"]),
            counts=tuple(int(v) for v in raw["counts"]),
            bins=int(raw["bins"]),
            missing=int(raw["missing"]),
            count=int(raw["count"]),
            min=number(raw["min"]),
            max=number(raw["max"]),
            mean=number(raw["mean"]),
            std=number(raw["std"]),
        )


def _json_number(value: float | None) -> float | str | None:
    """A float for JSON, which has no infinity: a column may hold -inf or inf."""
    if value is None or math.isfinite(value):
        return value
    return str(value)  # "inf" or "-inf"; float() reads them back


@dataclass(frozen=True)
class CategoricalSketch(_Counted):
    """A categorical reference column: counts of its top-K categories, the rest pooled."""

    values: tuple[str, ...]  # the top K categories, most frequent first
    counts: tuple[int, ...]
    other: int  # values beyond the top K, pooled into OTHER
    missing: int
    count: int  # rows, missing included

    kind: Kind = field(default="categorical", init=False)

    @property
    def complete(self) -> bool:
        """Whether the sketch holds the whole vocabulary, so that a new value is "unseen".

        When the top K pooled the rest, a value outside it may be a rare known one: it then
        counts as OTHER, and a growing OTHER still shows in chi-square and JS.
        """
        return self.other == 0

    @property
    def frequencies(self) -> dict[str, float]:
        total = max(self.valid, 1)
        out = {v: c / total for v, c in zip(self.values, self.counts, strict=True)}
        if self.other:
            out[OTHER] = self.other / total
        return out

    @cached_property
    def table(self) -> np.ndarray:
        """Reference counts in the layout of the new data's: values..., other, unseen (0)."""
        return np.asarray([*self.counts, self.other, 0], dtype=np.float64)

    @cached_property
    def index(self) -> pd.Index:
        """Category -> slot lookup for many keys, made once per sketch."""
        return pd.Index(self.values, dtype=object)

    @cached_property
    def slot(self) -> dict[str, int]:
        """Category -> slot lookup for a few keys (a dict beats pandas' setup below ~1000)."""
        return {value: i for i, value in enumerate(self.values)}

    def slots(self, keys: np.ndarray) -> np.ndarray:
        """The slot of each key, -1 for a key outside the sketch's values."""
        if len(keys) <= 1000:
            slot = self.slot
            return np.array([slot.get(k, -1) for k in keys.tolist()], dtype=np.intp)
        # An Index, not an array: get_indexer would infer the array's type.
        return self.index.get_indexer(pd.Index(keys, dtype=object))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["values"], out["counts"] = list(self.values), list(self.counts)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CategoricalSketch:
        return cls(
            values=tuple(str(v) for v in raw["values"]),
            counts=tuple(int(v) for v in raw["counts"]),
            other=int(raw["other"]),
            missing=int(raw["missing"]),
            count=int(raw["count"]),
        )


Sketch = NumericSketch | CategoricalSketch


def _sketch_from_dict(raw: dict[str, Any]) -> Sketch:
    kind = raw.get("kind")
    if kind == "numeric":
        return NumericSketch.from_dict(raw)
    if kind == "categorical":
        return CategoricalSketch.from_dict(raw)
    raise InvalidValueError(f"unknown sketch kind {kind!r}; expected 'numeric' or 'categorical'")


@dataclass(frozen=True)
class ReferenceSketch:
    """Per-feature sketches of a model's training data, stored with the model version."""

    features: dict[str, Sketch]
    rows: int
    target: str | None = None
    target_sketch: Sketch | None = None

    def __post_init__(self) -> None:
        if not self.features:
            raise InvalidValueError("a reference sketch needs at least one feature")
        if (self.target is None) != (self.target_sketch is None):
            raise InvalidValueError("target and target_sketch go together")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.features)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "rows": self.rows,
            "features": {name: s.to_dict() for name, s in self.features.items()},
            "target": self.target,
            "target_sketch": None if self.target_sketch is None else self.target_sketch.to_dict(),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ReferenceSketch:
        if raw.get("format") != FORMAT:
            raise InvalidValueError(
                f"reference sketch format {raw.get('format')!r}; this reads {FORMAT}")
        target = raw.get("target_sketch")
        return cls(
            features={name: _sketch_from_dict(s) for name, s in raw["features"].items()},
            rows=int(raw["rows"]),
            target=raw.get("target"),
            target_sketch=None if target is None else _sketch_from_dict(target),
        )
