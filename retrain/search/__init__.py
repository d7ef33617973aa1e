"""The only module that drives Ray Tune: trials, OptunaSearch (TPE), ASHA, resources, failures.

One Tune experiment searches every active candidate family (see `retrain.candidates`): XGBoost
from scratch, XGBoost warm-started from the champion, scikit-learn estimators. Trial ``n``
belongs to family ``n mod k`` (an Optuna define-by-run space), so each family gets its share
of the samples; ASHA runs per family, because a warm-started trial at its second report is
not comparable with a from-scratch trial at its second report and would cut it unfairly.

The training arrays and the champion's booster go into Ray's object store once
(`tune.with_parameters`) and every trial reads them from there. A warm-start trial boosts on
the training rows of partitions the champion was not trained on (`WarmStart`, `new_rows`):
its cost follows the new data, while every family is ranked on the same validation rows. An
XGBoost trial reports every ``report_every`` boosting rounds (counted from its own start, also
when warm-started), so ASHA can stop weak ones early, and checkpoints its booster (UBJ) at its
last round only; a scikit-learn trial fits once and reports once (skops). A trial that raises
is recorded as failed with its error; the search fails only when no trial completes.

Where the time goes (measured with benchmarks/search_benchmark.py): Tune reuses each trial
actor for the next trial, and the actor keeps its XGBoost matrices (`_matrices`), so the
frames are converted and the histogram index built once per actor, not once per trial (on
1M rows that was ~4 s of a 20-round trial's ~8 s); a trial scores the validation rows only
when it reports, not every round (`evals` computed the AUC over every validation row each
round: ~20 % of the training). What is left is Ray's start of the two trial actors (new
processes importing Ray, retrain and XGBoost: ~5 s here, more on a busy machine) and ~0.1 s
between trials.

A search whose driver died resumes from its saved Tune experiment (see `run_search`).
"""

from __future__ import annotations

from retrain.search.plan import plan_families, trial_resources
from retrain.search.records import save_final
from retrain.search.results import (
    DataParallelPlan,
    SearchResult,
    TrainData,
    TrialResult,
    WarmStart,
    load_model,
    new_rows,
)
from retrain.search.run import run_search

__all__ = [
    "DataParallelPlan",
    "SearchResult",
    "TrainData",
    "TrialResult",
    "WarmStart",
    "load_model",
    "new_rows",
    "plan_families",
    "run_search",
    "save_final",
    "trial_resources",
]
