"""When to start a retraining cycle: pure trigger policy, no Ray, no MLflow, no I/O.

`evaluate(config, state, inputs) -> Evaluation` looks at one check's inputs (what the monitor
saw, the champion's evaluated metric, on-demand requests, the time) and the persisted
`TriggerState`, and says which trigger fired, or what held it back, with a reason a person can
read, the inputs, and the NEW state. The controller persists ``evaluation.state`` after every
check and, when it actually starts a cycle, records that with ``state.started(now)``:

    evaluation = evaluate(config.triggers, state, inputs)
    state = evaluation.state
    if evaluation.fired:
        state = state.started(inputs.now)   # also after a cycle started any other way
        ...start the cycle...
    persist(state.to_dict()); ledger.record(evaluation.to_dict())

Triggers, highest priority first (one cycle serves every trigger that is ready at once):

- on demand: any request (CLI, admin HTTP, Ray job). Ignores the cooldown, respects the cap.
- performance: the live metric is worse than the champion's evaluated holdout metric by more
  than ``tolerance`` (below it for higher-is-better metrics such as auc, above it for
  lower-is-better ones such as rmse), resting on at least ``min_samples`` labelled predictions.
- opportunity: a cheap challenger (the champion continued on the older new labels) beats the
  champion on the newest labels with evidence (`retrain.opportunity`): retraining would help
  although nothing degrades.
- drift: the monitor found the live inputs drifted from the champion's training data; with
  ``drift.defer_to_labels`` (default) only while too few labels arrived for the label-based
  triggers to judge (drift is a proxy for what labels show directly).
- schedule: ``interval_s`` after the last cycle start, or a ``cron`` slot that passed since the
  last slot handled. A due slot fires once; if the cooldown or the cap holds it back it stays
  due, and slots that pass meanwhile fold into that one cycle. The first check arms the
  schedule without firing (no catch-up for slots from before the controller ever ran).

Gates: borderline performance and drift conditions must hold on ``debounce`` consecutive
checks (a check where they do not hold, or cannot be judged, resets the count); a drop of
``immediate_factor`` times the tolerance, or a drift in ``drift.immediate_share`` of the
features, fires at the first check; no cycle starts within ``cooldown_s`` of
the last start (on demand excepted); at most ``max_cycles`` starts fall in any sliding window
of ``period_s`` seconds (a start at time s counts while now - s < period_s).
"""

from __future__ import annotations

from retrain.triggers.inputs import DemandRequest, Hold, MonitorSignals, TriggerInputs, TriggerKind
from retrain.triggers.policy import Evaluation, evaluate
from retrain.triggers.state import TriggerState

__all__ = [
    "DemandRequest",
    "Evaluation",
    "Hold",
    "MonitorSignals",
    "TriggerInputs",
    "TriggerKind",
    "TriggerState",
    "evaluate",
]
