"""The rollout of a challenger, as pure values: the plan, the gates, and a step state machine.

    smoke ─► shadow ─► canary 5 % ─► 25 % ─► 50 % ─► 100 % ─► completed (old version retires)
      └────────┴──────────┴──── any gate fails ─────┴───────► rolled_back (all traffic to the
                                                                            champion)

Each step of a `RolloutPlan` gives the challenger a share of live traffic (none in smoke and
shadow), a bake time and a minimum number of requests. `Rollout.advance` takes an
`Observation` of the current step (per version: requests, errors, p99 latency, a summary of
the predictions, the live metric where labels have arrived) and `evaluate_gates` judges it
against the champion on the same traffic:

- a gate that fails rolls back at once, whatever the step, and the reason is kept;
- a gate without enough data yet *waits*: the step neither passes nor fails;
- the step advances only when no gate fails or waits *and* its bake time has passed.

The champion is the last known-good version until the rollout completes: a rollback from any
step sends all traffic back to it. At 100 % the champion becomes the shadow, so that the last
step is still compared with it on the same requests, then retires ``drain_s`` after completion.

Nothing here touches Ray, Serve or MLflow: the controller applies each `TrafficSplit` and
collects the observations; every value here round-trips through ``to_dict`` / ``from_dict``
(JSON-safe) for the ledger and for resuming after a crash.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from retrain import shift
from retrain.errors import InvalidValueError
from serve.traffic import TrafficSplit

if TYPE_CHECKING:
    from retrain.config import Config
    from retrain.ledger import LedgerEvent

#: the levels of `PredictionSummary.quantiles`: 0 (the minimum), 0.01, ..., 1 (the maximum)
LEVELS: tuple[float, ...] = tuple(i / 100 for i in range(101))
_LEVELS = np.asarray(LEVELS)
#: PSI bins: equal-frequency bins of the champion's predictions (its deciles)
PSI_BINS = 10
# an observation may start a little before the step did (clocks of two processes)
_CLOCK_SLACK_S = 1.0


def _json(value: Any) -> Any:
    """JSON has no NaN or infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _number(name: str, value: Any, *, low: float | None = None,
            optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidValueError(f"{name} must be a finite number, but got {name}={value!r}")
    if low is not None and value < low:
        raise InvalidValueError(f"{name} must be >= {low}, but got {name}={value!r}")
    return float(value)


def _count(name: str, value: Any, *, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidValueError(f"{name} must be an integer >= {low}, but got {name}={value!r}")
    return value


def _known(cls_name: str, raw: Any, fields: Iterable[str]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise InvalidValueError(f"{cls_name}.from_dict expects a mapping, but got {raw!r}")
    unknown = sorted(set(raw) - set(fields), key=str)
    if unknown:
        raise InvalidValueError(
            f"{cls_name}.from_dict got unknown keys {unknown}; expected some of "
            f"{sorted(fields)}")
    return raw


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


class Stage(str, Enum):
    SMOKE = "smoke"  # a sample batch to both versions, before any live request
    SHADOW = "shadow"  # live requests mirrored to the challenger, its answers not served
    CANARY = "canary"  # a share of live traffic served by the challenger
    COMPLETED = "completed"  # the challenger serves everything; the champion retires
    ROLLED_BACK = "rolled_back"  # a gate failed (or an operator said so); the champion serves

    def __str__(self) -> str:
        return self.value


_STEP_STAGES = (Stage.SMOKE, Stage.SHADOW, Stage.CANARY)
_TERMINAL = (Stage.COMPLETED, Stage.ROLLED_BACK)


@dataclass(frozen=True)
class Step:
    """One step of a rollout: the challenger's share, how long, and on how much traffic."""

    stage: Stage
    #: percent of live traffic the challenger serves (0 in smoke and shadow)
    percent: float
    #: the step lasts at least this long ...
    bake_s: float
    #: ... and until the challenger answered this many requests (and the champion too)
    min_requests: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage", Stage(self.stage))
        if self.stage not in _STEP_STAGES:
            raise InvalidValueError(f"a step's stage is one of {[str(s) for s in _STEP_STAGES]}, "
                                    f"but got stage={self.stage}")
        percent = _number("percent", self.percent, low=0)
        if self.stage is Stage.CANARY and not 0 < percent <= 100:
            raise InvalidValueError(
                f"a canary step's percent must be in (0, 100], but got {percent}")
        if self.stage is not Stage.CANARY and percent != 0:
            raise InvalidValueError(
                f"a {self.stage} step serves no live traffic from the challenger: "
                f"percent must be 0, but got {percent}")
        object.__setattr__(self, "percent", percent)
        object.__setattr__(self, "bake_s", _number("bake_s", self.bake_s, low=0))
        _count("min_requests", self.min_requests, low=1)

    @property
    def name(self) -> str:
        return f"canary {self.percent:g} %" if self.stage is Stage.CANARY else str(self.stage)

    def split(self, champion: str, challenger: str, *, sticky_key: str | None) -> TrafficSplit:
        """The traffic split of this step."""
        if self.stage is not Stage.CANARY:
            shadow = challenger if self.stage is Stage.SHADOW else None
            return TrafficSplit.single(champion, shadow=shadow, sticky_key=sticky_key)
        if self.percent == 100:
            # The champion turns shadow: the gates keep comparing on the same requests.
            return TrafficSplit.single(challenger, shadow=champion, sticky_key=sticky_key)
        share = self.percent / 100
        return TrafficSplit({champion: 1.0 - share, challenger: share}, sticky_key=sticky_key)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage.value, "percent": self.percent, "bake_s": self.bake_s,
                "min_requests": self.min_requests}

    @classmethod
    def from_dict(cls, raw: Any) -> Step:
        raw = _known("Step", raw, ("stage", "percent", "bake_s", "min_requests"))
        return cls(Stage(raw["stage"]), raw["percent"], raw["bake_s"], raw["min_requests"])


@dataclass(frozen=True)
class GateLimits:
    """Thresholds of the gates; every comparison is challenger against champion."""

    #: the challenger's error rate may exceed the champion's by at most this
    max_error_rate: float = 0.01
    #: p99 latency: challenger <= max_latency_ratio * champion + latency_slack_ms
    max_latency_ratio: float | None = 1.5
    latency_slack_ms: float = 5.0
    #: absolute p99 limit of the challenger
    max_latency_ms: float | None = None
    #: prediction shift: fails when PSI reaches this *and* KS is significant at shift_alpha
    max_prediction_psi: float | None = 0.2
    shift_alpha: float = 0.01
    #: live metric: fails when the challenger is worse by more than this
    live_metric_tolerance: float | None = 0.02
    #: labelled predictions per version before the live metric counts
    min_labelled: int = 200
    #: the direction of the live metric (auc: True, rmse: False)
    greater_is_better: bool = True

    def __post_init__(self) -> None:
        if not 0 <= _number("max_error_rate", self.max_error_rate) < 1:
            raise InvalidValueError(
                f"max_error_rate must be in [0, 1), but got {self.max_error_rate}")
        for name in ("max_latency_ratio", "max_latency_ms", "max_prediction_psi"):
            value = _number(name, getattr(self, name), optional=True)
            if value is not None and value <= 0:
                raise InvalidValueError(f"{name} must be > 0 or None (no check), but got {value}")
        _number("latency_slack_ms", self.latency_slack_ms, low=0)
        _number("live_metric_tolerance", self.live_metric_tolerance, low=0, optional=True)
        if not 0 < _number("shift_alpha", self.shift_alpha) < 1:
            raise InvalidValueError(f"shift_alpha must be in (0, 1), but got {self.shift_alpha}")
        _count("min_labelled", self.min_labelled, low=1)
        if not isinstance(self.greater_is_better, bool):
            raise InvalidValueError(f"greater_is_better must be a bool, but got "
                                    f"{self.greater_is_better!r}")

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, raw: Any) -> GateLimits:
        return cls(**_known("GateLimits", raw, cls.__dataclass_fields__))


@dataclass(frozen=True)
class RolloutPlan:
    """The steps of a rollout in order, the gates' limits, stickiness and the drain time.

    Order: at most one smoke step, then at most one shadow step, then canary steps with
    strictly rising percent, the last at 100.
    """

    steps: tuple[Step, ...]
    gates: GateLimits = GateLimits()
    #: the request header (or body field) that keeps one caller on one version
    sticky_key: str | None = None
    #: the old version retires this long after the rollout completes (in-flight requests)
    drain_s: float = 30.0

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        object.__setattr__(self, "steps", steps)
        if not all(isinstance(s, Step) for s in steps):
            raise InvalidValueError(f"steps must be Step values, but got {steps!r}")
        canary = [s for s in steps if s.stage is Stage.CANARY]
        if not canary or canary[-1].percent != 100:
            raise InvalidValueError(
                "a rollout plan must end with a canary step at 100 % (full traffic), but got "
                f"steps {[s.name for s in steps]}; add a last step of 100"
            )
        order = [_STEP_STAGES.index(s.stage) for s in steps]
        pre = [s.stage for s in steps if s.stage is not Stage.CANARY]
        if order != sorted(order) or len(pre) != len(set(pre)):
            raise InvalidValueError(
                "steps must be at most one smoke, then at most one shadow, then the canary "
                f"steps, but got {[s.name for s in steps]}"
            )
        percents = [s.percent for s in canary]
        if percents != sorted(set(percents)):
            raise InvalidValueError(f"canary percents must rise strictly, but got {percents}")
        if not isinstance(self.gates, GateLimits):
            raise InvalidValueError(f"gates must be GateLimits, but got {self.gates!r}")
        TrafficSplit.single("1", sticky_key=self.sticky_key)  # the same check as the router's
        object.__setattr__(self, "drain_s", _number("drain_s", self.drain_s, low=0))

    @classmethod
    def from_config(cls, config: Config) -> RolloutPlan:
        """The plan of a project: its ``rollout`` section and its task's metric direction."""
        section = config.rollout
        steps: list[Step] = []
        if section.smoke.enabled:
            steps.append(Step(Stage.SMOKE, 0.0, 0.0, section.smoke.requests))
        if section.shadow.enabled:
            steps.append(Step(Stage.SHADOW, 0.0, section.shadow.duration_s,
                              section.shadow.min_requests))
        canary = section.canary
        for step in canary.steps:
            steps.append(Step(
                Stage.CANARY, step.percent,
                canary.bake_s if step.bake_s is None else step.bake_s,
                canary.min_requests if step.min_requests is None else step.min_requests,
            ))
        g = section.gates
        gates = GateLimits(
            max_error_rate=g.max_error_rate, max_latency_ratio=g.max_latency_ratio,
            latency_slack_ms=g.latency_slack_ms, max_latency_ms=g.max_latency_ms,
            max_prediction_psi=g.max_prediction_psi, shift_alpha=g.shift_alpha,
            live_metric_tolerance=g.live_metric_tolerance, min_labelled=g.min_labelled,
            greater_is_better=config.task.greater_is_better,
        )
        return cls(tuple(steps), gates, sticky_key=section.sticky_key, drain_s=section.drain_s)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [s.to_dict() for s in self.steps], "gates": self.gates.to_dict(),
                "sticky_key": self.sticky_key, "drain_s": self.drain_s}

    @classmethod
    def from_dict(cls, raw: Any) -> RolloutPlan:
        raw = _known("RolloutPlan", raw, ("steps", "gates", "sticky_key", "drain_s"))
        return cls(tuple(Step.from_dict(s) for s in raw["steps"]),
                   GateLimits.from_dict(raw["gates"]), sticky_key=raw.get("sticky_key"),
                   drain_s=raw.get("drain_s", 30.0))


