"""The admin endpoints' bodies read into typed values (a traffic split, a version to promote, a
retrain reason), each refused with a 400 that says what to send, and the alias put back when a
promotion cannot finish.
"""

from __future__ import annotations

import json
from typing import Any

from serve.http import _BadBody
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
