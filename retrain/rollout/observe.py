"""What the controller observes of a step, per version: requests, errors, latency, a summary of the
predictions, the live metric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from retrain.errors import InvalidValueError
from retrain.rollout.values import _count, _known, _number, _optional_number

#: the levels of `PredictionSummary.quantiles`: 0 (the minimum), 0.01, ..., 1 (the maximum)
LEVELS: tuple[float, ...] = tuple(i / 100 for i in range(101))
_LEVELS = np.asarray(LEVELS)




@dataclass(frozen=True)
class PredictionSummary:
    """A version's predictions in a step, condensed: count, mean and 101 quantiles.

    Two summaries are compared with each other (challenger against champion), so unlike
    `retrain.drift.NumericSketch`, which is compared with raw new data, neither side's CDF is
    known exactly off its own quantiles: `cdf` interpolates linearly between them. A
    prediction is one number per row (a class-1 probability, a regression value).
    """

    #: finite predictions
    count: int
    #: predictions that were NaN or infinite (not in the quantiles)
    nonfinite: int
    mean: float | None
    #: at `LEVELS`; empty when count is 0
    quantiles: tuple[float, ...]

    def __post_init__(self) -> None:
        _count("count", self.count)
        _count("nonfinite", self.nonfinite)
        quantiles = tuple(float(q) for q in self.quantiles)
        expected = len(LEVELS) if self.count else 0
        if len(quantiles) != expected:
            raise InvalidValueError(f"quantiles must hold {expected} values (at LEVELS) for "
                                    f"count={self.count}, but got {len(quantiles)}")
        if not all(math.isfinite(q) for q in quantiles) or list(quantiles) != sorted(quantiles):
            raise InvalidValueError("quantiles must be finite and non-decreasing")
        object.__setattr__(self, "quantiles", quantiles)
        (_optional_number if self.count == 0 else _number)("mean", self.mean)

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray) -> PredictionSummary:
        """Summarise raw predictions (any shape: flattened)."""
        array = np.asarray(values, dtype=np.float64).ravel()
        finite = array[np.isfinite(array)]
        if not finite.size:
            return cls(0, int(array.size), None, ())
        return cls(int(finite.size), int(array.size - finite.size), float(finite.mean()),
                   # inverted_cdf, as retrain.drift: data values, so a discrete prediction's
                   # mass shows exactly at its value
                   tuple(np.quantile(finite, _LEVELS, method="inverted_cdf").tolist()))

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """Share of predictions <= x, interpolated between the quantiles.

        Right-continuous at repeated quantiles (a discrete prediction): at a value held by
        many quantiles the CDF is the highest of their levels.
        """
        q = np.asarray(self.quantiles)
        x = np.asarray(x, dtype=np.float64)
        n = len(q)
        above = np.searchsorted(q, x, side="right")  # quantiles <= x
        lo, hi = np.clip(above - 1, 0, n - 1), np.clip(above, 0, n - 1)
        span = q[hi] - q[lo]
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(span > 0, (x - q[lo]) / span, 0.0)
        inside = _LEVELS[lo] + frac * (_LEVELS[hi] - _LEVELS[lo])
        return np.where(above == 0, 0.0, np.where(above == n, 1.0, inside))

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "nonfinite": self.nonfinite, "mean": self.mean,
                "quantiles": list(self.quantiles)}

    @classmethod
    def from_dict(cls, raw: Any) -> PredictionSummary:
        raw = _known("PredictionSummary", raw, ("count", "nonfinite", "mean", "quantiles"))
        return cls(raw["count"], raw.get("nonfinite", 0), raw.get("mean"),
                   tuple(raw["quantiles"]))


@dataclass(frozen=True)
class VersionStats:
    """What one version did in the current step (for the shadow: on its mirrored copies)."""

    requests: int = 0
    #: requests that failed on the version's side (exceptions, timeouts; not 4xx for bad input)
    errors: int = 0
    latency_p99_ms: float | None = None
    predictions: PredictionSummary | None = None
    #: the primary metric on the predictions whose labels have arrived, and how many
    live_metric: float | None = None
    labelled: int = 0
    #: the smoke test's health check; None where none was made
    healthy: bool | None = None

    def __post_init__(self) -> None:
        _count("requests", self.requests)
        _count("errors", self.errors)
        if self.errors > self.requests:
            raise InvalidValueError(
                f"errors ({self.errors}) cannot exceed requests ({self.requests})")
        _optional_number("latency_p99_ms", self.latency_p99_ms, low=0)
        _optional_number("live_metric", self.live_metric)
        _count("labelled", self.labelled)
        if self.healthy is not None and not isinstance(self.healthy, bool):
            raise InvalidValueError(f"healthy must be a bool or None, but got {self.healthy!r}")

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                "latency_p99_ms": self.latency_p99_ms,
                "predictions": None if self.predictions is None else self.predictions.to_dict(),
                "live_metric": self.live_metric, "labelled": self.labelled,
                "healthy": self.healthy}

    @classmethod
    def from_dict(cls, raw: Any) -> VersionStats:
        raw = dict(_known("VersionStats", raw, cls.__dataclass_fields__))
        if raw.get("predictions") is not None:
            raw["predictions"] = PredictionSummary.from_dict(raw["predictions"])
        return cls(**raw)


@dataclass(frozen=True)
class Observation:
    """Champion and challenger in the current step, on the same traffic.

    Counts cover the current step only (since the rollout's ``step_started_at``): counts that
    ran on from an earlier step would let a 5 % step's requests pass the 25 % step.
    """

    champion: VersionStats
    challenger: VersionStats
    #: when collection started (unix s); when given it is checked against the step's start
    since: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"champion": self.champion.to_dict(), "challenger": self.challenger.to_dict(),
                "since": self.since}

    @classmethod
    def from_dict(cls, raw: Any) -> Observation:
        raw = _known("Observation", raw, ("champion", "challenger", "since"))
        return cls(VersionStats.from_dict(raw["champion"]),
                   VersionStats.from_dict(raw["challenger"]), raw.get("since"))
