"""`decide(comparison, policy) -> Decision`: promote, keep or reject, with every reason."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum

from retrain.config import EvaluationConfig
from retrain.evaluate import Comparison


class Verdict(str, Enum):
    PROMOTE = "promote"  # the challenger becomes champion
    KEEP = "keep"  # the champion stays; the challenger was not better enough
    REJECT = "reject"  # the challenger fails an absolute requirement

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reasons: tuple[str, ...]
    metric: str
    challenger_score: float
    champion_score: float | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["verdict"] = self.verdict.value
        out["reasons"] = list(self.reasons)
        return out

    def summary(self) -> str:
        return f"{self.verdict.value.upper()}: " + "; ".join(self.reasons)


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def decide(comparison: Comparison, policy: EvaluationConfig) -> Decision:
    metric = comparison.metric
    better = comparison.greater_is_better
    challenger = comparison.challenger[metric]
    base = dict(metric=metric, challenger_score=challenger)
    if math.isnan(challenger):
        return Decision(
            Verdict.REJECT,
            (f"challenger {metric} is undefined on this holdout (one class only?)",),
            **base,
        )
    reasons: list[str] = []
    if policy.min_score is not None:
        passes = challenger >= policy.min_score if better else challenger <= policy.min_score
        relation = ">=" if better else "<="
        if not passes:
            return Decision(
                Verdict.REJECT,
                (f"challenger {metric} {_fmt(challenger)} misses the required "
                 f"{relation} {_fmt(policy.min_score)}",),
                **base,
            )
        reasons.append(f"challenger {metric} {_fmt(challenger)} {relation} "
                       f"{_fmt(policy.min_score)} (min_score)")
    if comparison.champion is None:
        reasons.append("no champion yet: the first model passing the thresholds is promoted")
        return Decision(Verdict.PROMOTE, tuple(reasons), **base)
    champion = comparison.champion[metric]
    base["champion_score"] = champion
    improvement = comparison.improvement
    assert improvement is not None
    versus = (f"challenger {metric} {_fmt(challenger)} vs champion "
              f"v{comparison.champion_version} {_fmt(champion)} on the same "
              f"{comparison.holdout_rows} holdout rows")
    if math.isnan(champion):
        return Decision(Verdict.KEEP, (*reasons, versus, "champion score undefined"), **base)
    # Strictly greater: a tie is no evidence that the challenger is better.
    if improvement > policy.min_improvement:
        reasons += [versus, f"improvement {improvement:+.4f} > required "
                            f"{policy.min_improvement:+.4f}"]
        return Decision(Verdict.PROMOTE, tuple(reasons), **base)
    reasons += [versus, f"improvement {improvement:+.4f} <= required {policy.min_improvement:+.4f}"]
    return Decision(Verdict.KEEP, tuple(reasons), **base)
