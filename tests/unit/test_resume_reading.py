"""Reading back what a dead driver left: its trials' own records count even when Tune's saved
experiment state was cut short by the kill."""

import json

import pytest

from retrain.search.resume import _finished_trials, _saved_statuses
from retrain.trial_report import CONFIG_KEY, REPORTS_KEY, SCORE_KEY, STATUS_KEY


def _experiment(tmp_path, state: str):
    """An experiment folder with Tune's saved state (``state``) and one trial the driver
    recorded as stopped by ASHA after 4 of its 10 rounds."""
    path = tmp_path / "synthetic-1"
    (path / "retrain-trials").mkdir(parents=True)
    (path / "experiment_state-2026-12-07_06-32-59.json").write_text(state)
    record = {"trial_id": "a1", STATUS_KEY: "terminated", "error": None,
              CONFIG_KEY: {"family": "xgboost", "xgboost": {"eta": 0.1}},
              REPORTS_KEY: [{"round": r, SCORE_KEY: 0.7 + r / 100} for r in (2, 4)]}
    (path / "retrain-trials" / "a1.json").write_text(json.dumps(record))
    return str(path)


@pytest.mark.parametrize("state", ["", '{"trial_data": [[', "[]"])
def test_a_state_file_cut_short_reads_as_no_state_and_the_records_still_count(tmp_path, state):
    path = _experiment(tmp_path, state)
    assert _saved_statuses(path) == {}
    [trial] = _finished_trials(path, {"xgboost": 10})
    assert (trial.trial_id, trial.status, trial.rounds) == ("a1", "stopped", 4)
    assert trial.params == {"eta": 0.1} and trial.score == pytest.approx(0.74)


def test_a_folder_tune_never_saved_has_no_state(tmp_path):
    assert _saved_statuses(str(tmp_path)) == {}
