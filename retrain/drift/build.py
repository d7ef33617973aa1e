"""Building a `ReferenceSketch` from training data, when a model version is registered."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from retrain.drift.counts import (
    _bounds,
    _columns,
    _is_categorical,
    _moments,
    _sorted_blocks,
    _tally,
)
from retrain.drift.sketch import CategoricalSketch, NumericSketch, ReferenceSketch, Sketch
from retrain.errors import InvalidValueError


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
