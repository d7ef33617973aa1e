"""`evaluate`: the conditions in priority order under the cooldown and the cap, giving what fired
or held back and the new state.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from retrain.config import TriggersConfig
from retrain.triggers.conditions import (
    _demand,
    _drift,
    _opportunity,
    _performance,
    _schedule,
    _schedule_spec,
)
from retrain.triggers.inputs import Hold, TriggerInputs, TriggerKind, _iso
from retrain.triggers.state import TriggerState


@dataclass(frozen=True)
class TriggerCheck:
    """One trigger on one check: does its condition hold, did it fire, if not why not."""

    kind: TriggerKind
    #: the condition holds now (before debounce, cooldown and cap)
    holds: bool
    fired: bool
    #: why it did not fire (None when it fired)
    held_by: Hold | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "holds": self.holds, "fired": self.fired,
                "held_by": None if self.held_by is None else self.held_by.value,
                "detail": self.detail}


@dataclass(frozen=True)
class Evaluation:
    """The outcome of one check: fired or not, why, on what inputs, and the next state."""

    at: datetime
    #: the trigger that asks for a cycle now, or None
    fired: TriggerKind | None
    #: one line a person can read
    reason: str
    #: every trigger, in priority order
    checks: tuple[TriggerCheck, ...]
    #: the gate (cooldown or cap) that held back a trigger that was otherwise ready
    suppressed_by: Hold | None
    #: the on-demand requests the cycle serves (empty unless it starts)
    demand_ids: tuple[str, ...]
    inputs: dict[str, Any]
    #: the policy the check ran under, as configured
    policy: dict[str, Any]
    #: persist this; call ``state.started(now)`` when the cycle actually starts
    state: TriggerState
    #: when the schedule is next due (None: no schedule, or already due)
    next_schedule: datetime | None = None

    def check(self, kind: TriggerKind) -> TriggerCheck:
        return next(c for c in self.checks if c.kind is kind)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "fired": None if self.fired is None else self.fired.value,
            "reason": self.reason,
            "suppressed_by": None if self.suppressed_by is None else self.suppressed_by.value,
            "demand_ids": list(self.demand_ids),
            "checks": [c.to_dict() for c in self.checks],
            "inputs": self.inputs,
            "policy": self.policy,
            "state": self.state.to_dict(),
            "next_schedule": _iso(self.next_schedule),
        }


def _cap(config: TriggersConfig, starts: tuple[datetime, ...],
         now: datetime) -> tuple[bool, str]:
    """Whether the cap blocks a start now, and the words for it. ``starts``: within window."""
    if len(starts) < config.max_cycles:
        return False, ""
    frees = starts[len(starts) - config.max_cycles] + timedelta(seconds=config.period_s)
    return True, (f"{len(starts)} cycles started in the last {config.period_s:g} s "
                  f"(max_cycles={config.max_cycles}); the next may start at {frees.isoformat()}")


def _cooldown(config: TriggersConfig, last_start: datetime | None,
              now: datetime) -> tuple[bool, str]:
    if last_start is None:
        return False, ""
    ends = last_start + timedelta(seconds=config.cooldown_s)
    if now >= ends:
        return False, ""
    return True, (f"the last cycle started at {last_start.isoformat()}, cooldown "
                  f"{config.cooldown_s:g} s lasts until {ends.isoformat()}")


def evaluate(config: TriggersConfig, state: TriggerState, inputs: TriggerInputs) -> Evaluation:
    """Decide whether a cycle should start now; pure. See the module docstring for the rules."""
    now = inputs.now
    window_start = now - timedelta(seconds=config.period_s)
    # a start after `now` (the clock stepped back) still counts: err towards fewer cycles
    starts = tuple(s for s in state.starts if s > window_start)

    performance, performance_streak = _performance(config, state.performance_streak, inputs)
    drift, drift_streak = _drift(config, state.drift_streak, inputs)
    schedule = _schedule(config, state, now)
    conditions = (_demand(inputs), performance, _opportunity(config, inputs), drift,
                  schedule.condition)

    capped, cap_text = _cap(config, starts, now)
    cooling, cooldown_text = _cooldown(config, state.last_start, now)

    fired: TriggerKind | None = None
    suppressed_by: Hold | None = None
    gate_text = ""
    checks: list[TriggerCheck] = []
    for c in conditions:
        if not c.ready:
            checks.append(TriggerCheck(c.kind, c.holds, False, c.held_by, c.detail))
            continue
        if fired is not None:
            checks.append(TriggerCheck(c.kind, c.holds, False, Hold.OUTRANKED,
                                       f"{c.detail}; served by the {fired} cycle"))
            continue
        if capped:
            gate, text = Hold.CAP, cap_text
            if c.kind is TriggerKind.ON_DEMAND:
                text += "; on demand ignores the cooldown but respects the cap"
        elif cooling and c.kind is not TriggerKind.ON_DEMAND:
            gate, text = Hold.COOLDOWN, cooldown_text
        else:
            fired = c.kind
            note = ("; cooldown does not apply on demand"
                    if c.kind is TriggerKind.ON_DEMAND and cooling else "")
            checks.append(TriggerCheck(c.kind, c.holds, True, None, c.detail + note))
            continue
        if suppressed_by is None:
            suppressed_by, gate_text = gate, f"{c.kind} ready ({c.detail}) but held: {text}"
        checks.append(TriggerCheck(c.kind, c.holds, False, gate, f"{c.detail}; held: {text}"))

    # the cycle serves a due schedule slot whichever trigger fired; a held slot stays due
    slot = schedule.slot if fired is not None and schedule.slot is not None else schedule.armed
    new_state = replace(state, starts=starts, drift_streak=drift_streak,
                        performance_streak=performance_streak, schedule_slot=slot,
                        schedule_spec=_schedule_spec(config))

    reason = _reason(fired, suppressed_by, gate_text, checks)
    demand_ids = tuple(d.id for d in inputs.demands) if fired is TriggerKind.ON_DEMAND else ()
    return Evaluation(
        at=now, fired=fired, reason=reason, checks=tuple(checks), suppressed_by=suppressed_by,
        demand_ids=demand_ids, inputs=inputs.to_dict(),
        policy=config.model_dump(mode="json"), state=new_state,
        next_schedule=schedule.next_at,
    )


def _reason(fired: TriggerKind | None, suppressed_by: Hold | None, gate_text: str,
            checks: list[TriggerCheck]) -> str:
    """One line a person reads: what fired, what held a ready trigger, or why none fired."""
    if fired is not None:
        reason = f"{fired} fired: {next(c.detail for c in checks if c.fired)}"
        outranked = [str(c.kind) for c in checks if c.held_by is Hold.OUTRANKED]
        return reason + (f" (also ready: {', '.join(outranked)})" if outranked else "")
    if suppressed_by is not None:
        return gate_text
    return "no trigger: " + "; ".join(f"{c.kind} {c.detail}" for c in checks)
