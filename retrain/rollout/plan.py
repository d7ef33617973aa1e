"""The rollout's plan: its stages and steps (a traffic share, a bake time, a minimum of requests)
and the limits its gates apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from retrain.errors import InvalidValueError
from retrain.rollout.limits import GateLimits
from retrain.rollout.values import _count, _known, _number
from serve.traffic import TrafficSplit

if TYPE_CHECKING:
    from retrain.config import Config


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
    #: the direction of the live metric (auc: True, rmse: False), from the task
    greater_is_better: bool = True

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
        if not isinstance(self.greater_is_better, bool):
            raise InvalidValueError(f"greater_is_better must be a bool, but got "
                                    f"{self.greater_is_better!r}")
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
        return cls(tuple(steps), section.gates, sticky_key=section.sticky_key,
                   drain_s=section.drain_s, greater_is_better=config.task.greater_is_better)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [s.to_dict() for s in self.steps], "gates": self.gates.to_dict(),
                "sticky_key": self.sticky_key, "drain_s": self.drain_s,
                "greater_is_better": self.greater_is_better}

    @classmethod
    def from_dict(cls, raw: Any) -> RolloutPlan:
        raw = _known("RolloutPlan", raw,
                     ("steps", "gates", "sticky_key", "drain_s", "greater_is_better"))
        gates = raw["gates"]
        if isinstance(gates, Mapping) and "greater_is_better" in gates:
            # saved before the metric's direction moved from the gates to the plan
            gates = {k: v for k, v in gates.items() if k != "greater_is_better"}
            raw = {"greater_is_better": raw["gates"]["greater_is_better"], **raw}
        return cls(tuple(Step.from_dict(s) for s in raw["steps"]), GateLimits.from_dict(gates),
                   sticky_key=raw.get("sticky_key"), drain_s=raw.get("drain_s", 30.0),
                   greater_is_better=raw.get("greater_is_better", True))
