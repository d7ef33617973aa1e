"""Reading the rollout's stored values back: numbers and counts checked with the field they belong
to, unknown keys of newer writers ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from retrain.errors import InvalidValueError


def _json(value: Any) -> Any:
    """JSON has no NaN or infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _optional_number(name: str, value: Any, *, low: float | None = None) -> float | None:
    return None if value is None else _number(name, value, low=low)


def _number(name: str, value: Any, *, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidValueError(f"{name} must be a finite number, but got {name}={value!r}")
    if low is not None and value < low:
        raise InvalidValueError(f"{name} must be >= {low}, but got {name}={value!r}")
    return float(value)


def _count(name: str, value: Any, *, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidValueError(f"{name} must be an integer >= {low}, but got {name}={value!r}")
    return value


def _known(cls_name: str, raw: Any, fields: Iterable[str]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise InvalidValueError(f"{cls_name}.from_dict expects a mapping, but got {raw!r}")
    unknown = sorted(set(raw) - set(fields), key=str)
    if unknown:
        raise InvalidValueError(
            f"{cls_name}.from_dict got unknown keys {unknown}; expected some of "
            f"{sorted(fields)}")
    return raw
