"""Data drift against a compact reference sketch of the training data.

When a model version is registered, `build_reference` condenses its training data into a
`ReferenceSketch` (a few KB per feature, JSON-safe) that is stored with the version. New data
partitions (before training) and live inputs are then compared against the sketch, never
against a stored copy of the raw training data:

- numeric features: PSI on equal-frequency reference bins, and a two-sample KS test evaluated
  at the reference's percentiles (where the reference CDF is stored exactly);
- categorical features: a chi-square test of homogeneity and the Jensen-Shannon distance over
  the reference's top-K categories, and the share of categories the reference never saw;
- every feature: the change of its missing rate.

A feature drifts when its test is significant after Benjamini-Hochberg across all features
*and* the effect is material (PSI or JS distance over a threshold), or when its missing rate
or unseen-category share moves past a limit. The effect-size condition matters: on millions of
rows every trivial difference is significant, and an alarm nobody acts on is noise.

New data is reduced to counts, vectorised: numeric columns are sorted in blocks of bounded
size and the reference quantiles looked up in them; categorical columns are tallied once.
Memory is one block plus the sketches. `StreamingDrift` adds the same counts up over a sliding
window of live rows.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import special

from retrain import shift
from retrain.errors import InvalidValueError

Kind = Literal["numeric", "categorical"]

OTHER = "__other__"  # the pooled bucket of categories beyond the reference's top K
UNSEEN = "__unseen__"  # the bucket of new values outside a complete reference vocabulary
#: categories kept per categorical feature in `Shares` (the rest pooled into OTHER): a person
#: reads about 20 bars, and the report's JSON stays small when top_k is 200
_SHOWN_CATEGORIES = 20
FORMAT = 1  # version of the to_dict layout, for readers of sketches stored long ago
_MIN_EXPECTED = 5.0  # chi-square cells expected below this are pooled (the usual rule)
#: numeric columns are copied and sorted in blocks of about this size: bounded memory on
#: millions of rows, and on small frames one vectorised step per block, not per column
_BLOCK_BYTES = 16 * 2**20
# searchsorted probes into a sorted column: -inf's end, finite end, non-missing end
_PROBES = np.array([-np.finfo(np.float64).max, np.inf, np.nan])


# --------------------------------------------------------------------------------------------
# Sketches
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Reading columns
# --------------------------------------------------------------------------------------------


def _is_categorical(dtype: Any) -> bool:
    # Same rule as serve.features.FeatureSpec.learn: strings, categories and bools are
    # categorical; a numeric code is categorical only when named so.
    return (isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(dtype)
            or not pd.api.types.is_numeric_dtype(dtype))


def _numeric_values(name: str, column: pd.Series) -> np.ndarray:
    dtype = column.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "fiu":
        return column.to_numpy()  # plain numpy: NaN is the missing value already; no copy
    if _is_categorical(dtype):
        raise InvalidValueError(f"feature {name!r} is numeric in the reference but has dtype "
                                f"{column.dtype}")
    return column.to_numpy(dtype=np.float64, na_value=np.nan)  # no copy for float64


def _columns(frame: pd.DataFrame, names: Iterable[str]) -> dict[str, pd.Series]:
    """The named columns, in one pass: frame[name] costs ~25 us a column on small frames."""
    wanted = set(names)
    return {name: column for name, column in frame.items() if name in wanted}


def _sorted_blocks(columns: dict[str, pd.Series],
                   names: list[str]) -> Iterator[tuple[list[str], np.ndarray]]:
    """Numeric columns as rows of a float64 block, each sorted (NaN last, +-inf at the ends)."""
    rows = len(columns[names[0]]) if names else 0
    width = max(1, _BLOCK_BYTES // max(8 * rows, 1))
    for start in range(0, len(names), width):
        chunk = names[start : start + width]
        block = np.empty((len(chunk), rows))
        for row, name in enumerate(chunk):
            block[row] = _numeric_values(name, columns[name])
        # One sort for the block; numpy's SIMD sort then binary searches of the grid in it
        # beat a binary search of every value into the grid 3x on 1M rows, 10x on 5k.
        block.sort(axis=1)
        yield chunk, block


def _keys(index: pd.Index) -> np.ndarray:
    """Category labels as strings, the same for a column read as int and as float.

    An int column with a missing value turns float in pandas; without this, 3 and 3.0 would
    be two categories.
    """
    values = index.to_numpy()
    if values.dtype.kind == "f":
        integral = np.isfinite(values) & (values == np.round(values))
        as_int = np.where(integral, values, 0).astype(np.int64).astype(str)
        return np.where(integral, as_int, values.astype(str)).astype(object)
    return np.asarray(values.astype(str), dtype=object)


def _tally(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Distinct non-missing values (as keys) and their counts."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        # The codes are counted directly: 4x faster than value_counts on small frames, and
        # model inputs are pd.Categorical after serve.features.FeatureSpec.frame.
        values = column.array  # a pd.Categorical; .cat would build Series around the parts
        categories = values.categories
        counts = np.bincount(values.codes + 1, minlength=len(categories) + 1)
        keep = counts[1:] > 0  # code -1 is missing; unused categories are no values
        return _keys(categories)[keep], counts[1:][keep]
    tally = column.value_counts(dropna=True, sort=False)
    return _keys(tally.index), tally.to_numpy(dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Building the reference
# --------------------------------------------------------------------------------------------


def _bounds(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sorted row: where the -infs end, where the finite values end, how many not NaN."""
    low, high, valid = np.array([np.searchsorted(row, _PROBES) for row in block]).T
    return low, high, valid


