"""Which model version answers a request: the validated `TrafficSplit` and its `choose`.

A split holds the share of live traffic of each registry version, an optional shadow version
(sent a copy of every request, its answer never served) and an optional sticky key (the name
of a request header or body field; callers with the same value keep the same version).

Weights are fractions that sum to 1 (within `TOLERANCE`), the same convention as the
ledger's ``traffic`` field, so a split is recorded as it is. A canary at 5 % is
``TrafficSplit({"3": 0.95, "4": 0.05})``.

Sticky routing is weighted rendezvous hashing: every version draws a stable pseudo-random
score ``-ln(u(key, version)) / weight`` and the lowest score wins. Each version then wins with
probability equal to its weight (a race of exponential clocks), the same key wins the same
version while the weights stay, and a version whose weight grows keeps every key it had: its
score only falls while the others' only rise. So moving a canary from 5 % to 25 % keeps every
caller who was on it, whatever the order of the versions, with no bucket table to store. The
hash is BLAKE2b of the key and version, not Python's ``hash()``, which is salted per process:
the router's replicas and restarts must agree.

Plain Python and the standard library only: the router imports this, and tests run it in
microseconds.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, TypeGuard

#: how far weights may sum away from 1 (floating point splits such as 1/3 each); the ledger's
TOLERANCE = 1e-6
# MLflow model versions are positive integers, stored as strings; "01" would be a second
# spelling of "1" and route to a deployment that does not exist. ASCII digits only (Python's
# str.isdigit also takes "\u096a"), and at most 18 of them: the registry keeps 64-bit ints.
_VERSION = re.compile(r"[1-9][0-9]{0,17}")
# An HTTP header name (RFC 9110 token), which also covers JSON field names like user_id.
_KEY_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_FIELDS = ("weights", "shadow", "sticky_key")
_SCALE = 2.0**64

#: a request header that pins a request to one loaded version (admin token required): the
#: rollout's smoke test sends its sample batches this way
PIN_HEADER = "x-retrain-version"


def is_version(text: Any) -> TypeGuard[str]:
    """Whether ``text`` is a registry version in its one canonical spelling ("3", not "03")."""
    return isinstance(text, str) and _VERSION.fullmatch(text) is not None


def _check_version(what: str, version: Any) -> str:
    if not is_version(version):
        raise ValueError(
            f"{what} must be a registry version number as a string (e.g. '3'), "
            f"but got {version!r}"
        )
    return version


def _check_weight(version: str, weight: Any) -> float:
    # bool is an int subclass, but True is not a weight
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError(f"the weight of version {version!r} must be a number, but got "
                         f"{weight!r}")
    try:  # an integer like 10**400 is a number, but not a float
        weight = float(weight)
    except OverflowError:
        raise ValueError(f"the weight of version {version!r} must be a fraction in [0, 1], "
                         f"but got an integer of {len(str(abs(weight)))} digits") from None
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"the weight of version {version!r} must be a finite number >= 0, "
                         f"but got {weight!r}")
    return float(weight)


def _unit(key: str, version: str) -> float:
    """A stable uniform number in (0, 1) for the pair: the same in every process and run."""
    digest = hashlib.blake2b(f"{version}\x1f{key}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / _SCALE


@dataclass(frozen=True)
class TrafficSplit:
    """Shares of live traffic per version, an optional shadow, an optional sticky key.

    Validated on construction; ``weights`` is stored as a read-only copy in the given order.
    """

    weights: Mapping[str, float]
    shadow: str | None = None
    sticky_key: str | None = None
    if TYPE_CHECKING:  # set in __post_init__, not a field: to_dict, == and hash leave it out
        _live: ClassVar[tuple[tuple[str, float], ...]]

    def __post_init__(self) -> None:
        weights = self.weights
        if not isinstance(weights, Mapping) or not weights:
            raise ValueError(
                "weights must be a non-empty mapping version -> share of traffic "
                f"(fractions summing to 1, e.g. {{'3': 0.95, '4': 0.05}}), but got {weights!r}"
            )
        clean = {_check_version("a version in weights", v): _check_weight(v, w)
                 for v, w in weights.items()}
        total = math.fsum(clean.values())
        if abs(total - 1.0) > TOLERANCE:
            raise ValueError(
                f"weights must sum to 1 (fractions, not percent; within {TOLERANCE}), but they "
                f"sum to {total} in {clean}"
            )
        shadow = self.shadow
        if shadow is not None:
            _check_version("shadow", shadow)
            if clean.get(shadow, 0.0) > 0:
                raise ValueError(
                    f"shadow version {shadow!r} also takes {clean[shadow]:.6g} of the live "
                    "traffic; a shadow only gets copies: give it weight 0 or choose another "
                    "shadow"
                )
        key = self.sticky_key
        if key is not None and (not isinstance(key, str) or not _KEY_NAME.fullmatch(key)):
            raise ValueError(
                "sticky_key must be a header or field name (letters, digits, - _ . and the "
                f"like, no spaces), or None for no stickiness, but got {key!r}"
            )
        object.__setattr__(self, "weights", MappingProxyType(clean))
        # Made once: choose() runs on every request.
        live = tuple(sorted((v for v, w in clean.items() if w > 0), key=int))
        object.__setattr__(self, "_live", tuple((v, clean[v]) for v in live))

    def __hash__(self) -> int:
        return hash((tuple(self.weights.items()), self.shadow, self.sticky_key))

    # ----------------------------------------------------------------------------------------

    @classmethod
    def single(cls, version: str, *, shadow: str | None = None,
               sticky_key: str | None = None) -> TrafficSplit:
        """All live traffic to one version."""
        return cls({version: 1.0}, shadow=shadow, sticky_key=sticky_key)

    @property
    def versions(self) -> tuple[str, ...]:
        """Versions that take live traffic (weight > 0), in numeric order."""
        return tuple(v for v, _ in self._live)

    @property
    def deployed(self) -> tuple[str, ...]:
        """Every version the split needs running: those that take traffic, the shadow, and
        any named with weight 0 (standby: loaded and warmed, so a pinned request such as the
        rollout's smoke test reaches it, but no live request and no mirrored copy does)."""
        out = set(self.weights) | ({self.shadow} if self.shadow else set())
        return tuple(sorted(out, key=int))

    def weight(self, version: str) -> float:
        return self.weights.get(version, 0.0)

    def choose(self, key: str | None, rand: float) -> str:
        """The version that answers a request.

        ``key`` is the request's value of `sticky_key` (None when the split has no sticky
        key or the request does not carry it); with a key the choice depends on the key
        alone. Without one, ``rand`` (uniform in [0, 1), drawn by the caller) picks a version
        in proportion to the weights. The shadow is never chosen: the caller mirrors to it.
        """
        if key is not None:
            if not isinstance(key, str):
                raise ValueError(f"key must be a string or None, but got {key!r}")
            # Lowest -ln(u) / w wins; ties (practically impossible) go to the lower version.
            best, score = "", math.inf
            for version, weight in self._live:
                mine = -math.log(_unit(key, version)) / weight
                if mine < score:
                    best, score = version, mine
            return best
        if isinstance(rand, bool) or not isinstance(rand, (int, float)) or not 0 <= rand < 1:
            raise ValueError(f"rand must be a number in [0, 1), but got {rand!r}")
        cumulative = 0.0
        for version, weight in self._live:
            cumulative += weight
            if rand < cumulative:
                return version
        return self._live[-1][0]  # the weights' rounding left rand just above their sum

    # ----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "shadow": self.shadow,
                "sticky_key": self.sticky_key}

    @classmethod
    def from_dict(cls, raw: Any) -> TrafficSplit:
        """Read `to_dict`'s layout (e.g. an admin request body); ValueError says what is wrong."""
        if not isinstance(raw, Mapping):
            raise ValueError(
                "a traffic split must be an object like {\"weights\": {\"3\": 0.95, \"4\": 0.05}, "
                f"\"shadow\": null, \"sticky_key\": null}}, but got {raw!r}"
            )
        unknown = sorted(set(raw) - set(_FIELDS), key=str)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in a traffic split; expected some of "
                             f"{list(_FIELDS)}")
        if "weights" not in raw:
            raise ValueError("a traffic split needs 'weights': version -> fraction of traffic")
        return cls(raw["weights"], shadow=raw.get("shadow"), sticky_key=raw.get("sticky_key"))
