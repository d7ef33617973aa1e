"""The training window as a searched family, and the refit finalists, in a real cycle (a real
Ray cluster and a real SQLite MLflow store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrain import run_cycle
from retrain.candidates import WINDOW, XGBOOST
from retrain.config import config_from_dict
from tests.synthetic import config_dict, write_partitions

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_window_trials_compete_and_finalists_are_judged_refit_on_every_row(ray_cluster,
                                                                            tmp_path):
    # the boundary moved two periods ago: old rows mislead, a window can leave them out
    write_partitions(tmp_path / "data", range(1, 6), rows=600, shift={4: 2.5, 5: 2.5})
    raw = config_dict(tmp_path / "data", tmp_path / "work",
                      resources={"cpus_per_trial": 0.9})
    raw["search"]["families"] = {"xgboost_window": {"enabled": True}}
    raw["data"]["holdout_share"] = 0.5
    raw["ray"] = {"address": ray_cluster["address"]}
    config = config_from_dict(raw)
    result = run_cycle(config)
    search = result.search
    assert search.families == (XGBOOST, WINDOW)
    window = [t for t in search.trials if t.family == WINDOW]
    assert len(window) == 2 and all(t.params["recent_partitions"] >= 1 for t in window)
    # the first trial of each family is its default configuration
    assert window[0].params["half_life"] == 1.0 or window[1].params["half_life"] == 1.0
    # finalists were refit on every training row: 4 partitions and the holdout's older half
    rows = 4 * 600 + 300
    assert all(f.trained_rows == rows for f in result.comparison.finalists)
    assert result.lineage["search.refit"].startswith(f"refit on all {rows} training rows")
    assert result.lineage["data.holdout_head_rows"] == "300"
    assert result.comparison.holdout_rows == 300
    page = Path(result.report_path).read_text()
    assert "trained rows" in page and WINDOW in page and "half-life" in page