def _moments(block: np.ndarray, low: np.ndarray, high: np.ndarray,
             centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: sum(d) and sum(d * d) over the finite values, with d = x - centre."""
    if (low == 0).all() and (high == block.shape[1]).all():  # all finite: one step
        centred = block - centre[:, None]
        return centred.sum(axis=1), np.einsum("ij,ij->i", centred, centred)
    sums, squares = np.zeros(len(block)), np.zeros(len(block))
    for i, row in enumerate(block):
        centred = row[low[i] : high[i]] - centre[i]
        sums[i], squares[i] = centred.sum(), np.dot(centred, centred)
    return sums, squares


def _numeric_sketches(columns: dict[str, pd.Series], names: list[str], *, bins: int,
                      resolution: int) -> Iterator[tuple[str, NumericSketch]]:
    levels = np.arange(1, resolution)
    for chunk, block in _sorted_blocks(columns, names):
        low, high, valid = _bounds(block)
        # Quantiles as in method="inverted_cdf": the smallest value with CDF >= k/R, in
        # integers (no rounding at exact levels). They are data values, so a discrete
        # column's grid holds its values, and the stored CDF there is exact, ties included.
        at = np.maximum((valid[:, None] * levels + resolution - 1) // resolution - 1, 0)
        grids = np.take_along_axis(block, at, axis=1)
        cumulative = np.array([np.searchsorted(row[:v], grid, side="right")
                               for row, v, grid in zip(block, valid, grids, strict=True)])
        counts = np.diff(cumulative, axis=1, prepend=0, append=valid[:, None])
        finite = high - low
        with np.errstate(divide="ignore", invalid="ignore"):
            sums, _ = _moments(block, low, high, np.zeros(len(block)))
            means = sums / finite
            _, squares = _moments(block, low, high, np.nan_to_num(means))
            stds = np.sqrt(squares / finite)
        for i, name in enumerate(chunk):
            n, missing = int(valid[i]), block.shape[1] - int(valid[i])
            if n == 0:
                yield name, NumericSketch((), (0,), bins, missing, block.shape[1], None, None,
                                          None, None)
                continue
            sketch = NumericSketch(
                grid=tuple(grids[i].tolist()),
                counts=tuple(counts[i].tolist()),
                bins=bins,
                missing=missing,
                count=block.shape[1],
                min=float(block[i, 0]),
                max=float(block[i, n - 1]),
                mean=float(means[i]) if finite[i] else None,
                std=float(stds[i]) if finite[i] else None,
            )
            # Fill the cached arrays from what is at hand (cached_property reads __dict__).
            sketch.__dict__.update(grid_array=grids[i], cdf=cumulative[i] / n)
            yield name, sketch


def _categorical_sketch(column: pd.Series, *, top_k: int) -> CategoricalSketch:
    keys, counts = _tally(column)
    # Most frequent first, ties by label, so that the same data gives the same sketch.
    order = np.lexsort((keys.astype(str), -counts))
    keys, counts = keys[order], counts[order]
    return CategoricalSketch(
        values=tuple(str(k) for k in keys[:top_k]),
        counts=tuple(counts[:top_k].tolist()),
        other=int(counts[top_k:].sum()),
        missing=len(column) - int(counts.sum()),
        count=len(column),
    )


def _sketches(frame: pd.DataFrame, names: tuple[str, ...], categorical: tuple[str, ...], *,
              bins: int, resolution: int, top_k: int) -> dict[str, Sketch]:
    columns = _columns(frame, names)
    kinds = {n: n in categorical or _is_categorical(columns[n].dtype) for n in names}
    numeric = [n for n in names if not kinds[n]]
    out: dict[str, Sketch] = dict(_numeric_sketches(columns, numeric, bins=bins,
                                                    resolution=resolution))
    for name in names:
        if kinds[name]:
            out[name] = _categorical_sketch(columns[name], top_k=top_k)
    return {n: out[n] for n in names}  # the frame's order


def build_reference(
    frame: pd.DataFrame,
    *,
    categorical: tuple[str, ...] = (),
    target: str | None = None,
    features: tuple[str, ...] | None = None,
    bins: int = 20,
    resolution: int = 100,
    top_k: int = 200,
) -> ReferenceSketch:
    """Sketch the training data: every column but the target, unless ``features`` names them.

    String, categorical and bool columns are categorical, and so is any column named in
    ``categorical`` (name a class-label target there to sketch it by class). ``bins`` PSI
    bins and ``resolution`` KS quantiles (a multiple of ``bins``, so that the bin edges are
    grid points); ``top_k`` categories are kept per categorical feature.
    """
    if bins < 2 or resolution < bins or resolution % bins:
        raise InvalidValueError(f"need 2 <= bins <= resolution with resolution a multiple of bins; "
                                f"got bins={bins}, resolution={resolution}")
    if top_k < 1:
        raise InvalidValueError(f"top_k must be >= 1, got {top_k}")
    names = tuple(c for c in frame.columns if c != target) if features is None else features
    present = set(frame.columns)
    absent = [n for n in (*names, *([target] if target else [])) if n not in present]
    if absent:
        raise InvalidValueError(
            f"column(s) {absent} not in the frame; it has {list(frame.columns)}")
    options = dict(bins=bins, resolution=resolution, top_k=top_k)
    return ReferenceSketch(
        features=_sketches(frame, names, tuple(categorical), **options),
        rows=len(frame),
        target=target,
        target_sketch=(None if target is None
                       else _sketches(frame, (target,), tuple(categorical), **options)[target]),
    )


# --------------------------------------------------------------------------------------------
# Counting new data against a sketch
# --------------------------------------------------------------------------------------------
#
# New data becomes one float64 vector per feature, so that counts of chunks simply add up
# (`StreamingDrift`) and the statistics come from counts alone:
#   numeric:      [values <= each grid point..., valid, missing, finite, sum(d), sum(d * d)]
#                 with d = x - reference mean (centred, so that the sums stay accurate)
#   categorical:  [counts of the reference values..., other, unseen, missing]
# float64 counts are exact up to 2**53 rows.


def _count_numeric(sketches: dict[str, NumericSketch], columns: dict[str, pd.Series],
                   names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    for chunk, block in _sorted_blocks(columns, names):
        refs = [sketches[name] for name in chunk]
        low, high, valid = _bounds(block)
        sums, squares = _moments(block, low, high, np.array([s.mean or 0.0 for s in refs]))
        tail = np.stack([valid, block.shape[1] - valid, high - low, sums, squares], axis=1)
        for i, (name, sketch) in enumerate(zip(chunk, refs, strict=True)):
            at_grid = np.searchsorted(block[i, : valid[i]], sketch.grid_array, side="right")
            yield name, np.concatenate((at_grid, tail[i]), dtype=np.float64)


def _count_categorical(sketch: CategoricalSketch, column: pd.Series) -> np.ndarray:
    keys, tally = _tally(column)
    counts = tally.astype(np.float64)
    slots = sketch.slots(keys)
    known = slots >= 0
    out = np.zeros(len(sketch.values) + 3)
    # bincount, not assignment: 3 and 3.0 are one key, so two slots may coincide
    out[: len(sketch.values)] = np.bincount(slots[known], weights=counts[known],
                                            minlength=len(sketch.values))
    # A value outside a complete vocabulary is new; outside a truncated one it may be rare.
    out[-2 if sketch.complete else -3] = counts[~known].sum()
    out[-1] = len(column) - counts.sum()
    return out


def _vectors(sketches: dict[str, Sketch], frame: pd.DataFrame) -> dict[str, np.ndarray]:
    columns = _columns(frame, sketches)
    numeric = {n: s for n, s in sketches.items() if isinstance(s, NumericSketch)}
    out = dict(_count_numeric(numeric, columns, list(numeric)))
    for name, sketch in sketches.items():
        if isinstance(sketch, CategoricalSketch):
            out[name] = _count_categorical(sketch, columns[name])
    return out


# --------------------------------------------------------------------------------------------
# Policy, per-feature results, report
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftPolicy:
    """When a feature, and a dataset, count as drifted."""

    #: PSI at or above which a numeric shift is material (0.1-0.2 "moderate", > 0.2 "major")
    psi_threshold: float = 0.2
    #: JS distance (base 2, in [0, 1]) at or above which a categorical shift is material;
    #: 0.1 as in Evidently; for small shifts JS distance ~ sqrt(PSI / 5.5), so 0.1 ~ PSI 0.055
    js_threshold: float = 0.1
    alpha: float = 0.01
    #: Benjamini-Hochberg across the features' p-values: with 100 features and alpha 0.01,
    #: unadjusted tests would flag about one stationary feature per check
    fdr: bool = True
    #: the dataset drifts when the share of drifted features exceeds this (0: any feature)
    max_drifted_share: float = 0.3
    #: fewer rows than this: "insufficient data", no alarm
    min_rows: int = 100
    #: change of a feature's missing rate, either way, that is drift on its own
    missing_rate_jump: float = 0.1
    #: share of a categorical feature's values never seen in the reference that is drift
    max_unseen_share: float = 0.05

    def __post_init__(self) -> None:
        problems = []
        for name in ("psi_threshold", "js_threshold"):
            if not getattr(self, name) >= 0:
                problems.append(f"{name} must be >= 0")
        for name in ("alpha", "max_drifted_share", "missing_rate_jump", "max_unseen_share"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must be in [0, 1)")
        if self.alpha == 0:
            problems.append("alpha must be > 0")
        if self.min_rows < 1:
            problems.append("min_rows must be >= 1")
        if problems:
            raise InvalidValueError(f"invalid DriftPolicy ({self}): " + "; ".join(problems))


DEFAULT_POLICY = DriftPolicy()


@dataclass(frozen=True)
class Shares:
    """A feature's reference and new distributions, as shares of its non-missing values, for a
    person to look at (a plot); the statistics are computed from the full counts.

    numeric: over the reference's PSI bins, ``edges`` being the inner edges: bin i holds values
    in (edges[i-1], edges[i]], the first bin from -inf, the last to +inf (zero-width bins of
    repeated edges are left out). categorical: over ``categories``, the reference's most
    frequent ones (at most 20, those with the larger share on either side, in the reference's
    order), then OTHER (all the rest, the reference's pooled tail included) and UNSEEN (values
    the reference never had; 0 when its vocabulary was truncated, as they count as OTHER).
    """

    reference: tuple[float, ...]
    new: tuple[float, ...]
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        # five decimals are plenty for a bar, and keep a report of 100 features small
        return {"reference": [round(v, 5) for v in self.reference],
                "new": [round(v, 5) for v in self.new],
                "edges": [_json_number(v) for v in self.edges],
                "categories": list(self.categories)}


@dataclass(frozen=True)
class FeatureDrift:
    """Every statistic of one feature, whether it drifted, and why in words.

    Statistics that do not apply to the feature's kind, or cannot be computed (no values on
    one side), are None.
    """

    name: str
    kind: Kind
    rows: int  # non-missing new values
    drifted: bool
    #: machine-readable causes, in this order: "distribution", "missing_rate", "unseen"
    causes: tuple[str, ...]
    reason: str
    p_value: float | None  # KS (numeric) or chi-square (categorical)
    p_adjusted: float | None  # after Benjamini-Hochberg when the policy asks for it
    missing_rate_ref: float
    missing_rate_new: float
    missing_rate_change: float
    psi: float | None = None
    ks_statistic: float | None = None
    mean_shift: float | None = None  # new mean - reference mean, in reference sds
    std_ratio: float | None = None  # new sd / reference sd
    chi2: float | None = None
    dof: int | None = None
    js_distance: float | None = None
    unseen_share: float | None = None
    other_share_ref: float | None = None
    other_share_new: float | None = None
    #: the two distributions side by side, for a plot (None when one side has no values)
    shares: Shares | None = None

    @property
    def effect(self) -> float | None:
        return self.psi if self.kind == "numeric" else self.js_distance

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["causes"] = list(self.causes)
        out["shares"] = None if self.shares is None else self.shares.to_dict()
        return {k: _json_float(v) for k, v in out.items()}


def _json_float(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or infinity
    return value


@dataclass(frozen=True)
class DriftReport:
    features: tuple[FeatureDrift, ...]
    drifted: tuple[str, ...]
    drifted_share: float
    dataset_drifted: bool
    rows: int
    policy: DriftPolicy
    insufficient_data: bool = False
    #: the target's drift (label shift), when the reference and the data have the target;
    #: it does not count towards drifted_share
    target: FeatureDrift | None = None

    def summary(self) -> str:
        if self.insufficient_data:
            return (f"insufficient data: {self.rows} rows < min_rows {self.policy.min_rows}; "
                    f"no drift check")
        head = (f"{'DRIFT' if self.dataset_drifted else 'no dataset drift'}: "
                f"{len(self.drifted)}/{len(self.features)} features drifted "
                f"({self.drifted_share:.0%}, limit {self.policy.max_drifted_share:.0%}) "
                f"on {self.rows} rows")
        lines = [head] + [f"  {f.name}: {f.reason}" for f in self.features if f.drifted]
        if self.target is not None:
            lines.append(f"  target {self.target.name}: {self.target.reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "insufficient_data": self.insufficient_data,
            "dataset_drifted": self.dataset_drifted,
            "drifted_share": self.drifted_share,
            "drifted": list(self.drifted),
            "features": [f.to_dict() for f in self.features],
            "target": None if self.target is None else self.target.to_dict(),
            "policy": asdict(self.policy),
        }


# --------------------------------------------------------------------------------------------
# Statistics from counts
# --------------------------------------------------------------------------------------------


def _bin_shares(cdf: np.ndarray, edge_index: np.ndarray) -> np.ndarray:
    """Share per PSI bin, one row per feature, from each row's CDF at the grid points."""
    at = cdf[:, edge_index]
    ones = np.ones((cdf.shape[0], 1))
    return np.diff(np.hstack([ones * 0, at, ones]), axis=1)


