"""The moves an operator or the rollout driver makes on what is served, each one written to
the registry and recorded in the ledger together, in one place.

- `move_champion`: the champion alias to a version (`retrain rollout promote`, a completed
  rollout); the ledger records an alias move, or a rollback when it goes to an older version.
- `set_traffic`: the registry's traffic split, or none (all traffic to the champion alias);
  the ledger records a traffic step.

- `record_admin_moves`: the moves the Serve app's admin endpoints made. They change the
  registry from the serving side, which imports nothing of retrain and may not reach the
  ledger, so each is noted in the inference log's store as it is made
  (`serve.inference_log.moves`); the controller copies the notes into the ledger, each with
  its own time and caller, so the ledger's history is as if they were recorded when made.

The registry change comes first and the ledger second: a crash in between leaves a move the
ledger lacks, which `RolloutDriver.record_outside_moves` (alias) and
`RolloutDriver.reconcile` (split) find and record, never a recorded move that was not made.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from retrain.ledger import EventKind, Ledger, LedgerEvent
from retrain.registry import CHAMPION, Registry
from serve.traffic import TrafficSplit

if TYPE_CHECKING:
    from serve.inference_log import AdminMove


class SplitStore(Protocol):
    """Where the split lives (`retrain.traffic_control.TrafficStore`: a registry tag)."""

    def read(self) -> TrafficSplit | None: ...
    def write(self, split: TrafficSplit | None) -> None: ...


def move_champion(registry: Registry, ledger: Ledger, model_name: str, version: str, *,
                  reasons: tuple[str, ...], kind: EventKind | None = None,
                  previous: str | None = None,
                  details: Mapping[str, Any] | None = None) -> str | None:
    """Point the champion alias at ``version`` (which must be registered) and record it.

    ``kind`` defaults to an alias move forward and a rollback to an older version;
    ``previous`` defaults to the alias' version before the move. Returns that version."""
    before = registry.alias_version(CHAMPION)
    registry.require_version(version)
    registry.set_alias(CHAMPION, version)
    previous = before if previous is None else previous
    if kind is None:
        kind = (EventKind.ALIAS_MOVE if previous is None or int(version) > int(previous)
                else EventKind.ROLLBACK)
    ledger.append(LedgerEvent(kind=kind, model_name=model_name, alias=CHAMPION,
                              version=version, previous_version=previous, reasons=reasons,
                              details=dict(details or {})))
    return before


def set_traffic(store: SplitStore, ledger: Ledger, model_name: str, split: TrafficSplit | None, *,
                reasons: tuple[str, ...], details: Mapping[str, Any] | None = None) -> None:
    """Write ``split`` as the registry's traffic split (None removes it) and record it.

    A removed split is recorded with the weights it had, so the ledger says what stopped;
    removing none records nothing."""
    recorded = split if split is not None else store.read()
    store.write(split)
    if recorded is None:
        return
    traffic = {} if recorded is None else {v: w for v, w in recorded.weights.items() if w > 0}
    ledger.append(LedgerEvent(kind=EventKind.TRAFFIC_STEP, model_name=model_name,
                              traffic=traffic, reasons=reasons,
                              details=dict(details or {})))


def record_admin_moves(ledger: Ledger, model_name: str,
                       moves: Iterable[AdminMove]) -> list[LedgerEvent]:
    """Copy moves the admin endpoints noted into the ledger, each at the time it was made; a
    move copied before (a controller that died before consuming its note) is not copied again.
    Returns the events recorded."""
    recorded = []
    for move in moves:
        copied = ledger.events(model_name=model_name, since=move.made_at, until=move.made_at)
        if not any(e.details.get("move_id") == move.id for e in copied):
            recorded.append(ledger.append(_admin_event(model_name, move)))
    return recorded


def _admin_event(model_name: str, move: AdminMove) -> LedgerEvent:
    by = f"{move.made_by}, request {move.request_id}"
    details = {"source": "admin endpoint", "move_id": move.id, "made_by": move.made_by,
               "request_id": move.request_id}
    if move.action == "traffic":
        weights = move.weights or {}
        return LedgerEvent(
            kind=EventKind.TRAFFIC_STEP, model_name=model_name,
            traffic={v: w for v, w in weights.items() if w > 0}, at=move.made_at,
            details={**details, "weights": weights},
            reasons=(f"PUT /admin/traffic ({by}): the split set by hand",))
    version = str(move.version)  # a promote or rollback names it (`AdminMove` checks)
    if move.action == "rollback":
        return LedgerEvent(
            kind=EventKind.TRAFFIC_STEP, model_name=model_name, traffic={version: 1.0},
            at=move.made_at, details=details,
            reasons=(f"POST /admin/rollback ({by}): the split removed, all traffic back to "
                     f"the champion v{version}",))
    older = move.previous is not None and int(version) < int(move.previous)
    return LedgerEvent(
        kind=EventKind.ROLLBACK if older else EventKind.ALIAS_MOVE, model_name=model_name,
        alias=move.alias or CHAMPION, version=version, previous_version=move.previous,
        at=move.made_at, details=details,
        reasons=(f"POST /admin/promote ({by}): all traffic to v{version}, no gates",))
