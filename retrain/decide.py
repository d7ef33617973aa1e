"""`decide(comparison, policy) -> Decision`: promote, keep or reject, with every reason.

Each rule of the policy becomes a `Check` that passed or failed, so the decision is
machine-readable and printable. Order of verdicts:

- REJECT when a hard requirement fails: the value threshold, a slice regression, a guardrail
  (latency, size). The challenger must not serve, whatever its average score.
- KEEP when the requirements hold but the evidence of being better (superiority) or not worse
  (non-inferiority) is missing: the champion stays.
- PROMOTE otherwise. The first model (no champion) needs the value threshold and the absolute
  guardrails only.

The value threshold guards against serving a bad model; it must not protect one. When the
champion itself misses ``min_score`` on the new holdout, a challenger that also misses it is
still promoted when it beats the champion with evidence (the better of two models below the
bar serves), and the decision carries an alert that the serving model is below the bar, whatever
the verdict. Ratio guardrails apply only above their floors (``min_size_mb``,
``min_latency_ms``, ``min_batch_ms_per_1k``): a 1.5 MB model ten times the size of a 150 kB
one costs nothing that matters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from retrain.config import EvaluationConfig
from retrain.evaluate import Comparison


class Verdict(str, Enum):
    PROMOTE = "promote"  # the challenger becomes champion
    KEEP = "keep"  # the champion stays; no evidence the challenger is better enough
    REJECT = "reject"  # the challenger fails a hard requirement

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str
    #: a failed hard check rejects; a failed soft check (evidence) keeps the champion
    hard: bool = True
    #: the outcome in a few words, for tables (e.g. "size ratio 10.04x > 10x")
    short: str = ""


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reasons: tuple[str, ...]
    metric: str
    challenger_score: float
    champion_score: float | None = None
    checks: tuple[Check, ...] = ()
    #: conditions a person must hear of whatever the verdict (the champion below min_score)
    alerts: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict.value,
            "reasons": list(self.reasons),
            "metric": self.metric,
            "challenger_score": self.challenger_score,
            "champion_score": self.champion_score,
            "checks": [c.__dict__ for c in self.checks],
            "alerts": list(self.alerts),
        }

    def summary(self) -> str:
        return f"{self.verdict.value.upper()}: " + "; ".join(self.reasons) + "".join(
            f"; ALERT: {a}" for a in self.alerts)

    @property
    def deciding(self) -> str:
        """The check that decided, in a few words: the first failed one, else the evidence."""
        failed = [c for c in self.checks if not c.passed]
        pick = failed[0] if failed else next(
            (c for c in self.checks if c.name == "evidence"), None)
        return "first model" if pick is None else pick.short or pick.name


def _f(value: float) -> str:
    return f"{value:.4f}"


def _below(c: Comparison, policy: EvaluationConfig, score: float) -> bool:
    if policy.min_score is None or math.isnan(score):
        return False
    return score < policy.min_score if c.greater_is_better else score > policy.min_score


def _value_check(c: Comparison, policy: EvaluationConfig) -> Check | None:
    if policy.min_score is None:
        return None
    score = c.challenger.metrics[c.metric]
    passes = not _below(c, policy, score)
    relation = ">=" if c.greater_is_better else "<="
    detail = (f"challenger {c.metric} {_f(score)} {'' if passes else 'not '}{relation} "
              f"{_f(policy.min_score)} (min_score)")
    short = f"{c.metric} {_f(score)} below min_score {_f(policy.min_score)}"
    if not passes and c.champion is not None \
            and _below(c, policy, c.champion.metrics[c.metric]):
        # the bar must not protect a champion that misses it too: the evidence decides
        return Check("value", True, f"{detail}, but champion v{c.champion.version} misses it "
                     f"too ({_f(c.champion.metrics[c.metric])}): the evidence decides",
                     short="both below min_score")
    return Check("value", passes, detail, short=short if not passes else "")


def _evidence_check(c: Comparison, policy: EvaluationConfig) -> Check:
    d = c.difference
    assert d is not None and c.champion is not None
    interval = (f"{c.metric} difference {d.estimate:+.4f}, {d.confidence:.1%} interval "
                f"[{d.low:+.4f}, {d.high:+.4f}] ({d.method}) vs champion v{c.champion.version} "
                f"on {c.holdout_rows} rows")
    if math.isnan(d.low):
        return Check("evidence", False, f"{interval}: undefined on this holdout", hard=False,
                     short="interval undefined")
    if policy.mode == "non_inferiority":
        bar = -policy.non_inferiority_margin
        passed = d.low > bar
        return Check("evidence", passed,
                     f"{interval}; lower bound {'>' if passed else '<='} {bar:+.4f} "
                     "(non-inferiority margin)", hard=False,
                     short=f"lower bound {d.low:+.4f} {'>' if passed else '<='} {bar:+.4f}")
    bar = policy.min_improvement
    label = "min_improvement"
    if policy.min_relative_improvement is not None:
        relative = policy.min_relative_improvement * abs(c.champion.metrics[c.metric])
        if relative > bar:
            bar, label = relative, f"{policy.min_relative_improvement:.1%} of the champion"
    passed = d.low > bar
    if passed:
        short = f"lower bound {d.low:+.4f} > {bar:+.4f}"
    elif d.low <= 0 <= d.high:
        short = "interval includes 0"
    elif d.high < 0:
        short = "challenger worse"
    else:
        short = f"lower bound {d.low:+.4f} <= {bar:+.4f} ({label})"
    return Check("evidence", passed,
                 f"{interval}; lower bound {'>' if passed else '<='} {bar:+.4f} ({label})",
                 hard=False, short=short)


def _slice_checks(c: Comparison, policy: EvaluationConfig) -> list[Check]:
    tolerance = {s.column: s.tolerance for s in policy.slices}
    checks = []
    for s in c.slices:
        limit = tolerance[s.column]
        passed = s.delta >= -limit
        checks.append(Check(
            f"slice {s.column}={s.group}", passed,
            f"slice {s.column}={s.group} ({s.rows} rows): {c.metric} {_f(s.challenger)} vs "
            f"{_f(s.champion)}, change {s.delta:+.4f} "
            f"{'within' if passed else 'beyond'} tolerance {limit:.4f}",
            short=f"slice {s.column}={s.group} {s.delta:+.4f}",
        ))
    return checks


def _guardrail_checks(c: Comparison, policy: EvaluationConfig) -> list[Check]:
    g = policy.guardrails
    mine = c.challenger.footprint
    theirs = c.champion.footprint if c.champion else None
    if mine is None:
        return []
    checks = []
    if g.max_latency_ms is not None:
        ok = mine.single_row_ms <= g.max_latency_ms
        checks.append(Check("latency", ok, f"single-row latency {mine.single_row_ms:.2f} ms "
                            f"{'<=' if ok else '>'} {g.max_latency_ms:.2f} ms",
                            short=f"latency {mine.single_row_ms:.2f} ms"))
    if g.max_size_mb is not None:
        mb = mine.size_bytes / 1e6
        ok = mb <= g.max_size_mb
        checks.append(Check("size", ok, f"model size {mb:.2f} MB {'<=' if ok else '>'} "
                            f"{g.max_size_mb:.2f} MB", short=f"size {mb:.2f} MB"))
    if theirs is None:
        return checks
    ratios = [
        ("latency ratio", g.max_latency_ratio, mine.single_row_ms, theirs.single_row_ms, "ms",
         g.min_latency_ms, "min_latency_ms", 1.0),
        ("batch latency ratio", g.max_batch_latency_ratio, mine.batch_ms_per_1k,
         theirs.batch_ms_per_1k, "ms/1k rows", g.min_batch_ms_per_1k, "min_batch_ms_per_1k",
         1.0),
        ("size ratio", g.max_size_ratio, mine.size_bytes, theirs.size_bytes, "bytes",
         g.min_size_mb, "min_size_mb", 1e6),
    ]
    for name, limit, value, base, unit, floor, floor_name, scale in ratios:
        if limit is None or base <= 0:
            continue
        ratio = value / base
        if floor and value <= floor * scale:
            # below the floor a ratio says nothing a caller or a bill would notice
            checks.append(Check(name, True, f"{name} {ratio:.2f}x ({value:.4g} vs {base:.4g} "
                                f"{unit}) not checked: {value / scale:.4g} is within "
                                f"{floor_name}={floor:g}"))
            continue
        ok = ratio <= limit
        checks.append(Check(name, ok, f"{name} {ratio:.2f}x ({value:.4g} vs {base:.4g} {unit}) "
                            f"{'<=' if ok else '>'} {limit:.2f}x",
                            short=f"{name} {ratio:.2f}x {'<=' if ok else '>'} {limit:g}x"))
    return checks


def decide(comparison: Comparison, policy: EvaluationConfig) -> Decision:
    c = comparison
    score = c.challenger.metrics[c.metric]
    champion_score = c.champion.metrics[c.metric] if c.champion else None
    if math.isnan(score):
        check = Check("value", False, f"challenger {c.metric} is undefined on this holdout "
                      "(one class only?)", short=f"{c.metric} undefined")
        return Decision(Verdict.REJECT, (check.detail,), metric=c.metric, challenger_score=score,
                        champion_score=champion_score, checks=(check,))
    alerts = []
    if c.champion is not None and policy.min_score is not None \
            and _below(c, policy, c.champion.metrics[c.metric]):
        alerts.append(f"the serving champion v{c.champion.version} scores "
                      f"{_f(c.champion.metrics[c.metric])} on the new holdout, below min_score "
                      f"{_f(policy.min_score)}")
    checks = [x for x in [_value_check(c, policy)] if x is not None]
    checks += _guardrail_checks(c, policy)
    if c.champion is not None:
        checks += _slice_checks(c, policy)
        checks.append(_evidence_check(c, policy))
    failed_hard = [x for x in checks if x.hard and not x.passed]
    failed_soft = [x for x in checks if not x.hard and not x.passed]
    if failed_hard:
        verdict, shown = Verdict.REJECT, failed_hard
    elif failed_soft:
        verdict, shown = Verdict.KEEP, failed_soft
    else:
        verdict, shown = Verdict.PROMOTE, checks
    reasons = [x.detail for x in shown]
    if c.champion is None and verdict is Verdict.PROMOTE:
        reasons.append("no champion yet: the first model passing the thresholds is promoted")
    return Decision(verdict, tuple(reasons), metric=c.metric, challenger_score=score,
                    champion_score=champion_score, checks=tuple(checks), alerts=tuple(alerts))
