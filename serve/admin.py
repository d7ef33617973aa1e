"""The admin endpoints' bodies read into typed values (a traffic split, a version to promote, a
retrain reason), each refused with a 400 that says what to send; the alias put back when a
promotion cannot finish; and each move noted for the controller's ledger as it is made.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request

from serve.http import _BadBody
from serve.inference_log import note_move
from serve.inference_log.moves import Action
from serve.loader import ROLLOUT_TAG, delete_alias, set_alias
from serve.schemas import InvalidInput, check_text
from serve.settings import ServeSettings
from serve.traffic import TrafficSplit, is_version

#: the largest body an admin endpoint reads
BODY_BYTES = 64 * 1024
#: the longest reason a POST /admin/retrain may give (it is copied into the ledger)
REASON_CHARS = 1000


def rollout_summary(state) -> dict[str, Any] | None:
    """The driver's summary from the registry tag; None when there is none (or unreadable)."""
    raw = state.tags.get(ROLLOUT_TAG)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def split_body(body: Any) -> TrafficSplit:
    try:
        return TrafficSplit.from_dict(body)
    except (ValueError, TypeError) as exc:
        raise _BadBody(400, str(exc)) from None


def promote_body(body: Any) -> str:
    """The version of ``{"version": "4"}`` (an integer is accepted too), in its canonical
    spelling: ASCII digits, no leading zero. Anything else is refused before the registry
    is touched ("\u096a" and "01" are digits to str.isdigit, but no registry version)."""
    version = body.get("version") if isinstance(body, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and 0 < version < 10**18:
        version = str(version)
    if not isinstance(body, dict) or set(body) != {"version"} or not is_version(version):
        raise _BadBody(400, 'the body must be {"version": "<registered version>"}: a version '
                       'number in ASCII digits without leading zeros, such as "4"')
    return version


def retrain_body(body: Any) -> str:
    """The reason of ``{"reason": "..."}``; a blank body arrives here as ``{}``. The reason
    is copied into the ledger: valid UTF-8, printable, at most `REASON_CHARS` characters."""
    reason = body.get("reason", "") if isinstance(body, dict) else None
    if not isinstance(body, dict) or set(body) - {"reason"} or not isinstance(reason, str):
        raise _BadBody(400, 'expected no body or a JSON object like {"reason": "..."}')
    try:
        return check_text("'reason'", reason, max_chars=REASON_CHARS)
    except InvalidInput as exc:
        raise _BadBody(400, str(exc)) from None


logger = logging.getLogger("retrain.serve")


def caller(request: Request) -> str:
    """Who sent the request, as the ledger and the retrain requests name them."""
    return f"http {request.client.host if request.client else 'unknown'}"


def note(s: ServeSettings, action: Action, made_by: str, request_id: str,
         **what: Any) -> bool:
    """Note a move just made for the controller, which copies it into the ledger with its time
    and caller (`serve.inference_log.moves`). False, logged, when it cannot be noted: the
    move stands, and the controller still sees an alias move in the registry."""
    if not s.inference_log_path:
        return False
    try:
        note_move(s.inference_log_path, action, made_by=made_by, request_id=request_id, **what)
    except Exception as exc:  # the move is made; a note that fails must not turn it into a 5xx
        logger.warning("could not note the %s move of request %s for the ledger: %s: %s",
                       action, request_id, type(exc).__name__, exc)
        return False
    return True


def restore_alias(s: ServeSettings, previous: str | None) -> str:
    """Put the alias back where it was; says what happened, for the 503's message."""
    try:
        if previous is None:
            delete_alias(s.tracking_uri, s.model_name, s.alias)
        else:
            set_alias(s.tracking_uri, s.model_name, s.alias, previous)
    except Exception as exc:  # the registry is down: say exactly what state it is left in
        return (f"the alias {s.alias!r} could not be put back ({type(exc).__name__}: {exc}) "
                "and now names the requested version; retry the promotion")
    return f"the alias {s.alias!r} was put back to {previous}: nothing changed"
