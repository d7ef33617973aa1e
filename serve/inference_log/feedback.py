"""Feedback bodies (labels arriving after the prediction) read into typed items, with a 400-worthy
reason for every malformed one. Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from serve.inference_log.schema import _REQUEST_ID_TEXT, MAX_REQUEST_ID_CHARS, MAX_ROW
from serve.schemas import InvalidInput


@dataclass(frozen=True)
class FeedbackItem:
    """One true label for one row of one answered request."""

    request_id: str
    label: float
    row: int = 0


class InvalidFeedback(InvalidInput):
    """A feedback body that cannot be stored; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status




def parse_feedback(body: Any, *, max_items: int) -> tuple[FeedbackItem, ...]:
    """Validate ``{"labels": [{"request_id": "...", "row": 0, "label": 1}, ...]}``.

    Raises `InvalidFeedback` (status 400, or 413 for too many items) naming the first problem.
    """
    example = '{"labels": [{"request_id": "...", "row": 0, "label": 1}]}'
    if not isinstance(body, dict) or "labels" not in body:
        got = f"keys {sorted(body)}" if isinstance(body, dict) else f"a JSON {_json_type(body)}"
        raise InvalidFeedback(f"expected a JSON object like {example}, but got {got}")
    unknown = sorted(set(body) - {"labels"})
    if unknown:
        raise InvalidFeedback(f"unknown key(s) {unknown}; the body holds only 'labels'")
    labels = body["labels"]
    if not isinstance(labels, list):
        raise InvalidFeedback(f"'labels' must be a list, but got a JSON {_json_type(labels)}")
    if not labels:
        raise InvalidFeedback("'labels' is empty; send at least one label")
    if len(labels) > max_items:
        raise InvalidFeedback(
            f"'labels' holds {len(labels)} items, more than the limit of {max_items}; "
            "split the request",
            status=413,
        )
    return tuple(_feedback_item(i, item) for i, item in enumerate(labels))


def _feedback_item(i: int, item: Any) -> FeedbackItem:
    where = f"labels[{i}]"
    if not isinstance(item, dict):
        raise InvalidFeedback(f"{where} must be an object, but got a JSON {_json_type(item)}")
    unknown = sorted(set(item) - {"request_id", "row", "label"})
    if unknown:
        raise InvalidFeedback(f"{where} has unknown key(s) {unknown}; use request_id, row, label")
    request_id = item.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise InvalidFeedback(
            f"{where}.request_id must be the non-empty request id of an answered prediction "
            f"(its x-request-id), but got {_shown(request_id)}"
        )
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidFeedback(f"{where}.request_id is longer than {MAX_REQUEST_ID_CHARS} chars")
    if not _REQUEST_ID_TEXT.fullmatch(request_id):
        raise InvalidFeedback(
            f"{where}.request_id must be printable ASCII, as the x-request-id of an answered "
            f"prediction is, but got {_shown(request_id)}")
    if "label" not in item:
        raise InvalidFeedback(f"{where} has no 'label'")
    label = item["label"]
    # JSON true/false is refused on purpose: send 1/0, so no label's meaning is guessed.
    try:  # an integer such as 10**400 is a number, but not one a float column holds
        value = float(label) if _is_number(label) else math.nan
    except OverflowError:
        value = math.nan
    if not math.isfinite(value):
        raise InvalidFeedback(f"{where}.label must be a finite number, but got {_shown(label)}")
    row = item.get("row", 0)
    if not isinstance(row, int) or isinstance(row, bool) or not 0 <= row <= MAX_ROW:
        raise InvalidFeedback(
            f"{where}.row must be the row's index (an integer from 0 to {MAX_ROW}) within its "
            f"request, but got {_shown(row)}"
        )
    return FeedbackItem(request_id=request_id, label=value, row=row)


def _shown(value: Any) -> str:
    """A short, always-encodable rendering of a bad value for an error message."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**20 else (
        f"an integer of {len(str(abs(value)))} digits")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:80]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")
