"""The ledger: an append-only, durable record of what was decided and served, and why.

Every promotion decision, alias move, traffic step and rollback is one `LedgerEvent` row in a
SQLite file. The ledger answers "which version did alias `champion` point at at time T, and why"
(`Ledger.served_at`) after any number of restarts, with nothing but the standard library.

Append-only is enforced by the database itself (triggers abort UPDATE, DELETE and replacing
inserts), so a stray `sqlite3` session cannot rewrite history by mistake either. Dropping the
triggers or the table is still possible: this guards against accidents, not against someone with
write access to the file.

Each call opens its own short-lived connection, so several processes (CLI, pipeline, serving
controller) can append to one file; WAL mode lets readers run while one of them writes, and the
busy timeout makes writers queue instead of failing.
"""

from __future__ import annotations

from retrain.ledger.events import SCHEMA_VERSION, VERDICTS, EventKind, LedgerEvent, ServedAt
from retrain.ledger.store import Ledger
from retrain.ledger.table import format_events

__all__ = [
    "SCHEMA_VERSION",
    "VERDICTS",
    "EventKind",
    "Ledger",
    "LedgerEvent",
    "ServedAt",
    "format_events",
]