# --------------------------------------------------------------------------------------------
# Observations
# --------------------------------------------------------------------------------------------


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
        _number("mean", self.mean, optional=self.count == 0)

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
        _number("latency_p99_ms", self.latency_p99_ms, low=0, optional=True)
        _number("live_metric", self.live_metric, optional=True)
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


# --------------------------------------------------------------------------------------------
# Gates
# --------------------------------------------------------------------------------------------


class GateStatus(str, Enum):
    PASS = "pass"
    FAIL = "fail"  # rolls back
    WAIT = "wait"  # too little data yet: the step neither passes nor fails
    SKIP = "skip"  # not checked (turned off, or labels not arrived); does not hold a step

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class GateResult:
    name: str
    status: GateStatus
    reason: str
    #: the numbers the verdict rests on (JSON-safe)
    inputs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", GateStatus(self.status))
        object.__setattr__(self, "inputs", {k: _json(v) for k, v in self.inputs.items()})

    @property
    def ok(self) -> bool:
        """Neither failed nor waiting."""
        return self.status in (GateStatus.PASS, GateStatus.SKIP)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status.value, "ok": self.ok,
                "reason": self.reason, "inputs": dict(self.inputs)}

    @classmethod
    def from_dict(cls, raw: Any) -> GateResult:
        raw = _known("GateResult", raw, ("name", "status", "ok", "reason", "inputs"))
        return cls(raw["name"], GateStatus(raw["status"]), raw["reason"],
                   dict(raw.get("inputs", {})))


