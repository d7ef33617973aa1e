"""New data against a reference sketch: PSI and KS (numeric), chi-square and Jensen-Shannon
(categorical), missing and unseen shares, Benjamini-Hochberg across features, and the effect-
size condition.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from retrain import shift
from retrain.drift.counts import _vectors
from retrain.drift.report import DEFAULT_POLICY, DriftPolicy, DriftReport, FeatureDrift, Shares
from retrain.drift.sketch import (
    OTHER,
    UNSEEN,
    CategoricalSketch,
    Kind,
    NumericSketch,
    ReferenceSketch,
    Sketch,
)
from retrain.errors import InvalidValueError

#: categories kept per categorical feature in `Shares` (the rest pooled into OTHER): a person
#: reads about 20 bars, and the report's JSON stays small when top_k is 200
_SHOWN_CATEGORIES = 20
_MIN_EXPECTED = 5.0  # chi-square cells expected below this are pooled (the usual rule)




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
