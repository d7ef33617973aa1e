"""Each trial's report lines and final model, kept under the experiment's storage so a resumed
search can read them.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from retrain.trial_report import (
    AT_KEY,
    BEST_ROUND_KEY,
    CONFIG_KEY,
    ERROR_KEY,
    FINAL_KEY,
    FIT_KEY,
    METRICS_FILE,
    REPORTS_KEY,
    SCORE_KEY,
    STATUS_KEY,
    TRAINED_KEY,
)

#: what a driver-written record keeps of each report
_REPORT_KEYS = ("round", SCORE_KEY, TRAINED_KEY, AT_KEY, FIT_KEY, BEST_ROUND_KEY, FINAL_KEY,
                "gpu", "trial_id", "time_total_s")


def storage_fs(path: str):
    """(pyarrow filesystem, path on it) of a local folder or any URI pyarrow reads: the
    inference log's own resolver, so both read storage the same way."""
    from serve.inference_log import resolve

    return resolve(path)


def _write_whole(fs, path: str, data: bytes) -> None:
    """Write a file so that readers see it whole or not at all: written under another name
    and moved (a rename on a local or shared file system; an object store's move is a copy
    that makes the object appear whole)."""
    partial = f"{path}.partial-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(partial) as stream:
        stream.write(data)
    fs.move(partial, path)


def save_final(records: str, trial_id: str, folder: Path) -> None:
    """Copy a trial's final checkpoint folder to ``<records>/<trial_id>/``: the model files
    first, METRICS_FILE (whose manifest says their sizes) last, each file written whole."""
    fs, base = storage_fs(records)
    target = f"{base}/{trial_id}"
    fs.create_dir(target, recursive=True)
    files = sorted(folder.iterdir(), key=lambda f: f.name == METRICS_FILE)
    for file in files:
        _write_whole(fs, f"{target}/{file.name}", file.read_bytes())


def _error_text(trial) -> str:
    """The error a failed Tune trial left in its error file ("" when it left none)."""
    if trial.error_file and Path(trial.error_file).exists():
        return Path(trial.error_file).read_text(errors="replace")
    return ""


def _records_callback(records: str):
    """A Tune callback that writes the record of each trial Tune stops (ASHA, or at its
    end) or that fails, on storage, as Tune ends it (see `RECORDS_DIR`)."""
    # Tune pickles callbacks with the experiment state: this one holds only plain data
    from ray import tune

    class Records(tune.Callback):
        def __init__(self) -> None:
            self.reports: dict[str, list[dict[str, Any]]] = {}

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            self.reports.setdefault(trial.trial_id, []).append(
                {k: result[k] for k in _REPORT_KEYS if k in result})

        def _save(self, trial, status: str, error: str | None) -> None:
            fs, base = storage_fs(records)
            fs.create_dir(base, recursive=True)
            record = {"trial_id": trial.trial_id, STATUS_KEY: status, ERROR_KEY: error,
                      CONFIG_KEY: trial.config,
                      REPORTS_KEY: self.reports.pop(trial.trial_id, [])}
            _write_whole(fs, f"{base}/{trial.trial_id}.json",
                         json.dumps(record, default=str).encode())

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._save(trial, "terminated", None)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._save(trial, "error", _last_line(_error_text(trial)))

    return Records()


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "the trial failed (no error saved)")[:1000]
