"""The ledger's events: what each kind records (decisions, alias moves, rollbacks, rollout steps,
trigger checks), validated when made, JSON-safe.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from retrain.errors import InvalidValueError
from serve.schemas import clean_text

#: bump when the table changes; a ledger written by a newer schema is refused, not misread, and
#: an older one is migrated in place (2: the trigger and cycle kinds; 3: the admission kind)
SCHEMA_VERSION = 3
#: the values of `retrain.decide.Verdict`, spelled out so that this module stays import-light
VERDICTS: tuple[str, ...] = ("promote", "keep", "reject")
#: how far traffic weights may sum away from 1 (floating point splits such as 1/3 each)
TRAFFIC_TOLERANCE = 1e-6
#: the longest text an event keeps in one field (a reason, a name, a string in details);
#: longer ones are cut, marked with an ellipsis
MAX_TEXT_CHARS = 10_000


class EventKind(str, Enum):
    DECISION = "decision"  # a challenger was judged: promote, keep or reject
    ALIAS_MOVE = "alias_move"  # an alias (e.g. champion) now points at another version
    TRAFFIC_STEP = "traffic_step"  # the serving traffic split between versions changed
    ROLLBACK = "rollback"  # an alias was moved back to an earlier version
    TRIGGER = "trigger"  # the retraining triggers were evaluated: inputs and outcome in details
    CYCLE = "cycle"  # the controller started, finished or lost a retraining cycle
    ADMISSION = "admission"  # a person released a quarantined partition (retrain readmit)

    def __str__(self) -> str:
        return self.value


#: the kinds that move an alias; a rollback is an alias move with a different reason
_MOVES: tuple[EventKind, ...] = (EventKind.ALIAS_MOVE, EventKind.ROLLBACK)


def _is_number(value: object) -> bool:
    # bool is an int subclass, but True is not a timestamp or a weight
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _optional_name(name: str, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidValueError(
            f"LedgerEvent.{name} must be a non-empty string or None "
            f"(pass str(version) for numeric versions), but got {name}={value!r}"
        )


def _text(value: str) -> str:
    """Every text an event holds is valid UTF-8 and bounded, so that the ledger can always be
    read and printed: a lone surrogate (which came from a JSON escape such as \\ud800) reads
    as U+FFFD, and a text past `MAX_TEXT_CHARS` is cut. Applied when an event is made and
    again when a stored row is read, so rows stored before this check read cleanly too."""
    return clean_text(value, max_chars=MAX_TEXT_CHARS)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {_text(k) if isinstance(k, str) else k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _json_copy(name: str, value: object) -> dict:
    """A deep, JSON-normalised copy: fails now rather than at append, and round-trips exactly."""
    if not isinstance(value, dict):
        raise InvalidValueError(f"LedgerEvent.{name} must be a dict, but got {name}={value!r}")
    try:
        return _clean(json.loads(json.dumps(value, allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(
            f"LedgerEvent.{name} must be JSON-serialisable (str, finite numbers, bool, None, "
            f"lists, dicts with str keys), but got {name}={value!r}: {exc}"
        ) from None


def _traffic(value: object) -> dict[str, float]:
    if not isinstance(value, dict):
        raise InvalidValueError(f"LedgerEvent.traffic must be a dict version -> weight, but got "
                                f"traffic={value!r}")
    out: dict[str, float] = {}
    for version, weight in value.items():
        if not isinstance(version, str) or not version:
            raise InvalidValueError(
                f"LedgerEvent.traffic keys must be non-empty version strings, but got {version=}"
            )
        if not _is_number(weight) or not math.isfinite(weight) or weight < 0:
            raise InvalidValueError(
                f"LedgerEvent.traffic weights must be finite numbers >= 0, but got "
                f"{version!r}: {weight=}"
            )
        out[_text(version)] = float(weight)
    total = sum(out.values())
    if out and abs(total - 1.0) > TRAFFIC_TOLERANCE:
        raise InvalidValueError(
            f"LedgerEvent.traffic weights must sum to 1 (within {TRAFFIC_TOLERANCE}), "
            f"but got {total=} from traffic={value!r}"
        )
    return out


@dataclass(frozen=True, kw_only=True)
class LedgerEvent:
    """One thing that happened to a model; validated and normalised on construction."""

    kind: EventKind
    model_name: str
    #: unix seconds when it happened (not when it was appended)
    at: float = field(default_factory=time.time)
    #: the subject version: the challenger decided on, or the alias' new target
    version: str | None = None
    previous_version: str | None = None
    #: for alias moves and rollbacks, e.g. "champion"
    alias: str | None = None
    #: for decisions: "promote" | "keep" | "reject"
    verdict: str | None = None
    reasons: tuple[str, ...] = ()
    #: for traffic steps: version -> weight, summing to 1
    traffic: dict[str, float] = field(default_factory=dict)
    #: e.g. {"partitions": [{"value": "4", "rows": 100, "sha256": "..."}]}
    data_snapshot: dict = field(default_factory=dict)
    #: the search experiment behind it (path or id)
    search: str | None = None
    #: MLflow run id of the cycle
    run_id: str | None = None
    details: dict = field(default_factory=dict)
    #: assigned by `Ledger.append`; None until stored
    seq: int | None = None

    def __post_init__(self) -> None:
        # Frozen: the normalised values (enum kind, float at, tuple reasons, copied dicts) are
        # written once here, so that a stored and a re-read event compare equal.
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        kind = self.kind
        try:
            put("kind", EventKind(kind))
        except ValueError:
            raise InvalidValueError(
                f"LedgerEvent.kind must be one of {[k.value for k in EventKind]}, but got {kind=}"
            ) from None
        model_name = self.model_name
        if not isinstance(model_name, str) or not model_name:
            raise InvalidValueError(f"LedgerEvent.model_name must be a non-empty string, but got "
                                    f"{model_name=}")
        put("model_name", _text(model_name))
        at = self.at
        if not _is_number(at) or not math.isfinite(at):
            raise InvalidValueError(f"LedgerEvent.at must be finite unix seconds, but got {at=}")
        put("at", float(at))
        for name in ("version", "previous_version", "alias", "search", "run_id"):
            _optional_name(name, getattr(self, name))
            if getattr(self, name) is not None:
                put(name, _text(getattr(self, name)))

        verdict = self.verdict
        if isinstance(verdict, Enum):  # accept retrain.decide.Verdict, store its plain value
            verdict = verdict.value
            put("verdict", verdict)
        if verdict is not None and verdict not in VERDICTS:
            raise InvalidValueError(f"LedgerEvent.verdict must be one of {list(VERDICTS)} or None, "
                                    f"but got {verdict=}")
        reasons = self.reasons
        # A bare string is iterable too and would be stored one character per reason.
        if isinstance(reasons, str) or not isinstance(reasons, (tuple, list)):
            raise InvalidValueError(
                f"LedgerEvent.reasons must be a tuple of strings, but got {reasons=}")
        if not all(isinstance(reason, str) for reason in reasons):
            raise InvalidValueError(
                f"LedgerEvent.reasons must hold strings only, but got {reasons=}")
        put("reasons", tuple(_text(reason) for reason in reasons))
        put("traffic", _traffic(self.traffic))
        put("data_snapshot", _json_copy("data_snapshot", self.data_snapshot))
        put("details", _json_copy("details", self.details))
        seq = self.seq
        if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 1):
            raise InvalidValueError(
                f"LedgerEvent.seq is assigned by the ledger (an int >= 1) or None, "
                f"but got {seq=}")
        self._check_kind()

    def _check_kind(self) -> None:
        kind, alias, version, verdict = self.kind, self.alias, self.version, self.verdict
        if kind in _MOVES and (alias is None or version is None):
            raise InvalidValueError(
                f"a {kind.value} event needs the alias that moved and the version it now points "
                f"at, but got {alias=}, {version=}"
            )
        if kind is EventKind.DECISION and verdict is None:
            raise InvalidValueError(f"a decision event needs a verdict, one of {list(VERDICTS)}, "
                                    f"but got {verdict=}")
        if kind is not EventKind.DECISION and verdict is not None:
            raise InvalidValueError(f"only decision events carry a verdict; a {kind.value} event "
                                    f"explains itself in reasons, but got {verdict=}")
        if kind is EventKind.TRAFFIC_STEP and not self.traffic:
            raise InvalidValueError("a traffic_step event needs traffic (version -> weight summing "
                                    f"to 1), but got traffic={self.traffic}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: enums as their values, tuples as lists, containers copied."""
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}
        out["kind"] = self.kind.value
        out["reasons"] = list(self.reasons)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LedgerEvent:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidValueError(f"LedgerEvent.from_dict got unknown keys {unknown}; "
                                    f"expected some of {sorted(known)}")
        missing = sorted({"kind", "model_name"} - set(data))
        if missing:
            raise InvalidValueError(
                f"LedgerEvent.from_dict needs keys {missing}, but got {sorted(data)}")
        return cls(**data)


@dataclass(frozen=True)
class ServedAt:
    """Where an alias pointed during one period, and why."""

    version: str
    #: when the alias moved to it
    since: float
    #: the alias move or rollback that put it there
    because: LedgerEvent
    #: the latest decision on that version at or before `since`, if any
    decision: LedgerEvent | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "since": self.since,
            "because": self.because.to_dict(),
            "decision": None if self.decision is None else self.decision.to_dict(),
        }
