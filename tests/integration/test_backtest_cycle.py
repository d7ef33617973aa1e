"""`retrain backtest --mode cycle`: the partitions replayed through real cycles (a real Ray
cluster, a real SQLite MLflow store per policy)."""

from __future__ import annotations

import json

import pytest
import yaml

from retrain.cli import main
from tests.synthetic import config_dict, write_partitions

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_cycle_mode_replays_real_cycles_under_each_policy(ray_cluster, tmp_path, capsys):
    # stable for three periods, then the boundary jumps: a cycle must answer it at once
    write_partitions(tmp_path / "data", range(1, 6), rows=800,
                     shift={4: 3.0, 5: 3.0})
    raw = config_dict(tmp_path / "data", tmp_path / "work",
                      resources={"cpus_per_trial": 0.9})
    raw["ray"] = {"address": ray_cluster["address"]}
    raw["data"]["holdout_share"] = 0.5  # the default: the holdout's older half trains
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["backtest", "--config", str(path), "--mode", "cycle", "--initial", "2",
                 "--trials", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    periods = result["periods"]
    assert [p["partition"] for p in periods] == ["3", "4", "5"]
    summary = result["summary"]
    # every period but the last is followed by a real cycle; never trains none
    assert summary["every"]["cycles"] == 2 and summary["never"]["cycles"] == 0
    assert 0 <= summary["triggers"]["cycles"] <= 2
    assert summary["every"]["seconds"] > 0
    assert all(0.0 <= p["metrics"][k] <= 1.0 for p in periods for k in p["metrics"])
    # the first period is served by the same first model under every policy
    first = periods[0]["metrics"]
    assert first["never"] == first["every"] == first["triggers"]
    # after the jump (period 4 arrives), the models retrained on it serve period 5 better
    # than the model that never saw it
    assert periods[2]["metrics"]["every"] > periods[2]["metrics"]["never"]
    assert periods[1]["retrained"]["triggers"], periods[1]["trigger_reason"]
    assert periods[2]["metrics"]["triggers"] > periods[2]["metrics"]["never"]
    # nothing is left behind: the policies' projects lived in a temporary folder
    assert not (tmp_path / "work").exists()