def _health(stats: VersionStats) -> GateResult:
    if stats.healthy is None:
        return GateResult("health", GateStatus.SKIP, "no health check in this step")
    if not stats.healthy:
        return GateResult("health", GateStatus.FAIL, "the challenger failed its health check",
                          {"healthy": False})
    return GateResult("health", GateStatus.PASS, "healthy", {"healthy": True})


def _errors(limits: GateLimits, obs: Observation, min_requests: int) -> GateResult:
    chal, champ = obs.challenger, obs.champion
    allowed = champ.error_rate + limits.max_error_rate
    inputs = {"errors": chal.errors, "requests": chal.requests, "error_rate": chal.error_rate,
              "champion_error_rate": champ.error_rate, "allowed_rate": allowed,
              "min_requests": min_requests}
    said = (f"{chal.errors}/{chal.requests} requests failed ({chal.error_rate:.2%}); allowed "
            f"{allowed:.2%} (champion {champ.error_rate:.2%} + {limits.max_error_rate:.2%})")
    # Fail early when it is already decided: with this many errors the rate over
    # min_requests cannot come back under the limit, so waiting would only fail more users.
    if chal.errors > allowed * max(chal.requests, min_requests):
        return GateResult("error_rate", GateStatus.FAIL, said, inputs)
    if chal.requests < min_requests:
        return GateResult("error_rate", GateStatus.WAIT,
                          f"{chal.requests}/{min_requests} requests so far", inputs)
    return GateResult("error_rate", GateStatus.PASS, said, inputs)


