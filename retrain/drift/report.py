"""What a drift check says: the policy it applied, and per feature the shares, the test, the effect
and the verdict.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from retrain.drift.sketch import Kind, _json_number
from retrain.errors import InvalidValueError


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
