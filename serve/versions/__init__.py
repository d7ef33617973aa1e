"""Model versions side by side inside one replica, and the traffic split over them.

Why inside the replica and not one deployment per version behind a router: a handle hop
between deployments costs milliseconds per request on top of Serve's proxy hop, while
choosing a version here costs microseconds (see README, "Design notes"). Isolation between
the versions of one replica comes from these rules instead:

- each version predicts in its own bounded thread pool (`VersionRunner`): a slow version
  queues only its own requests; a request to it that waits longer than ``timeout_s`` fails
  (counted as that version's error); past ``threads + queue`` requests in flight, new ones
  are refused at once (overloaded) rather than queued without bound;
- a version's exception is caught and becomes that request's `Outcome`, never the replica's;
- a shadow copy is submitted after the live answer is computed, bounded by
  ``shadow_pending``; when that is reached the copy is dropped and counted, so a shadow can
  never slow or fail a live answer;
- `VersionSet.refresh` applies a new split only once every version it names is loaded and
  warmed; then the split and the version -> runner map swap in one reference assignment of
  an immutable `Routing`. A request reads the routing once and keeps its runner, so a
  version dropped from the map finishes what it has in flight.

No Ray here.
"""

from __future__ import annotations

from serve.versions.outcome import Limits, Outcome, VersionCounters
from serve.versions.routing import Routing, VersionSet, wanted_split
from serve.versions.runner import VersionRunner

__all__ = [
    "Limits",
    "Outcome",
    "Routing",
    "VersionCounters",
    "VersionRunner",
    "VersionSet",
    "wanted_split",
]