def _latency(limits: GateLimits, obs: Observation, min_requests: int) -> GateResult:
    chal, champ = obs.challenger, obs.champion
    if limits.max_latency_ratio is None and limits.max_latency_ms is None:
        return GateResult("latency_p99", GateStatus.SKIP, "no latency limit configured")
    inputs = {"p99_ms": chal.latency_p99_ms, "champion_p99_ms": champ.latency_p99_ms,
              "requests": chal.requests, "champion_requests": champ.requests,
              "min_requests": min_requests}
    # A p99 on a few requests is their maximum: noise, not evidence.
    if min(chal.requests, champ.requests) < min_requests:
        return GateResult("latency_p99", GateStatus.WAIT,
                          f"p99 needs {min_requests} requests per version; challenger "
                          f"{chal.requests}, champion {champ.requests}", inputs)
    missing = [who for who, s in (("challenger", chal), ("champion", champ))
               if s.latency_p99_ms is None]
    if missing:
        return GateResult("latency_p99", GateStatus.WAIT,
                          f"no p99 latency observed for the {' and '.join(missing)}", inputs)
    p99, base = chal.latency_p99_ms, champ.latency_p99_ms
    problems = []
    if limits.max_latency_ratio is not None:
        bound = limits.max_latency_ratio * base + limits.latency_slack_ms
        inputs["limit_ms"] = bound
        if p99 > bound:
            problems.append(f"p99 {p99:.1f} ms > {limits.max_latency_ratio:g} x champion's "
                            f"{base:.1f} ms + {limits.latency_slack_ms:g} ms = {bound:.1f} ms")
    if limits.max_latency_ms is not None and p99 > limits.max_latency_ms:
        problems.append(f"p99 {p99:.1f} ms > max_latency_ms {limits.max_latency_ms:g}")
    if problems:
        return GateResult("latency_p99", GateStatus.FAIL, "; ".join(problems), inputs)
    return GateResult("latency_p99", GateStatus.PASS,
                      f"p99 {p99:.1f} ms against the champion's {base:.1f} ms", inputs)


