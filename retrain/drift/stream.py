"""The same drift check over a sliding window of live rows, counts added up as rows arrive."""

from __future__ import annotations

from collections import deque

import numpy as np
import pandas as pd

from retrain.drift.counts import _vectors
from retrain.drift.detect import _check_columns, _evaluate
from retrain.drift.report import DEFAULT_POLICY, DriftPolicy, DriftReport
from retrain.drift.sketch import ReferenceSketch
from retrain.errors import InvalidValueError


class StreamingDrift:
    """Drift of a live input stream against the reference sketch, in bounded memory.

    A sliding count window: rows are counted into panes of ``step`` rows, and the statistics
    cover the last ``window // step`` complete panes, i.e. the last ``window`` rows as of the
    latest pane boundary. Each time a pane completes, the window is evaluated with `compare`'s
    rules, and `drift_detected` holds that evaluation's dataset-level verdict (set the
    policy's max_drifted_share to 0 to alarm on any one feature). Memory is
    ``window // step + 1`` count vectors per feature, never rows; a chunk larger than a pane
    is split at the pane boundaries. The first evaluations see fewer than ``window`` rows
    (and none below the policy's min_rows).

    There is no reset on detection: the reference is the training data, so the alarm holds
    for as long as the window differs from it (call `reset` to start over). Rows of an
    incomplete pane are counted but wait for its boundary.
    """

    def __init__(self, reference: ReferenceSketch, *, window: int = 5000,
                 step: int | None = None, policy: DriftPolicy = DEFAULT_POLICY) -> None:
        step = max(window // 5, 1) if step is None else step
        if step < 1 or window < step or window % step:
            raise InvalidValueError(
                f"window ({window}) must be a positive multiple of step ({step})")
        self.reference = reference
        self.window = window
        self.step = step
        self.policy = policy
        self.reset()

    def reset(self) -> None:
        self._panes: deque[dict[str, np.ndarray]] = deque(maxlen=self.window // self.step)
        self._pane: dict[str, np.ndarray] | None = None
        self._pane_rows = 0
        self._report: DriftReport | None = None
        self.rows_seen = 0
        self.evaluations = 0

    @property
    def drift_detected(self) -> bool:
        return self._report is not None and self._report.dataset_drifted

    def update(self, chunk: pd.DataFrame) -> bool:
        """Count a chunk of inputs; return `drift_detected` after it."""
        _check_columns(self.reference, chunk)
        start = 0
        while start < len(chunk):
            take = min(self.step - self._pane_rows, len(chunk) - start)
            counts = _vectors(self.reference.features, chunk.iloc[start : start + take])
            if self._pane is None:
                self._pane = counts
            else:
                for name, vector in counts.items():
                    self._pane[name] += vector
            self._pane_rows += take
            self.rows_seen += take
            start += take
            if self._pane_rows == self.step:
                self._panes.append(self._pane)
                self._pane, self._pane_rows = None, 0
                self._report = self._evaluate()
                self.evaluations += 1
        return self.drift_detected

    def _evaluate(self) -> DriftReport:
        if not self._panes:
            return _evaluate(self.reference, {}, 0, self.policy)
        totals = {name: np.sum([pane[name] for pane in self._panes], axis=0)
                  for name in self.reference.features}
        return _evaluate(self.reference, totals, len(self._panes) * self.step, self.policy)

    def report(self) -> DriftReport:
        """The latest evaluation: the last ``window`` rows as of the latest pane boundary."""
        return self._evaluate() if self._report is None else self._report
