"""Moves made through the admin endpoints, noted for the controller when they are made.

The Serve app changes the registry from the serving side, which imports nothing of retrain and
may run where the ledger is out of reach. So each move it makes (``POST /admin/promote``,
``PUT /admin/traffic``, ``POST /admin/rollback``) is noted in ``<root>/moves/`` before it is
answered, with when, by whom and in which request; the controller copies each note into the
ledger with the move's own time (`retrain.operations.record_admin_moves`) and consumes it.
A move whose note could not be written is still seen by the controller's registry check (an
alias move), without its caller.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from serve.inference_log import inbox
from serve.inference_log.schema import MAX_REASON_CHARS
from serve.schemas import clean_text
from serve.traffic import TrafficSplit, is_version

MOVES = "moves"
Action = Literal["promote", "traffic", "rollback"]
ACTIONS: tuple[str, ...] = ("promote", "traffic", "rollback")


@dataclass(frozen=True)
class AdminMove:
    """One move made through an admin endpoint."""

    id: str
    action: Action
    #: unix seconds, when the registry was changed
    made_at: float
    #: who asked: "http <client address>"
    made_by: str
    #: the HTTP request's id (``x-request-id``)
    request_id: str
    #: promote: the version the alias now names; rollback: the alias' version (all traffic)
    version: str | None = None
    #: promote: the version the alias named before
    previous: str | None = None
    #: promote: the alias moved
    alias: str | None = None
    #: traffic: the split's weights as written
    weights: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, but got {self.action!r}")
        if not (isinstance(self.made_at, float | int) and math.isfinite(self.made_at)):
            raise ValueError(f"made_at must be unix seconds, but got {self.made_at!r}")
        for name in ("version", "previous"):
            value = getattr(self, name)
            if value is not None and not is_version(value):
                raise ValueError(f"{name} must be a version number, but got {value!r}")
        if (self.action == "traffic") != (self.weights is not None):
            raise ValueError("a traffic move, and only one, carries the split's weights")
        if self.weights is not None:
            TrafficSplit(self.weights)  # raises, saying why, for weights no split can have
        if self.action != "traffic" and self.version is None:
            raise ValueError(f"a {self.action} move names its version")


def note_move(path: str | os.PathLike[str], action: Action, *, made_by: str, request_id: str,
              version: str | None = None, previous: str | None = None,
              alias: str | None = None, weights: dict[str, float] | None = None) -> AdminMove:
    """Note a move just made, for the controller; raises OSError when the store fails."""
    now = datetime.now(timezone.utc)
    move = AdminMove(id=inbox.note_id(now), action=action, made_at=now.timestamp(),
                     made_by=made_by, request_id=request_id, version=version,
                     previous=previous, alias=alias, weights=weights)
    inbox.leave(path, MOVES, move.id, asdict(move))
    return move


def _read(raw: dict[str, Any]) -> AdminMove:
    texts = {key: clean_text(value, max_chars=MAX_REASON_CHARS)
             for key, value in raw.items()
             if key in ("made_by", "request_id", "alias") and isinstance(value, str)}
    weights = raw.get("weights")
    return AdminMove(**{**raw, **texts, "made_at": float(raw["made_at"]), "weights": None
                        if weights is None else {str(v): float(w) for v, w in weights.items()}})


def pending_moves(path: str | os.PathLike[str]) -> list[AdminMove]:
    """Moves not yet copied to the ledger, oldest first; unreadable notes are skipped."""
    return inbox.pending(path, MOVES, _read)


def consume_move(path: str | os.PathLike[str], move_id: str) -> bool:
    """Mark a move copied to the ledger; True for the one caller that did."""
    return inbox.consume(path, MOVES, move_id, kind="move")