def _js_distance(ref: np.ndarray, new: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two count vectors."""
    p, q = ref / ref.sum(), new / new.sum()
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        # 0 * log 0 = 0: where a share is 0 its term is 0 (m > 0 wherever p or q is).
        terms = np.where(p > 0, p * np.log2(p / m), 0.0) + np.where(q > 0, q * np.log2(q / m), 0.0)
    return math.sqrt(max(float(terms.sum()) / 2, 0.0))


def _chi2(ref: np.ndarray, new: np.ndarray) -> tuple[float, int]:
    """Chi-square statistic and dof of the 2 x K homogeneity table, sparse columns pooled.

    For two rows the statistic is sum_j (a_j R2 - b_j R1)^2 / (R1 R2 (a_j + b_j)); a column
    whose smaller expected count is under 5 joins one pooled column (the usual rule).
    """
    r1, r2 = float(ref.sum()), float(new.sum())
    both = ref + new
    sparse = both * (min(r1, r2) / (r1 + r2)) < _MIN_EXPECTED
    a, b, c = ref[~sparse], new[~sparse], both[~sparse]
    if sparse.any() and both[sparse].sum() > 0:
        a = np.append(a, ref[sparse].sum())
        b = np.append(b, new[sparse].sum())
        c = np.append(c, both[sparse].sum())
    if c.size < 2:
        return 0.0, 0
    return float(np.sum((a * r2 - b * r1) ** 2 / c) / (r1 * r2)), c.size - 1


@dataclass(frozen=True)
class _Raw:
    """A feature's statistics before the multiple-testing adjustment and the verdict."""

    name: str
    kind: Kind
    rows: int
    missing_rate_ref: float
    missing_rate_new: float
    p_value: float | None  # None: no values on one side, nothing to test
    stats: dict[str, Any]


def _numeric_raws(sketches: dict[str, NumericSketch],
                  vectors: dict[str, np.ndarray]) -> Iterator[_Raw]:
    """Numeric statistics, vectorised over the features (one numpy step for all of them)."""
    names = list(sketches)
    if not names:
        return
    groups: dict[tuple[int, int], list[str]] = {}  # same shape: stack them
    for name in names:
        groups.setdefault((len(sketches[name].grid), sketches[name].bins), []).append(name)
    for (m, _), group in groups.items():
        refs = [sketches[n] for n in group]
        table = np.stack([vectors[n] for n in group])
        valid, missing, finite, total_d, total_dd = table[:, m:].T
        ref_valid = np.array([s.valid for s in refs], dtype=np.float64)
        testable = (valid > 0) & (ref_valid > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            cdf = table[:, :m] / valid[:, None]
            ref_cdf = np.stack([s.cdf for s in refs])
            new_bins = _bin_shares(cdf, refs[0].edge_index)
            ref_bins = _bin_shares(ref_cdf, refs[0].edge_index)
            psi = shift.psi(new_bins, ref_bins)
            ref_bins, new_bins = ref_bins.tolist(), new_bins.tolist()  # one conversion
            # The sup over the grid is <= the sup over all points: the test is conservative.
            gap = np.abs(cdf - ref_cdf)
            d = gap.max(axis=1) if m else np.zeros(len(group))
            p = shift.ks_p_value(d, ref_valid, valid)
            sd = np.array([s.std or math.nan for s in refs])
            mean_d = total_d / finite
            mean_shift = mean_d / sd
            std_ratio = np.sqrt(np.maximum(total_dd / finite - mean_d**2, 0.0)) / sd
        rows = valid + missing
        for i, name in enumerate(group):
            stats: dict[str, Any] = {}
            if testable[i]:
                stats.update(psi=float(psi[i]), ks_statistic=float(d[i]),
                             shares=_numeric_shares(refs[i], ref_bins[i], new_bins[i]))
            if math.isfinite(mean_shift[i]):
                stats.update(mean_shift=float(mean_shift[i]), std_ratio=float(std_ratio[i]))
            yield _Raw(name, "numeric", int(valid[i]), refs[i].missing_rate,
                       float(missing[i] / rows[i]) if rows[i] else 0.0,
                       float(p[i]) if testable[i] else None, stats)


def _categorical_raw(name: str, sketch: CategoricalSketch, vector: np.ndarray) -> _Raw:
    new = vector[:-1]  # values..., other, unseen
    missing = float(vector[-1])
    valid = float(new.sum())
    rows = valid + missing
    ref = sketch.table
    stats: dict[str, Any] = {}
    p = None
    if valid > 0 and sketch.valid > 0:
        stat, dof = _chi2(ref, new)
        stats["shares"] = _categorical_shares(sketch, ref / ref.sum(), new / valid)
        p = float(special.chdtrc(dof, stat)) if dof else 1.0  # chi2.sf as a bare ufunc
        stats.update(
            chi2=stat,
            dof=dof,
            js_distance=_js_distance(ref, new),
            unseen_share=float(new[-1] / valid),
            other_share_ref=sketch.other / sketch.valid,
            other_share_new=float(new[-2] / valid),
        )
    return _Raw(name, "categorical", int(valid), sketch.missing_rate,
                missing / rows if rows else 0.0, p, stats)


def _numeric_shares(sketch: NumericSketch, ref: list[float], new: list[float]) -> Shares:
    keep = sketch.distinct_bins
    if keep is None:
        return Shares(tuple(ref), tuple(new), sketch.edges)
    return Shares(tuple(ref[i] for i in keep), tuple(new[i] for i in keep), sketch.edges)


def _categorical_shares(sketch: CategoricalSketch, ref: np.ndarray, new: np.ndarray) -> Shares:
    """Shares in the layout values..., OTHER, UNSEEN, the values cut to the largest few."""
    k = len(sketch.values)
    keep = np.arange(k)
    if k > _SHOWN_CATEGORIES:
        larger = np.maximum(ref[:k], new[:k])
        # stable: ties keep the reference's order, so the same counts give the same shares
        keep = np.sort(np.argsort(-larger, kind="stable")[:_SHOWN_CATEGORIES])
    rest = np.ones(k, dtype=bool)
    rest[keep] = False

    def cut(shares: np.ndarray) -> tuple[float, ...]:
        pooled = float(shares[:k][rest].sum() + shares[k])
        return (*shares[keep].tolist(), pooled, float(shares[k + 1]))

    categories = (*(sketch.values[i] for i in keep.tolist()), OTHER, UNSEEN)
    return Shares(cut(ref), cut(new), categories=categories)


def _raws(sketches: dict[str, Sketch], vectors: dict[str, np.ndarray]) -> list[_Raw]:
    numeric = {n: s for n, s in sketches.items() if isinstance(s, NumericSketch)}
    out = {r.name: r for r in _numeric_raws(numeric, vectors)}
    for name, sketch in sketches.items():
        if isinstance(sketch, CategoricalSketch):
            out[name] = _categorical_raw(name, sketch, vectors[name])
    return [out[n] for n in sketches]


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (step-up; monotone; capped at 1), in the input's order."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return out


def _decide(raw: _Raw, p_adj: float | None, policy: DriftPolicy, *,
            adjusted: bool) -> FeatureDrift:
    causes: list[str] = []
    words: list[str] = []
    s = raw.stats
    label = "BH p" if adjusted else "p"
    if raw.kind == "numeric":
        effect, threshold, effect_name = s.get("psi"), policy.psi_threshold, "PSI"
        test, value = "KS D", s.get("ks_statistic")
    else:
        effect, threshold, effect_name = s.get("js_distance"), policy.js_threshold, "JS"
        test, value = "chi2", s.get("chi2")
    if effect is not None and p_adj is not None:
        significant, material = p_adj < policy.alpha, effect >= threshold
        evidence = f"{effect_name} {effect:.3f}, {test} {value:.3g} ({label} {p_adj:.2g})"
        if significant and material:
            causes.append("distribution")
            words.append(f"distribution shifted: {effect_name} {effect:.3f} >= {threshold:g}, "
                         f"{test} {value:.3g} ({label} {p_adj:.2g} < {policy.alpha:g})")
            if "mean_shift" in s:
                words.append(f"mean {s['mean_shift']:+.2f} sd, sd x{s['std_ratio']:.2f}")
        elif significant:
            words.append(f"significant but immaterial: {evidence}, {effect_name} < {threshold:g}")
        else:
            words.append(f"stable: {evidence}")
    else:
        words.append("no values to compare on one side")
    change = raw.missing_rate_new - raw.missing_rate_ref
    if abs(change) > policy.missing_rate_jump:
        causes.append("missing_rate")
        words.append(f"missing rate {'rose' if change > 0 else 'fell'} "
                     f"{raw.missing_rate_ref:.1%} -> {raw.missing_rate_new:.1%} "
                     f"(limit +-{policy.missing_rate_jump:.0%})")
    unseen = s.get("unseen_share")
    if unseen is not None and unseen > policy.max_unseen_share:
        causes.append("unseen")
        words.append(f"{unseen:.1%} of values are categories unseen in the reference "
                     f"(limit {policy.max_unseen_share:.0%})")
    return FeatureDrift(
        name=raw.name,
        kind=raw.kind,
        rows=raw.rows,
        drifted=bool(causes),
        causes=tuple(causes),
        reason="; ".join(words),
        p_value=raw.p_value,
        p_adjusted=p_adj,
        missing_rate_ref=raw.missing_rate_ref,
        missing_rate_new=raw.missing_rate_new,
        missing_rate_change=change,
        **s,
    )


def _evaluate(reference: ReferenceSketch, vectors: dict[str, np.ndarray], rows: int,
              policy: DriftPolicy, target: np.ndarray | None = None) -> DriftReport:
    if rows < policy.min_rows:
        return DriftReport((), (), 0.0, False, rows, policy, insufficient_data=True)
    raws = _raws(reference.features, vectors)
    adjusted = [r.p_value for r in raws]
    tested = [i for i, r in enumerate(raws) if r.p_value is not None]
    if policy.fdr and tested:
        bh = benjamini_hochberg(np.array([raws[i].p_value for i in tested]))
        for i, value in zip(tested, bh.tolist(), strict=True):
            adjusted[i] = value
    features = tuple(_decide(r, a, policy, adjusted=policy.fdr)
                     for r, a in zip(raws, adjusted, strict=True))
    drifted = tuple(f.name for f in features if f.drifted)
    share = len(drifted) / len(features)
    target_drift = None
    if target is not None and reference.target_sketch is not None:
        # Label shift is reported on its own, with its unadjusted p-value.
        (raw,) = _raws({str(reference.target): reference.target_sketch},
                       {str(reference.target): target})
        target_drift = _decide(raw, raw.p_value, policy, adjusted=False)
    return DriftReport(features, drifted, share, share > policy.max_drifted_share, rows, policy,
                       target=target_drift)


def _check_columns(reference: ReferenceSketch, frame: pd.DataFrame) -> None:
    present = set(frame.columns)
    missing = [name for name in reference.features if name not in present]
    if missing:
        raise InvalidValueError(f"missing feature column(s) {missing}; the reference sketch has "
                                f"{list(reference.features)}")


def compare(reference: ReferenceSketch, frame: pd.DataFrame, *,
            policy: DriftPolicy = DEFAULT_POLICY) -> DriftReport:
    """Compare new data (a partition, a batch of inputs) with the reference sketch.

    Raises ValueError naming the reference's feature columns the frame lacks. The target is
    compared too when both the reference and the frame have it (live inputs do not).
    """
    _check_columns(reference, frame)
    if len(frame) < policy.min_rows:
        return _evaluate(reference, {}, len(frame), policy)
    target = None
    if reference.target_sketch is not None and reference.target in frame.columns:
        name = str(reference.target)
        target = _vectors({name: reference.target_sketch}, frame)[name]
    return _evaluate(reference, _vectors(reference.features, frame), len(frame), policy, target)


# --------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------


class StreamingDrift:
    """Drift of a live input stream against the reference sketch, in bounded memory.

    A sliding count window: rows are counted into panes of ``step`` rows, and the statistics
    cover the last ``window // step`` complete panes, i.e. the last ``window`` rows as of the
    latest pane boundary. Each time a pane completes, the window is evaluated with `compare`'s
    rules, and `drift_detected` holds that evaluation's dataset-level verdict (set the
    policy's max_drifted_share to 0 to alarm on any one feature). Memory is
    ``window // step + 1`` count vectors per feature, never rows; a chunk larger than a pane
    is split at the pane boundaries. The first evaluations see fewer than ``window`` rows
    (and none below the policy's min_rows).

    There is no reset on detection: the reference is the training data, so the alarm holds
    for as long as the window differs from it (call `reset` to start over). Rows of an
    incomplete pane are counted but wait for its boundary.
    """

    def __init__(self, reference: ReferenceSketch, *, window: int = 5000,
                 step: int | None = None, policy: DriftPolicy = DEFAULT_POLICY) -> None:
        step = max(window // 5, 1) if step is None else step
        if step < 1 or window < step or window % step:
            raise InvalidValueError(
                f"window ({window}) must be a positive multiple of step ({step})")
        self.reference = reference
        self.window = window
        self.step = step
        self.policy = policy
        self.reset()

    def reset(self) -> None:
        self._panes: deque[dict[str, np.ndarray]] = deque(maxlen=self.window // self.step)
        self._pane: dict[str, np.ndarray] | None = None
        self._pane_rows = 0
        self._report: DriftReport | None = None
        self.rows_seen = 0
        self.evaluations = 0

    @property
    def drift_detected(self) -> bool:
        return self._report is not None and self._report.dataset_drifted

    def update(self, chunk: pd.DataFrame) -> bool:
        """Count a chunk of inputs; return `drift_detected` after it."""
        _check_columns(self.reference, chunk)
        start = 0
        while start < len(chunk):
            take = min(self.step - self._pane_rows, len(chunk) - start)
            counts = _vectors(self.reference.features, chunk.iloc[start : start + take])
            if self._pane is None:
                self._pane = counts
            else:
                for name, vector in counts.items():
                    self._pane[name] += vector
            self._pane_rows += take
            self.rows_seen += take
            start += take
            if self._pane_rows == self.step:
                self._panes.append(self._pane)
                self._pane, self._pane_rows = None, 0
                self._report = self._evaluate()
                self.evaluations += 1
        return self.drift_detected

    def _evaluate(self) -> DriftReport:
        if not self._panes:
            return _evaluate(self.reference, {}, 0, self.policy)
        totals = {name: np.sum([pane[name] for pane in self._panes], axis=0)
                  for name in self.reference.features}
        return _evaluate(self.reference, totals, len(self._panes) * self.step, self.policy)

    def report(self) -> DriftReport:
        """The latest evaluation: the last ``window`` rows as of the latest pane boundary."""
        return self._evaluate() if self._report is None else self._report
