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

import copy
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from retrain.errors import InvalidValueError, RetrainError
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


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cells(event: LedgerEvent) -> tuple[str, ...]:
    kind = event.kind.value + (f":{event.alias}" if event.alias else "")
    if event.verdict is not None:
        outcome = event.verdict
    elif event.traffic:
        outcome = " ".join(f"{v}={w:.2f}" for v, w in event.traffic.items())
    elif "outcome" in event.details:  # trigger evaluations and controller cycles
        outcome = str(event.details["outcome"])
    else:
        outcome = "-"
    return (
        "-" if event.seq is None else str(event.seq),
        _iso(event.at),
        kind,
        event.version or "-",
        event.previous_version or "-",
        outcome,
        event.reasons[0] if event.reasons else "-",
    )


def format_events(events: Iterable[LedgerEvent]) -> str:
    """A plain-text table, one line per event, for `retrain history`."""
    header = ("seq", "time (UTC)", "kind", "version", "previous", "verdict/traffic", "reason")
    rows = [header, *(_cells(event) for event in events)]
    if len(rows) == 1:
        return "(no events)"
    # Pad every column but the last: reasons are long and would widen every line.
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)), row[-1]])
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)
