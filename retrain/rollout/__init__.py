"""The rollout of a challenger, as pure values: the plan, the gates, and a step state machine.

    smoke ─► shadow ─► canary 5 % ─► 25 % ─► 50 % ─► 100 % ─► completed (old version retires)
      └────────┴──────────┴──── any gate fails ─────┴───────► rolled_back (all traffic to the
                                                                            champion)

Each step of a `RolloutPlan` gives the challenger a share of live traffic (none in smoke and
shadow), a bake time and a minimum number of requests. `Rollout.advance` takes an
`Observation` of the current step (per version: requests, errors, p99 latency, a summary of
the predictions, the live metric where labels have arrived) and `evaluate_gates` judges it
against the champion on the same traffic:

- a gate that fails rolls back at once, whatever the step, and the reason is kept;
- a gate without enough data yet *waits*: the step neither passes nor fails;
- the step advances only when no gate fails or waits *and* its bake time has passed.

The champion is the last known-good version until the rollout completes: a rollback from any
step sends all traffic back to it. At 100 % the champion becomes the shadow, so that the last
step is still compared with it on the same requests, then retires ``drain_s`` after completion.

Nothing here touches Ray, Serve or MLflow: the controller applies each `TrafficSplit` and
collects the observations; every value here round-trips through ``to_dict`` / ``from_dict``
(JSON-safe) for the ledger and for resuming after a crash.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retrain.rollout.gates import GateStatus, evaluate_gates, prediction_shift
    from retrain.rollout.machine import Rollout, ledger_event
    from retrain.rollout.observe import Observation, PredictionSummary, VersionStats
    from retrain.rollout.plan import GateLimits, RolloutPlan, Stage, Step

# Lazy, so that the config (whose rollout.gates section is `GateLimits`) imports the plan
# alone, not the gates' numpy and scipy.
_EXPORTS = {
    **dict.fromkeys(("GateStatus", "evaluate_gates", "prediction_shift"), "gates"),
    **dict.fromkeys(("Rollout", "ledger_event"), "machine"),
    **dict.fromkeys(("Observation", "PredictionSummary", "VersionStats"), "observe"),
    **dict.fromkeys(("GateLimits", "RolloutPlan", "Stage", "Step"), "plan"),
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'retrain.rollout' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"retrain.rollout.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "GateLimits",
    "GateStatus",
    "Observation",
    "PredictionSummary",
    "Rollout",
    "RolloutPlan",
    "Stage",
    "Step",
    "VersionStats",
    "evaluate_gates",
    "ledger_event",
    "prediction_shift",
]
