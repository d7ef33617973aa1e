"""What a trial reports and keeps, shared by the trials of `retrain.search` and the
data-parallel trials of `retrain.distributed` (kept apart so neither imports the other for
them): the keys of a report, the files of a checkpoint, the folder of durable trial records,
and the early-stopping tracker both kinds of trial use."""

from __future__ import annotations

import math
from dataclasses import dataclass

MODEL_FILE = "model.ubj"
SKLEARN_FILE = "model.skops"
#: a final checkpoint's own copy of its last report (see `retrain.search.resume._finished_trials`)
METRICS_FILE = "metrics.json"
#: in METRICS_FILE: the checkpoint's other files and their sizes, the trial's config, every
#: report it made
MANIFEST_KEY, CONFIG_KEY, REPORTS_KEY = "files", "config", "reports"
SCORE_KEY = "valid_score"
#: set on a trial's last report (the one with its model), which may come before its cap
#: when the trial stopped early; that report's score is the kept model's, its best round's
#: (BEST_ROUND_KEY: the rounds the kept model has; later rounds are cut off)
FINAL_KEY, BEST_ROUND_KEY = "final", "best_round"
FIT_KEY = "fit_seconds"
#: every report: the trial's own training seconds so far, and when it reported (unix time)
TRAINED_KEY = "trained_seconds"
AT_KEY = "reported_at"
#: a folder beside a search's trial folders, in its Tune experiment on storage, that holds
#: each finished trial's record the moment it finished: ``<trial_id>/`` (the trial's final
#: model and METRICS_FILE, written by the trial itself) and ``<trial_id>.json`` (a trial that
#: Tune stopped or that failed, written by the driver as Tune ends it). Tune's own files for
#: a trial (params.json, result.json, error.txt, the experiment state) are written on the
#: driver in Ray's session folder and reach storage only at its next sync (every 10 s or
#: more), so a driver that dies in between would leave finished trials looking unfinished.
RECORDS_DIR = "retrain-trials"
#: in a driver-written record: "terminated" (stopped, or ended) or "error"
STATUS_KEY, ERROR_KEY = "status", "error"

#: in the error of a data-parallel trial whose workers could not be placed
#: (`retrain.distributed.train_data_parallel`)
UNPLACED = "Ray Train workers were not placed within"


@dataclass
class BestRound:
    """Early stopping at reports: the best validation score so far and its round; `add` says
    when ``patience`` rounds have passed without a better one (never, with no patience)."""

    greater: bool
    patience: int | None
    best_round: int = 0
    best_value: float = math.nan

    def add(self, done: int, value: float) -> bool:
        better = (value > self.best_value if self.greater else value < self.best_value)
        if math.isnan(self.best_value) or better:
            self.best_round, self.best_value = done, value
        return self.patience is not None and done - self.best_round >= self.patience

    def kept(self, done: int, value: float) -> tuple[int, float]:
        """The rounds the final model keeps and its score, at round ``done`` scoring
        ``value``: the best round's under early stopping; every round, and the last score,
        for a trial asked to boost to its rounds (no patience)."""
        if self.patience is None:
            return done, value
        return self.best_round, self.best_value