def prediction_shift(champion: PredictionSummary,
                     challenger: PredictionSummary) -> dict[str, float]:
    """PSI on the champion's decile bins and the two-sample KS statistic and p-value.

    PSI and KS as in `retrain.drift` (both from `retrain.shift`): equal-frequency bins of the
    reference (here the champion's predictions).
    """
    if not champion.count or not challenger.count:
        raise InvalidValueError("both summaries need at least one finite prediction")
    cut = np.asarray(champion.quantiles)[np.arange(1, PSI_BINS) * (len(LEVELS) - 1) // PSI_BINS]
    edges = np.unique(cut)

    def shares(summary: PredictionSummary) -> np.ndarray:
        return np.diff(np.concatenate(([0.0], summary.cdf(edges), [1.0])))

    psi = float(shift.psi(shares(challenger), shares(champion)))
    points = np.union1d(champion.quantiles, challenger.quantiles)
    d = float(np.max(np.abs(champion.cdf(points) - challenger.cdf(points))))
    p = float(shift.ks_p_value(d, champion.count, challenger.count))
    mean_shift = (challenger.mean or 0.0) - (champion.mean or 0.0)
    return {"psi": psi, "ks_statistic": d, "p_value": p, "mean_shift": mean_shift}


def _shift(limits: GateLimits, obs: Observation, min_requests: int) -> GateResult:
    if limits.max_prediction_psi is None:
        return GateResult("prediction_shift", GateStatus.SKIP, "no prediction shift limit")
    chal, champ = obs.challenger.predictions, obs.champion.predictions
    if chal is not None and chal.nonfinite and (champ is None or not champ.nonfinite):
        return GateResult("prediction_shift", GateStatus.FAIL,
                          f"the challenger returned {chal.nonfinite} NaN or infinite "
                          "predictions, the champion none", {"nonfinite": chal.nonfinite})
    counts = {"count": chal.count if chal else 0, "champion_count": champ.count if champ else 0,
              "min_requests": min_requests}
    if chal is None or champ is None or min(chal.count, champ.count) < min_requests:
        return GateResult("prediction_shift", GateStatus.WAIT,
                          f"needs {min_requests} predictions per version; challenger "
                          f"{counts['count']}, champion {counts['champion_count']}", counts)
    stats = prediction_shift(champ, chal)
    inputs = {**counts, **stats, "max_psi": limits.max_prediction_psi,
              "alpha": limits.shift_alpha}
    said = (f"PSI {stats['psi']:.3f} (limit {limits.max_prediction_psi:g}), KS "
            f"{stats['ks_statistic']:.3f} (p={stats['p_value']:.2g}), mean "
            f"{stats['mean_shift']:+.4g} against the champion's predictions")
    # Material *and* significant, as in retrain.drift: PSI alone is noisy on small samples
    # (about (bins - 1) * (1/n + 1/m) between two samples of one distribution).
    if stats["psi"] >= limits.max_prediction_psi and stats["p_value"] < limits.shift_alpha:
        return GateResult("prediction_shift", GateStatus.FAIL, said, inputs)
    return GateResult("prediction_shift", GateStatus.PASS, said, inputs)


def _live_metric(limits: GateLimits, obs: Observation) -> GateResult:
    if limits.live_metric_tolerance is None:
        return GateResult("live_metric", GateStatus.SKIP, "no live metric tolerance")
    chal, champ = obs.challenger, obs.champion
    inputs = {"metric": chal.live_metric, "champion_metric": champ.live_metric,
              "labelled": chal.labelled, "champion_labelled": champ.labelled,
              "min_labelled": limits.min_labelled}
    # Labels can take days: their absence must not hold a step, so this skips, not waits.
    if (chal.live_metric is None or champ.live_metric is None
            or min(chal.labelled, champ.labelled) < limits.min_labelled):
        return GateResult("live_metric", GateStatus.SKIP,
                          f"labels not arrived: challenger {chal.labelled}, champion "
                          f"{champ.labelled} of {limits.min_labelled} needed", inputs)
    sign = 1.0 if limits.greater_is_better else -1.0
    gain = sign * (chal.live_metric - champ.live_metric)
    inputs["gain"] = gain
    said = (f"live metric {chal.live_metric:.4g} against the champion's "
            f"{champ.live_metric:.4g} ({'higher' if limits.greater_is_better else 'lower'} is "
            f"better; tolerance {limits.live_metric_tolerance:g})")
    if gain < -limits.live_metric_tolerance:
        return GateResult("live_metric", GateStatus.FAIL, said, inputs)
    return GateResult("live_metric", GateStatus.PASS, said, inputs)


def evaluate_gates(plan: RolloutPlan, observation: Observation, *,
                   min_requests: int) -> list[GateResult]:
    """Every gate on one observation, in a fixed order: health, error rate, p99 latency,
    prediction shift, live metric. ``min_requests`` is the current step's."""
    limits = plan.gates
    _count("min_requests", min_requests, low=1)
    return [
        _health(observation.challenger),
        _errors(limits, observation, min_requests),
        _latency(limits, observation, min_requests),
        _shift(limits, observation, min_requests),
        _live_metric(limits, observation),
    ]


# --------------------------------------------------------------------------------------------
# The state machine
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    """A change of step, with the split it applied and why (one ledger row each)."""

    at: float
    from_stage: Stage | None  # None: the rollout started
    from_step: int | None
    to_stage: Stage
    to_step: int
    split: TrafficSplit
    reason: str
    gates: tuple[GateResult, ...] = ()

    @property
    def rolled_back(self) -> bool:
        return self.to_stage is Stage.ROLLED_BACK

    def to_dict(self) -> dict[str, Any]:
        from_stage = None if self.from_stage is None else self.from_stage.value
        return {"at": self.at, "from_stage": from_stage, "from_step": self.from_step,
                "to_stage": self.to_stage.value, "to_step": self.to_step,
                "split": self.split.to_dict(), "reason": self.reason,
                "gates": [g.to_dict() for g in self.gates]}

    @classmethod
    def from_dict(cls, raw: Any) -> Transition:
        raw = _known("Transition", raw, cls.__dataclass_fields__)
        return cls(
            raw["at"], None if raw["from_stage"] is None else Stage(raw["from_stage"]),
            raw["from_step"], Stage(raw["to_stage"]), raw["to_step"],
            TrafficSplit.from_dict(raw["split"]), raw["reason"],
            tuple(GateResult.from_dict(g) for g in raw.get("gates", ())),
        )


@dataclass(frozen=True)
class Rollout:
    """Where a rollout stands. Every transition returns a new value; nothing is mutated."""

    plan: RolloutPlan
    champion: str
    challenger: str
    #: index into plan.steps (the step it ended at, once completed or rolled back)
    step: int
    stage: Stage
    split: TrafficSplit
    started_at: float
    step_started_at: float
    history: tuple[Transition, ...] = ()
    #: the latest gate results (of the last advance)
    gates: tuple[GateResult, ...] = ()
    #: why it is where it is: waiting for what, or why it rolled back
    reason: str = ""

    @classmethod
    def start(cls, plan: RolloutPlan, *, champion: str, challenger: str,
              now: float) -> Rollout:
        """A rollout at its first step. The champion must be serving: it is the fallback."""
        if champion == challenger:
            raise InvalidValueError(f"champion and challenger are the same version {champion!r}; a "
                                    "rollout needs a different challenger")
        TrafficSplit({champion: 0.5, challenger: 0.5})  # both valid version strings
        now = _number("now", now)
        first = plan.steps[0]
        split = first.split(champion, challenger, sticky_key=plan.sticky_key)
        reason = f"started: {first.name}"
        return cls(plan, champion, challenger, 0, first.stage, split, now, now,
                   (Transition(now, None, None, first.stage, 0, split, reason),), (), reason)

    # ----------------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.stage in _TERMINAL

    @property
    def current_step(self) -> Step | None:
        return None if self.done else self.plan.steps[self.step]

    @property
    def last_known_good(self) -> str:
        return self.challenger if self.stage is Stage.COMPLETED else self.champion

    @property
    def retiring(self) -> str | None:
        """The version to undeploy once drained: the old champion, or the failed challenger."""
        if self.stage is Stage.COMPLETED:
            return self.champion
        return self.challenger if self.stage is Stage.ROLLED_BACK else None

    @property
    def retire_at(self) -> float | None:
        return self.step_started_at + self.plan.drain_s if self.done else None

    def _terminal_split(self, stage: Stage) -> TrafficSplit:
        version = self.challenger if stage is Stage.COMPLETED else self.champion
        return TrafficSplit.single(version, sticky_key=self.plan.sticky_key)

    def next_split(self) -> TrafficSplit:
        """The split that passing the current step would apply."""
        if self.done:
            raise InvalidValueError(f"the rollout of version {self.challenger} is {self.stage}; "
                                    "there is no next step")
        if self.step + 1 == len(self.plan.steps):
            return self._terminal_split(Stage.COMPLETED)
        return self.plan.steps[self.step + 1].split(self.champion, self.challenger,
                                                    sticky_key=self.plan.sticky_key)

    def _move(self, stage: Stage, step: int, split: TrafficSplit, reason: str,
              gates: tuple[GateResult, ...], now: float) -> Rollout:
        moved = Transition(now, self.stage, self.step, stage, step, split, reason, gates)
        return replace(self, stage=stage, step=step, split=split, step_started_at=now,
                       history=(*self.history, moved), gates=gates, reason=reason)

    def advance(self, observation: Observation, now: float) -> Rollout:
        """Judge the current step on ``observation`` (of this step only) at time ``now``.

        Returns the rolled-back rollout when a gate fails, the next step (or completed) when
        every gate passes and the bake time is over, else this step with the reasons it waits.
        """
        step = self.current_step
        if step is None:
            raise InvalidValueError(f"the rollout of version {self.challenger} is {self.stage}; "
                                    "start a new rollout to change traffic again")
        now = _number("now", now)
        since = observation.since
        if since is not None and since < self.step_started_at - _CLOCK_SLACK_S:
            raise InvalidValueError(
                f"the observation starts at {since}, before the current step ({step.name}) "
                f"started at {self.step_started_at}; collect counts from the step's start"
            )
        gates = tuple(evaluate_gates(self.plan, observation, min_requests=step.min_requests))
        failed = [g for g in gates if g.status is GateStatus.FAIL]
        if failed:
            reason = f"{step.name}: " + "; ".join(f"{g.name}: {g.reason}" for g in failed)
            return self._move(Stage.ROLLED_BACK, self.step,
                              self._terminal_split(Stage.ROLLED_BACK), reason, gates, now)
        # A clock that went back (another process, a restart) counts as no time baked.
        elapsed = max(0.0, now - self.step_started_at)
        waits = [f"{g.name}: {g.reason}" for g in gates if g.status is GateStatus.WAIT]
        if elapsed < step.bake_s:
            waits.insert(0, f"bake {elapsed:.0f}/{step.bake_s:g} s")
        if waits:
            return replace(self, gates=gates, reason=f"{step.name} waiting: " + "; ".join(waits))
        if self.step + 1 == len(self.plan.steps):
            return self._move(Stage.COMPLETED, self.step, self._terminal_split(Stage.COMPLETED),
                              f"{step.name} passed: rollout completed", gates, now)
        nxt = self.plan.steps[self.step + 1]
        return self._move(nxt.stage, self.step + 1, self.next_split(),
                          f"{step.name} passed: on to {nxt.name}", gates, now)

    def roll_back(self, reason: str, now: float) -> Rollout:
        """Roll back on request (an operator, a deadline): all traffic to the champion."""
        if self.done:
            raise InvalidValueError(f"the rollout of version {self.challenger} is already "
                                    f"{self.stage}")
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidValueError(
                "a rollback needs a reason, e.g. 'operator: error budget spent'")
        return self._move(Stage.ROLLED_BACK, self.step, self._terminal_split(Stage.ROLLED_BACK),
                          reason, (), _number("now", now))

    # ----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict(), "champion": self.champion,
            "challenger": self.challenger, "step": self.step, "stage": self.stage.value,
            "split": self.split.to_dict(), "started_at": self.started_at,
            "step_started_at": self.step_started_at,
            "history": [t.to_dict() for t in self.history],
            "gates": [g.to_dict() for g in self.gates], "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, raw: Any) -> Rollout:
        raw = _known("Rollout", raw, cls.__dataclass_fields__)
        return cls(
            RolloutPlan.from_dict(raw["plan"]), raw["champion"], raw["challenger"], raw["step"],
            Stage(raw["stage"]), TrafficSplit.from_dict(raw["split"]), raw["started_at"],
            raw["step_started_at"], tuple(Transition.from_dict(t) for t in raw["history"]),
            tuple(GateResult.from_dict(g) for g in raw.get("gates", ())), raw.get("reason", ""),
        )


def ledger_event(rollout: Rollout, transition: Transition, *, model_name: str) -> LedgerEvent:
    """The ledger row of one transition: a traffic step, whose traffic is the applied split.

    A rollback here is a traffic step too (reason and ``details.rolled_back``): the ledger's
    ROLLBACK kind means an alias moved back, and during a rollout the alias never moved.
    """
    from retrain.ledger import EventKind, LedgerEvent

    return LedgerEvent(
        kind=EventKind.TRAFFIC_STEP, model_name=model_name, at=transition.at,
        version=rollout.challenger, previous_version=rollout.champion,
        reasons=(transition.reason,), traffic=dict(transition.split.weights),
        details={"rollout": {"champion": rollout.champion, "challenger": rollout.challenger,
                             "started_at": rollout.started_at},
                 "rolled_back": transition.rolled_back, "transition": transition.to_dict()},
    )
