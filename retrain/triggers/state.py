"""What the triggers remember between checks (streaks, the last start, the schedule's slot),
persisted by the controller as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from retrain.errors import ConfigError
from retrain.triggers.inputs import _iso, _utc

#: bump when `TriggerState.to_dict` changes shape; older states are still read
STATE_VERSION = 1


def _time_from(raw: Any, key: str) -> datetime | None:
    value = raw.get(key)
    if value is None:
        return None
    try:
        return _utc(datetime.fromisoformat(value), key)
    except (TypeError, ValueError, ConfigError):
        raise ConfigError(
            f"trigger state: {key} must be an ISO time with a UTC offset or null, but got "
            f"{value!r}; fix or delete the state file to start afresh"
        ) from None


def _start_from(value: Any) -> datetime:
    """One of the recorded cycle starts: a time, never null."""
    start = _time_from({"starts": value}, "starts")
    if start is None:
        raise ConfigError("trigger state: starts must hold ISO times, not null; fix or delete "
                          "the state file to start afresh")
    return start


def _count_from(raw: Any, key: str) -> int:
    value = raw.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(
            f"trigger state: {key} must be a whole number >= 0, but got {value!r}; fix or "
            f"delete the state file to start afresh"
        )
    return value


@dataclass(frozen=True)
class TriggerState:
    """What the triggers remember between checks; persisted by the controller as JSON.

    Change it only through `evaluate` (returns the next state) and `started` (a cycle began).
    """

    #: when the last cycle started (cooldown and the interval schedule count from it)
    last_start: datetime | None = None
    #: cycle starts that may still count against the cap (pruned to the window by `evaluate`)
    starts: tuple[datetime, ...] = ()
    #: consecutive checks on which the drift / performance condition held
    drift_streak: int = 0
    performance_streak: int = 0
    #: the last schedule slot handled (cron: the slot's time; interval: the time the interval
    #: was due, or when the schedule was armed)
    schedule_slot: datetime | None = None
    #: the schedule ``schedule_slot`` belongs to ("cron:0 3 * * 1", "interval:3600.0"); a
    #: changed schedule is re-armed instead of firing for the old one's slots
    schedule_spec: str | None = None

    def __post_init__(self) -> None:
        if self.last_start is not None:
            object.__setattr__(self, "last_start", _utc(self.last_start, "last_start"))
        if self.schedule_slot is not None:
            object.__setattr__(self, "schedule_slot", _utc(self.schedule_slot, "schedule_slot"))
        object.__setattr__(
            self, "starts", tuple(sorted(_utc(s, "starts") for s in self.starts))
        )

    def started(self, at: datetime) -> TriggerState:
        """The state after a cycle started at ``at``, whatever started it.

        The start counts for cooldown, cap and the interval schedule. Debounce counts restart
        from zero: the condition must build up again against the cycle's outcome.
        """
        at = _utc(at, "at")
        return replace(self, last_start=at, starts=(*self.starts, at), drift_streak=0,
                       performance_streak=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "last_start": _iso(self.last_start),
            "starts": [s.isoformat() for s in self.starts],
            "drift_streak": self.drift_streak,
            "performance_streak": self.performance_streak,
            "schedule_slot": _iso(self.schedule_slot),
            "schedule_spec": self.schedule_spec,
        }

    @classmethod
    def from_dict(cls, raw: Any) -> TriggerState:
        """Read a state written by `to_dict`; a malformed one raises `ConfigError`."""
        if not isinstance(raw, dict):
            raise ConfigError(
                f"trigger state must be a mapping as written by TriggerState.to_dict, but got "
                f"{type(raw).__name__}; fix or delete the state file to start afresh"
            )
        version = raw.get("version", STATE_VERSION)
        if version != STATE_VERSION:
            raise ConfigError(
                f"trigger state has version {version!r}, this retrain reads version "
                f"{STATE_VERSION}; upgrade retrain or delete the state file to start afresh"
            )
        starts = raw.get("starts", [])
        if not isinstance(starts, list):
            raise ConfigError(
                f"trigger state: starts must be a list of ISO times, but got {starts!r}"
            )
        spec = raw.get("schedule_spec")
        if spec is not None and not isinstance(spec, str):
            raise ConfigError(f"trigger state: schedule_spec must be text, but got {spec!r}")
        return cls(
            last_start=_time_from(raw, "last_start"),
            starts=tuple(_start_from(s) for s in starts),
            drift_streak=_count_from(raw, "drift_streak"),
            performance_streak=_count_from(raw, "performance_streak"),
            schedule_slot=_time_from(raw, "schedule_slot"),
            schedule_spec=spec,
        )
