"""The ledger's SQLite store: one append-only table of events, with the queries `retrain history`
and the controller ask of it.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from retrain.errors import InvalidValueError, RetrainError
from retrain.ledger.events import (
    _MOVES,
    SCHEMA_VERSION,
    EventKind,
    LedgerEvent,
    ServedAt,
    _is_number,
)

# Structured fields are stored as JSON text; everything else as a plain column.
_JSON_COLUMNS = ("reasons", "traffic", "data_snapshot", "details")
_COLUMNS = (
    "seq", "at", "kind", "model_name", "version", "previous_version", "alias", "verdict",
    "reasons", "traffic", "data_snapshot", "search", "run_id", "details",
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM events"
_KIND_VALUES = ", ".join(f"'{k.value}'" for k in EventKind)
_MOVE_VALUES = ", ".join(f"'{k.value}'" for k in _MOVES)
_TABLE = f"""
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: a seq is never reused
    at REAL NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ({_KIND_VALUES})),
    model_name TEXT NOT NULL,
    version TEXT,
    previous_version TEXT,
    alias TEXT,
    verdict TEXT,
    reasons TEXT NOT NULL DEFAULT '[]',
    traffic TEXT NOT NULL DEFAULT '{{}}',
    data_snapshot TEXT NOT NULL DEFAULT '{{}}',
    search TEXT,
    run_id TEXT,
    details TEXT NOT NULL DEFAULT '{{}}'
)"""
_SCHEMA = _TABLE + """;
CREATE INDEX IF NOT EXISTS events_by_model ON events (model_name, at, seq);
CREATE INDEX IF NOT EXISTS events_by_kind ON events (model_name, kind, at, seq);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only: events cannot be updated');
END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only: events cannot be deleted');
END;
-- INSERT OR REPLACE deletes the old row without firing delete triggers: refuse a taken seq.
CREATE TRIGGER IF NOT EXISTS events_no_replace BEFORE INSERT ON events
WHEN EXISTS (SELECT 1 FROM events WHERE seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only: events cannot be replaced');
END;
"""


class Ledger:
    """An append-only event log in one SQLite file; safe to share between processes."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        #: seconds a writer waits for another writer's lock before giving up
        self.timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._create_schema()
        except sqlite3.DatabaseError as exc:
            raise RetrainError(
                f"cannot open the ledger at {self.path}: {exc}; expected a SQLite file written "
                "by retrain (or a new path)"
            ) from exc

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r})"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: no implicit transactions, so each INSERT commits on its own.
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        # A TEXT cell that is not UTF-8 (written by another tool) reads with U+FFFD instead
        # of failing every read of the ledger.
        conn.text_factory = lambda raw: raw.decode("utf-8", "replace")
        try:
            conn.row_factory = sqlite3.Row
            # In WAL mode the default (NORMAL) may lose the last commits on power loss.
            conn.execute("PRAGMA synchronous=FULL")
            yield conn
        finally:
            conn.close()

    def _create_schema(self) -> None:
        with self._connect() as conn:
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            if found > SCHEMA_VERSION:
                raise RetrainError(
                    f"the ledger at {self.path} has schema version {found}, newer than this "
                    f"retrain understands ({SCHEMA_VERSION}); upgrade retrain to read it"
                )
            # Persistent in the file. Where WAL is unavailable (some network filesystems)
            # SQLite keeps its rollback journal: still durable, only less concurrent.
            conn.execute("PRAGMA journal_mode=WAL")
            if 0 < found < SCHEMA_VERSION:
                self._migrate(conn)
            # IMMEDIATE: two processes creating the same new ledger take turns.
            conn.executescript(
                f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
            )

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Rebuild the table under the current schema, keeping every row and its seq.

        SQLite cannot change a CHECK constraint in place. One IMMEDIATE transaction: another
        process either sees the old table or the new one, and the version is re-read inside it
        so two processes opening an old ledger at once migrate it once.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
                conn.execute("ROLLBACK")
                return
            for name in ("events_no_update", "events_no_delete", "events_no_replace"):
                conn.execute(f"DROP TRIGGER IF EXISTS {name}")
            for name in ("events_by_model", "events_by_kind"):
                conn.execute(f"DROP INDEX IF EXISTS {name}")
            conn.execute("ALTER TABLE events RENAME TO events_old")
            conn.execute(_TABLE)
            columns = ", ".join(_COLUMNS)
            conn.execute(f"INSERT INTO events ({columns}) SELECT {columns} FROM events_old")
            conn.execute("DROP TABLE events_old")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def append(self, event: LedgerEvent) -> LedgerEvent:
        """Store `event` durably (committed on return) and return it with its `seq`."""
        if not isinstance(event, LedgerEvent):
            raise TypeError(f"Ledger.append takes a LedgerEvent, but got {type(event).__name__}")
        if event.seq is not None:
            raise InvalidValueError(f"the event is already stored (seq={event.seq}); append each "
                                    "event once, or construct a new one")
        row = event.to_dict()
        del row["seq"]
        for name in _JSON_COLUMNS:
            row[name] = json.dumps(row[name])
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._connect() as conn:
            cursor = conn.execute(f"INSERT INTO events ({names}) VALUES ({marks})",
                                  tuple(row.values()))
            seq = cursor.lastrowid
        return replace(event, seq=seq)

    def events(
        self,
        *,
        model_name: str | None = None,
        kinds: Iterable[EventKind | str] | EventKind | str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[LedgerEvent]:
        """Events oldest first by (at, seq); `since`/`until` are inclusive; `limit` keeps the
        newest `limit` of the matches (a tail, as a history command wants), still oldest first.
        """
        where: list[str] = []
        params: list[object] = []
        if model_name is not None:
            where.append("model_name = ?")
            params.append(model_name)
        if kinds is not None:
            if isinstance(kinds, str):  # one kind; a str would otherwise iterate by character
                kinds = (kinds,)
            values = sorted({_kind(k).value for k in kinds})
            if not values:
                return []
            where.append(f"kind IN ({', '.join('?' for _ in values)})")
            params += values
        for name, bound, op in (("since", since, ">="), ("until", until, "<=")):
            if bound is None:
                continue
            if not _is_number(bound) or math.isnan(bound):
                raise InvalidValueError(
                    f"Ledger.events {name} must be unix seconds or None, but got "
                    f"{bound=}")
            where.append(f"at {op} ?")
            params.append(float(bound))
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                                  or limit < 0):
            raise InvalidValueError(
                f"Ledger.events limit must be an int >= 0 or None, but got {limit=}")
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
        if limit is None:
            with self._connect() as conn:
                return [_event(row) for row in conn.execute(sql + " ORDER BY at, seq", params)]
        with self._connect() as conn:
            rows = conn.execute(sql + " ORDER BY at DESC, seq DESC LIMIT ?", [*params, limit])
            return [_event(row) for row in rows][::-1]

    def served_at(self, model_name: str, at: float, *, alias: str = "champion") -> ServedAt | None:
        """The version `alias` pointed at at time `at`, and why; None if it was not set yet."""
        if not _is_number(at) or math.isnan(at):
            raise InvalidValueError(f"Ledger.served_at needs at as unix seconds, but got {at=}")
        with self._connect() as conn:
            row = conn.execute(
                f"{_SELECT} WHERE model_name = ? AND alias = ? AND kind IN ({_MOVE_VALUES}) "
                "AND at <= ? ORDER BY at DESC, seq DESC LIMIT 1",
                (model_name, alias, float(at)),
            ).fetchone()
            return None if row is None else _served(conn, _event(row))

    def history(self, model_name: str, alias: str = "champion") -> list[ServedAt]:
        """Every period of `alias`, oldest first: one entry per alias move or rollback; a period
        lasts until the next entry's `since`."""
        with self._connect() as conn:
            rows = conn.execute(
                f"{_SELECT} WHERE model_name = ? AND alias = ? AND kind IN ({_MOVE_VALUES}) "
                "ORDER BY at, seq",
                (model_name, alias),
            ).fetchall()
            return [_served(conn, _event(row)) for row in rows]


def _kind(value: EventKind | str) -> EventKind:
    try:
        return EventKind(value)
    except ValueError:
        raise InvalidValueError(
            f"kinds must hold values of {[k.value for k in EventKind]}, but got "
            f"kind={value!r}") from None


def _event(row: sqlite3.Row) -> LedgerEvent:
    data = {name: row[name] for name in _COLUMNS}
    for name in _JSON_COLUMNS:
        data[name] = json.loads(data[name])
    data["reasons"] = tuple(data["reasons"])
    return LedgerEvent(**data)


def _served(conn: sqlite3.Connection, move: LedgerEvent) -> ServedAt:
    # The decision that justified the version: the latest one on it up to the move. For a
    # rollback that is the original promotion; the rollback's own reasons are on `because`.
    assert move.version is not None  # guaranteed for moves by LedgerEvent validation
    row = conn.execute(
        f"{_SELECT} WHERE model_name = ? AND kind = ? AND version = ? AND at <= ? "
        "ORDER BY at DESC, seq DESC LIMIT 1",
        (move.model_name, EventKind.DECISION.value, move.version, move.at),
    ).fetchone()
    return ServedAt(move.version, move.at, move, None if row is None else _event(row))
