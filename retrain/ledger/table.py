"""Events as the text table `retrain history` prints."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

from retrain.ledger.events import LedgerEvent


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
