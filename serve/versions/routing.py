"""The routing snapshot a replica applies (`Routing`), the split the registry asks for, and
`VersionSet`, which refreshes both.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from serve.loader import TRAFFIC_TAG, LoadedModel, RegistryState
from serve.traffic import TrafficSplit
from serve.versions.outcome import Limits, VersionCounters, _describe
from serve.versions.runner import VersionRunner

logger = logging.getLogger("retrain.serve.versions")


@dataclass(frozen=True)
class Routing:
    """What a replica applies now: one immutable value, replaced as a whole."""

    split: TrafficSplit
    runners: Mapping[str, VersionRunner]
    #: "tag": the registry's split tag; "alias": no (readable) tag, all to the alias' version
    source: str

    @property
    def primary(self) -> str:
        """The version taking the largest share (the newer one on a tie)."""
        return max(self.split.versions, key=lambda v: (self.split.weight(v), int(v)))

    @property
    def loaded(self) -> list[str]:
        return sorted(self.runners, key=int)


def wanted_split(state: RegistryState, alias: str) -> tuple[TrafficSplit | None, str, str | None]:
    """The split the registry asks for, where it comes from, and a problem to report.

    No tag, or one that cannot be read: all traffic to the version ``alias`` names.
    """
    problem = None
    raw = state.tags.get(TRAFFIC_TAG)
    if raw:
        try:
            return TrafficSplit.from_dict(json.loads(raw)), "tag", None
        except (ValueError, TypeError, RecursionError) as exc:
            problem = (f"the registry's {TRAFFIC_TAG} tag is unreadable ({exc}); serving the "
                       f"{alias!r} alias' version instead. Fix it with PUT /admin/traffic or "
                       "reset it with POST /admin/rollback")
    champion = state.aliases.get(alias)
    if champion is None:
        return None, "none", problem
    return TrafficSplit.single(champion), "alias", problem


class VersionSet:
    """The versions one replica serves and the split over them, kept in step with the
    registry by `refresh` (called by one poller thread at a time)."""

    def __init__(self, load: Callable[[str], LoadedModel], *, alias: str,
                 limits: Limits) -> None:
        self._load = load
        self.alias = alias
        self.limits = limits
        #: read once per request; replaced, never changed
        self.routing: Routing | None = None
        #: a split the registry asks for that cannot be applied yet (a version fails to load)
        self.pending: TrafficSplit | None = None
        self.last_error: str | None = None
        self.counters: dict[str, VersionCounters] = {}
        # loaded and warmed for a split that could not be applied yet: not reloaded on retry
        self._staged: dict[str, VersionRunner] = {}
        self._lock = threading.Lock()

    def refresh(self, state: RegistryState) -> bool:
        """Apply what ``state`` asks for if every version it names loads; True on a swap."""
        with self._lock:
            return self._refresh(state)

    def _refresh(self, state: RegistryState) -> bool:
        split, source, problem = wanted_split(state, self.alias)
        current = self.routing
        if split is None:
            # Nothing is named (no alias, no tag): keep what is served, say so.
            self.pending = None
            self.last_error = problem or (
                None if current else f"no version has the alias {self.alias!r} yet")
            return False
        if current is not None and current.split == split and current.source == source:
            self.pending, self.last_error = None, problem
            self._retire_staged(keep=())
            return False
        runners: dict[str, VersionRunner] = {}
        failures: list[str] = []
        for version in split.deployed:
            runner = (current.runners.get(version) if current else None) or self._staged.get(
                version)
            if runner is None:
                try:
                    runner = self._start(version)
                except Exception as exc:  # any load or warm failure: keep the old routing
                    failures.append(f"version {version}: {_describe(exc)}")
                    continue
                self._staged[version] = runner
            runners[version] = runner
        if failures:
            self.pending = split
            serving = current.split.to_dict() if current else "nothing"
            self.last_error = (f"cannot apply the split {split.to_dict()} yet: "
                               + "; ".join(failures) + f". Still serving {serving}")
            self._retire_staged(keep=split.deployed)
            return False
        self.routing = Routing(split, MappingProxyType(runners), source)  # the atomic swap
        for version, runner in (current.runners.items() if current else ()):
            if version not in runners:
                runner.retire()  # in-flight requests hold their own reference
        self._staged = {v: r for v, r in self._staged.items() if v not in runners}
        self._retire_staged(keep=())
        self.pending, self.last_error = None, problem
        logger.info("applying split %s (%s)", split.to_dict(), source)
        return True

    def _start(self, version: str) -> VersionRunner:
        model = self._load(version)
        counters = self.counters.setdefault(version, VersionCounters())
        runner = VersionRunner(model, self.limits, counters)
        try:
            seconds = runner.warm()
        except BaseException:
            runner.retire()
            raise
        logger.info("loaded and warmed version %s in %.3fs", version, seconds)
        return runner

    def _retire_staged(self, keep: tuple[str, ...]) -> None:
        for version in [v for v in self._staged if v not in keep]:
            self._staged.pop(version).retire()

    def note_error(self, message: str) -> None:
        """A registry read that failed: keep serving, report through /health."""
        self.last_error = message

    def counters_dict(self) -> dict[str, dict[str, Any]]:
        items = list(self.counters.items())  # the poller may add a version meanwhile
        return {v: c.to_dict() for v, c in sorted(items, key=lambda kv: int(kv[0]))}
