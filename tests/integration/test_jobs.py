"""`ray job submit ... -- retrain run` against the cluster the session started with `ray start`."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import _ray_cli
from tests.synthetic import config_dict, write_partitions

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_ray_job_submission_runs_a_cycle(ray_cluster, tmp_path):
    project = tmp_path / "project"
    write_partitions(project / "data", [1, 2, 3], rows=800)
    # data travels with the working dir (relative path); the MLflow store stays outside it
    raw = config_dict("data", tmp_path / "store")
    raw["search"].update(num_samples=2, num_boost_round=10)
    (project / "retrain.yaml").write_text(yaml.safe_dump(raw))
    submit = [
        _ray_cli(), "job", "submit", "--address", ray_cluster["dashboard"],
        "--working-dir", str(project), "--",
        "retrain", "run", "--config", "retrain.yaml", "--json",
    ]
    done = subprocess.run(submit, env=ray_cluster["env"], capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout
    start = done.stdout.index("{\n")
    end = done.stdout.index("\n}", start) + 2
    result = json.loads(done.stdout[start:end])
    assert result["decision"]["verdict"] == "promote"
    assert result["trials"]["completed"] >= 1
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("synthetic", "champion")
    assert str(champion.version) == result["model_version"] == "1"


def test_job_with_a_bad_config_fails_with_the_message(ray_cluster, tmp_path):
    project = tmp_path / "bad"
    project.mkdir()
    (project / "retrain.yaml").write_text("project: {name: x}\ndata: {path: d}\n")
    submit = [
        _ray_cli(), "job", "submit", "--address", ray_cluster["dashboard"],
        "--working-dir", str(project), "--", "retrain", "run", "--config", "retrain.yaml",
    ]
    done = subprocess.run(submit, env=ray_cluster["env"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "data.partition_column: required but missing" in output
    assert "task: required but missing" in output


def test_on_demand_request_and_the_controller_run_as_ray_jobs(ray_cluster, tmp_path):
    from retrain.ledger import EventKind, Ledger
    from serve.inference_log import pending_requests

    project = tmp_path / "project"
    write_partitions(project / "data", [1, 2, 3], rows=600)
    store = tmp_path / "store"
    raw = config_dict(str(project / "data"), store)
    raw["search"].update(num_samples=2, num_boost_round=10)
    (project / "retrain.yaml").write_text(yaml.safe_dump(raw))

    def job(*command: str) -> str:
        submit = [_ray_cli(), "job", "submit", "--address", ray_cluster["dashboard"],
                  "--working-dir", str(project), "--", "retrain", *command,
                  "--config", "retrain.yaml"]
        done = subprocess.run(submit, env=ray_cluster["env"], capture_output=True, text=True,
                              timeout=400)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    job("request", "--reason", "from a ray job")
    (request,) = pending_requests(store / "inference")
    assert request.reason == "from a ray job"
    out = job("watch", "--once")
    assert "on_demand fired" in out and "after starting 1 cycle(s)" in out, out[-3000:]
    assert pending_requests(store / "inference") == []
    cycles = Ledger(store / "ledger.db").events(kinds=[EventKind.CYCLE])
    assert [c.details["outcome"] for c in cycles] == ["started", "finished"]
    assert cycles[-1].details["verdict"] == "promote"
