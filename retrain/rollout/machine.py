"""The rollout's state machine: `Rollout.advance` from one observation to the next transition, and
the ledger event each transition records.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from retrain.errors import InvalidValueError
from retrain.rollout.gates import GateResult, GateStatus, evaluate_gates
from retrain.rollout.observe import Observation
from retrain.rollout.plan import _TERMINAL, RolloutPlan, Stage, Step
from retrain.rollout.values import _known, _number
from serve.traffic import TrafficSplit

if TYPE_CHECKING:
    from retrain.ledger import LedgerEvent


# an observation may start a little before the step did (clocks of two processes)
_CLOCK_SLACK_S = 1.0




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
