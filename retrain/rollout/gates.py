"""The gates: an observation of a step judged against the champion on the same traffic (health,
errors, latency, prediction shift, live metric).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from retrain import shift
from retrain.errors import InvalidValueError
from retrain.rollout.observe import LEVELS, Observation, PredictionSummary, VersionStats
from retrain.rollout.plan import GateLimits, RolloutPlan
from retrain.rollout.values import _count, _json, _known

#: PSI bins: equal-frequency bins of the champion's predictions (its deciles)
PSI_BINS = 10




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
    p99, base = chal.latency_p99_ms, champ.latency_p99_ms
    if p99 is None or base is None:
        missing = [who for who, value in (("challenger", p99), ("champion", base))
                   if value is None]
        return GateResult("latency_p99", GateStatus.WAIT,
                          f"no p99 latency observed for the {' and '.join(missing)}", inputs)
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


def _live_metric(limits: GateLimits, obs: Observation, greater: bool) -> GateResult:
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
    sign = 1.0 if greater else -1.0
    gain = sign * (chal.live_metric - champ.live_metric)
    inputs["gain"] = gain
    said = (f"live metric {chal.live_metric:.4g} against the champion's "
            f"{champ.live_metric:.4g} ({'higher' if greater else 'lower'} is "
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
        _live_metric(limits, observation, plan.greater_is_better),
    ]
