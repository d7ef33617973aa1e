"""On-demand retrain requests: the controller's inbox, one small file per request, consumed once.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from serve.inference_log import inbox
from serve.inference_log.schema import MAX_REASON_CHARS, REQUESTS
from serve.schemas import check_text, clean_text


@dataclass(frozen=True)
class RetrainRequest:
    """An on-demand retrain request, waiting in ``<root>/requests/`` for the controller."""

    id: str
    reason: str
    requested_by: str
    #: ISO 8601, UTC
    requested_at: str


def request_retrain(
    path: str | os.PathLike[str], reason: str = "", requested_by: str = ""
) -> RetrainRequest:
    """Leave a retrain request for the controller (``retrain watch``) to pick up."""
    # it is copied into the ledger and shown by `retrain history`: text, bounded
    check_text("the reason", reason, max_chars=MAX_REASON_CHARS)
    now = datetime.now(timezone.utc)
    request = RetrainRequest(id=inbox.note_id(now), reason=reason, requested_by=requested_by,
                             requested_at=now.isoformat())
    inbox.leave(path, REQUESTS, request.id, asdict(request))
    return request


def _read(raw: dict[str, Any]) -> RetrainRequest:
    # a request stored before reasons were checked is read, not fatal: its texts are
    # cleaned and bounded (it goes on to the ledger and the terminal)
    return RetrainRequest(**{key: clean_text(value, max_chars=MAX_REASON_CHARS)
                             if isinstance(value, str) else value for key, value in raw.items()})


def pending_requests(path: str | os.PathLike[str]) -> list[RetrainRequest]:
    """Requests not consumed yet, oldest first. Unreadable files are skipped (and logged)."""
    return inbox.pending(path, REQUESTS, _read)


def consume_request(path: str | os.PathLike[str], request_id: str) -> bool:
    """Mark a request done (move it to ``requests/done/``); True for the one caller that did
    (see `inbox.consume`)."""
    return inbox.consume(path, REQUESTS, request_id, kind="retrain request")
