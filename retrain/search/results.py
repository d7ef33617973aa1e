"""What a search takes and gives: the training data, a trial's settings, the warm start, and the
results of trials and of the whole search.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from retrain.candidates import FLAVORS, XGBOOST, Family, warm_start_problem
from retrain.config import METRIC_DIRECTIONS
from retrain.errors import SearchError
from retrain.trial_report import MODEL_FILE, SKLEARN_FILE

if TYPE_CHECKING:
    from retrain.distributed import DataParallelSettings, ParquetRows


Status = Literal["completed", "stopped", "failed"]
#: metric -> True when larger is better
METRIC_GREATER = METRIC_DIRECTIONS


@dataclass(frozen=True)
class TrainData:
    """What every trial reads from the object store."""

    x_train: pd.DataFrame
    y_train: np.ndarray
    x_valid: pd.DataFrame
    y_valid: np.ndarray
    #: each training row's partition age (0: the newest training partition), for window
    #: trials (`retrain.candidates.window_weights`); None when unknown
    ages: np.ndarray | None = None


@dataclass(frozen=True)
class TrialSettings:
    task: str
    metric: str
    report_every: int
    seed: int
    #: the active families by name
    families: dict[str, Family]
    #: names this search's data in a worker's matrix cache (see `_matrices`)
    data_key: str = ""
    #: XGBoost trials train data-parallel on Ray Train workers when set
    data_parallel: DataParallelPlan | None = None
    #: rounds without a better validation score after which a trial stops (None: never)
    patience: int | None = None
    #: where each trial writes its own final record and model, beside the experiment on
    #: storage (see `RECORDS_DIR`); "" for none
    records: str = ""
    #: seconds a data-parallel trial waits for its workers to be placed
    placement_timeout_s: float | None = None


@dataclass(frozen=True)
class DataParallelPlan:
    """What data-parallel XGBoost trials need: their workers and the Parquet rows to read."""

    settings: DataParallelSettings
    rows: ParquetRows
    #: the warm start's rows (partitions the champion was not trained on); None: ``rows``
    warm_rows: ParquetRows | None = None
    #: why the search trains data-parallel
    why: str = ""


@dataclass(frozen=True)
class WarmStart:
    """The champion that warm-start trials continue from, or why they cannot."""

    version: str
    #: the champion's booster as UBJ bytes (None when ``problem`` says why not)
    model: bytes | None = field(default=None, repr=False)
    problem: str | None = None
    #: positions in ``TrainData.x_train`` of the rows to boost on; None: all of them
    rows: np.ndarray | None = field(default=None, repr=False, compare=False)
    #: the partitions whose rows ``rows`` leaves out (the champion was trained on them)
    seen: tuple[str, ...] = ()
    #: the champion's feature spec: warm-started models read their data through it (this
    #: cycle's spec may have grown categories the champion's trees cannot take)
    spec: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, champion, split, *, version: str, seen: Collection[str] = (),
           rows: str = "new") -> WarmStart:
        """From a loaded champion (`serve.loader.LoadedModel`) and this cycle's
        `retrain.data.Split`; ``seen`` names the partitions the champion was trained on and
        ``rows`` is "new" (only rows of other partitions) or "all"."""
        problem = warm_start_problem(champion.spec, champion.flavor, split.spec)
        if problem is not None:
            return cls(version=version, problem=f"champion version {version}: {problem}")
        positions = None
        if rows == "new":
            positions = new_rows(split.pieces(), seen, split.train_rows,
                                 split.train_rows + split.valid_rows)
            if positions is not None and len(positions) == 0:
                return cls(version=version, problem=(
                    f"every training row outside the validation share comes from partitions "
                    f"champion version {version} was trained on; nothing new to continue on "
                    "(lower data.validation_fraction, or set "
                    "search.families.xgboost_warm_start.rows: all)"))
        return cls(version=version, model=bytes(champion.booster.save_raw("ubj")),
                   rows=positions, seen=tuple(sorted(seen)) if positions is not None else (),
                   spec=champion.spec)


def new_rows(
    partitions, seen: Collection[str], n_train: int, n_total: int
) -> np.ndarray | None:
    """Positions among the first ``n_train`` of ``n_total`` time-ordered rows that belong to
    partitions not in ``seen``; None when the partitions' row counts do not add up to
    ``n_total`` (then rows cannot be told apart, and a warm start uses them all).

    Rows come partition by partition, oldest first (see `retrain.data.load_split`), and the
    newest ``n_total - n_train`` of them validate.
    """
    sizes = [p.rows for p in partitions]
    if sum(sizes) != n_total:
        return None
    fresh = np.repeat([p.value not in seen for p in partitions], sizes)
    return np.flatnonzero(fresh[:n_train])


@dataclass(frozen=True)
class TrialResult:
    trial_id: str
    params: dict[str, Any]
    status: Status
    score: float | None
    #: boosting rounds of its model: the best round when it stopped early or boosted past its
    #: best (later rounds are cut off); the last round reported when it did not complete
    rounds: int
    train_seconds: float
    #: one entry per report: {"round": n, "score": validation score, "trained": the trial's
    #: training seconds so far, "at": unix time of the report}
    history: tuple[dict[str, float], ...] = ()
    error: str | None = None
    #: whether XGBoost trained on a GPU (device="cuda")
    gpu: bool = False
    #: the candidate family (see `retrain.candidates`)
    family: str = XGBOOST
    #: seconds the trial spent building its model (data preparation, loading the champion,
    #: boosting or fitting), without Ray's start-up and reporting; None when it did not finish
    fit_seconds: float | None = None
    #: the Tune checkpoint holding the final model (completed trials only)
    checkpoint: Any = field(default=None, repr=False, compare=False)

    @property
    def flavor(self) -> str:
        """How the trial's model is stored and served: "xgboost" or "sklearn"."""
        return FLAVORS.get(self.family, "xgboost")


