"""The limits the rollout's gates apply (`GateLimits`): a core value that is also the config's
``rollout.gates`` section, so this module imports nothing of the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from retrain.errors import InvalidValueError
from retrain.rollout.values import _count, _known, _number, _optional_number


@dataclass(frozen=True)
class GateLimits:
    """Thresholds of the gates; every comparison is challenger against champion. Also the
    config's ``rollout.gates`` section (pydantic validates it as this dataclass: unknown keys
    refused, these checks applied), so each limit is defined once."""

    __pydantic_config__ = {"extra": "forbid"}  # read by pydantic only; not a field

    #: the challenger's error rate may exceed the champion's by at most this
    max_error_rate: float = 0.01
    #: p99 latency: challenger <= max_latency_ratio x champion + latency_slack_ms (None: off)
    max_latency_ratio: float | None = 1.5
    latency_slack_ms: float = 5.0
    #: absolute p99 limit of the challenger (None: none)
    max_latency_ms: float | None = None
    #: prediction shift against the champion's: fails when PSI reaches this *and* a KS test
    #: is significant at shift_alpha (None: off)
    max_prediction_psi: float | None = 0.2
    shift_alpha: float = 0.01
    #: where labels have arrived: the challenger's live metric may be worse by this (None: off)
    live_metric_tolerance: float | None = 0.02
    #: labelled predictions per version before the live metric counts
    min_labelled: int = 200

    def __post_init__(self) -> None:
        if not 0 <= _number("max_error_rate", self.max_error_rate) < 1:
            raise InvalidValueError(
                f"max_error_rate must be in [0, 1), but got {self.max_error_rate}")
        for name in ("max_latency_ratio", "max_latency_ms", "max_prediction_psi"):
            value = _optional_number(name, getattr(self, name))
            if value is not None and value <= 0:
                raise InvalidValueError(f"{name} must be > 0 or None (no check), but got {value}")
        _number("latency_slack_ms", self.latency_slack_ms, low=0)
        _optional_number("live_metric_tolerance", self.live_metric_tolerance, low=0)
        if not 0 < _number("shift_alpha", self.shift_alpha) < 1:
            raise InvalidValueError(f"shift_alpha must be in (0, 1), but got {self.shift_alpha}")
        _count("min_labelled", self.min_labelled, low=1)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, raw: Any) -> GateLimits:
        return cls(**_known("GateLimits", raw, cls.__dataclass_fields__))