def by_score(trial: TrialResult) -> float:
    """A completed trial's validation score, as a sort key."""
    if trial.score is None:
        raise SearchError(f"trial {trial.trial_id} has no score to rank it by")
    return trial.score


@dataclass(frozen=True)
class SearchResult:
    metric: str
    greater_is_better: bool
    trials: tuple[TrialResult, ...]
    #: the best completed trial; None when none completed (see `require_best`)
    best: TrialResult | None
    experiment_path: str
    wall_seconds: float
    seed: int
    space: dict[str, str] = field(default_factory=dict)
    #: the families that had trials, in the order trials were handed out
    families: tuple[str, ...] = (XGBOOST,)
    #: enabled families left out of this search -> why (e.g. warm start without a champion)
    skipped: dict[str, str] = field(default_factory=dict)
    #: trials an earlier, interrupted run of this search had finished: read back, not run
    carried: int = 0
    #: why XGBoost trials trained data-parallel (None: each in one process)
    data_parallel: str | None = None

    def count(self, status: Status) -> int:
        return sum(t.status == status for t in self.trials)

    def require_best(self) -> TrialResult:
        """The best completed trial, or `SearchError` naming what the trials died of."""
        if self.best is not None:
            return self.best
        failed = [t for t in self.trials if t.status == "failed"]
        errors = "; ".join(sorted({t.error for t in failed if t.error}))[:2000]
        raise SearchError(
            f"no trial of {len(self.trials)} completed ({len(failed)} failed). Errors: "
            f"{errors or 'none recorded'}. Check search.space and resources"
        )

    def finalists(self, k: int) -> list[TrialResult]:
        """The ``k`` best completed trials by validation score, best first."""
        self.require_best()
        completed = [t for t in self.trials if t.status == "completed" and t.score is not None]
        return sorted(completed, key=by_score, reverse=self.greater_is_better)[:k]

    def load_best(self):
        """The best trial's model, read from its checkpoint."""
        return load_model(self.require_best())


def load_model(trial: TrialResult):
    """A completed trial's final model: an xgboost.Booster, or a fitted scikit-learn
    estimator for the scikit-learn families."""
    import xgboost as xgb

    from serve.loader import load_sklearn

    if trial.checkpoint is None:
        raise SearchError(f"trial {trial.trial_id} ({trial.status}) has no final checkpoint")
    with trial.checkpoint.as_directory() as folder:
        if (Path(folder) / SKLEARN_FILE).exists():
            return load_sklearn(Path(folder) / SKLEARN_FILE)
        return xgb.Booster(model_file=str(Path(folder) / MODEL_FILE))
