"""A whole cycle on a real Ray cluster, a real SQLite MLflow store and real HTTP on 127.0.0.1."""

from __future__ import annotations

import threading
import time

import httpx
import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from retrain import SearchError, TrialResult, Verdict, load_config, run_cycle
from retrain.cli import main
from retrain.serving import start_serving
from tests.conftest import wait_until
from tests.synthetic import config_dict, write_partitions

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _write_config(root, **overrides):
    raw = config_dict(root / "data", root / "work", **overrides)
    path = root / "retrain.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path), path


@pytest.fixture(scope="module")
def project(ray_cluster, serve_port, tmp_path_factory):
    root = tmp_path_factory.mktemp("cycle")
    write_partitions(root / "data", [1, 2, 3], rows=1500)
    config, path = _write_config(
        root,
        resources={"cpus_per_trial": 0.9},
        serving={"port": serve_port, "cpus_per_replica": 0.2, "poll_interval_s": 0.5},
    )
    result = run_cycle(config)
    return {"root": root, "config": config, "path": path, "first": result}


@pytest.fixture(scope="module")
def client(project):
    uri = project["config"].tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def served(project):
    url = start_serving(project["config"])
    wait_until(lambda: _health(url).get("model_version") == "1", timeout=120)
    return url


def _health(url: str) -> dict:
    try:
        return httpx.get(f"{url}/health", timeout=5).json()
    except httpx.HTTPError:
        return {}


ROW = {"x1": 0.3, "x2": 4.0, "cat": "b"}


def test_first_cycle_promotes_and_sets_the_champion_alias(project, client):
    first = project["first"]
    assert first.decision.verdict is Verdict.PROMOTE
    assert first.model_version == "1" and first.champion_version == "1"
    assert str(client.get_model_version_by_alias("synthetic", "champion").version) == "1"
    assert first.comparison.champion is None
    assert first.comparison.holdout_rows == 1500


def test_search_results_are_typed_and_every_trial_is_accounted_for(project):
    search = project["first"].search
    assert len(search.trials) == 4
    assert all(isinstance(t, TrialResult) for t in search.trials)
    assert sum(search.count(s) for s in ("completed", "stopped", "failed")) == 4
    assert search.best.status == "completed"
    # every completed trial reported once per 5 rounds (20 is the cap; early stopping waits
    # 30 rounds) and kept its best round's model
    for trial in search.trials:
        if trial.status == "completed":
            assert [h["round"] for h in trial.history] == [5, 10, 15, 20]
            best = max(trial.history, key=lambda h: h["score"])
            assert trial.rounds == best["round"] and trial.score == best["score"]
    assert search.best.score == max(t.score for t in search.trials if t.status == "completed")


def test_mlflow_holds_cycle_run_trial_runs_and_a_ubj_model(project, client):
    first = project["first"]
    parent = client.get_run(first.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["retrain.verdict"] == "promote"
    assert parent.data.tags["data.holdout_partitions"] == "3"
    assert parent.data.tags["retrain.model_version"] == "1"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{first.run_id}'"
    )
    assert len(children) == 4
    best = next(c for c in children if c.info.run_name == f"trial-{first.search.best.trial_id}")
    history = client.get_metric_history(best.info.run_id, "valid_auc")
    assert [m.step for m in history] == [5, 10, 15, 20]
    assert set(best.data.params) >= {"max_depth", "eta"}
    artifacts = {a.path for a in client.list_artifacts(first.run_id)}
    assert "decision.json" in artifacts
    decision = mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/decision.json")
    assert decision["decision"]["verdict"] == "promote"
    version = client.get_model_version("synthetic", "1")
    mlflow.set_tracking_uri(project["config"].tracking_uri)
    local = mlflow.artifacts.download_artifacts(f"models:/synthetic/{version.version}")
    files = {p.name for p in __import__("pathlib").Path(local).iterdir()}
    assert "model.ubj" in files and "MLmodel" in files
    assert version.tags["data.train_partitions"] == "1,2"


def test_served_champion_answers_with_its_version(served):
    response = httpx.post(f"{served}/invocations", json={"dataframe_records": [ROW, ROW]})
    assert response.status_code == 200
    body = response.json()
    assert body["model_version"] == "1"
    assert response.headers["x-model-version"] == "1"
    assert len(body["predictions"]) == 2 and all(0 < p < 1 for p in body["predictions"])
    assert body["request_id"]


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"dataframe_records": [{"x1": 1}]}', 400, "missing feature"),
        (b'{"dataframe_records": [{"x1": "a", "x2": 1, "cat": "a"}]}', 400, "numeric"),
        (b'{"rows": []}', 400, "exactly one of"),
        (b"[]", 400, "JSON object"),
        (b'{"instances": [{"x1": [1,2], "x2": 1, "cat": "a"}]}', 400, "nested"),
    ],
)
def test_bad_bodies_get_4xx_with_a_message(served, content, status, message):
    response = httpx.post(
        f"{served}/invocations", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert message in response.json()["error"]


def test_oversized_body_is_413_and_wrong_method_is_405(served):
    big = b'{"instances": [' + b'{"x1": 1, "x2": 2, "cat": "a"},' * 300_000 + b"{}]}"
    assert httpx.post(f"{served}/invocations", content=big).status_code == 413
    assert httpx.get(f"{served}/invocations").status_code == 405


def test_promotion_moves_traffic_without_a_failed_request(project, served, client):
    root = project["root"]
    log: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def load():
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    r = http.post(f"{served}/invocations", json={"dataframe_records": [ROW]})
                    version = r.json().get("model_version") if r.status_code == 200 else None
                    log.append((started, r.status_code, version))
                except httpx.HTTPError as exc:
                    log.append((started, 0, type(exc).__name__))
                time.sleep(0.01)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        write_partitions(root / "data", [4], rows=1500, shift={4: 0.4})
        # accept any challenger here: this test is about the cutover, not the decision (the
        # load this test puts on two cores would make the latency guardrails a coin toss)
        config, _ = _write_config(
            root,
            evaluation={"min_improvement": -1.0,
                        "guardrails": {"max_latency_ratio": None,
                                       "max_batch_latency_ratio": None}},
            resources={"cpus_per_trial": 0.9},
            serving=project["config"].serving.model_dump(),
        )
        second = run_cycle(config)
        assert second.decision.verdict is Verdict.PROMOTE and second.model_version == "2"
        assert second.comparison.champion_version == "1"
        assert second.comparison.champion is not None
        wait_until(lambda: _health(served).get("model_version") == "2", timeout=60)
        cutover = time.monotonic()
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failures = [entry for entry in log if entry[1] != 200]
    assert not failures, failures[:5]
    assert {v for _, _, v in log} == {"1", "2"}
    after = [v for started, _, v in log if started > cutover]
    assert after and set(after) == {"2"}
    assert str(client.get_model_version_by_alias("synthetic", "champion").version) == "2"


def test_status_shows_champion_and_decisions(project, capsys):
    assert main(["status", "--config", str(project["path"])]) == 0
    out = capsys.readouterr().out
    assert "champion: version" in out
    assert "promote" in out and "holdout=3" in out


def test_a_bad_new_partition_is_quarantined_and_left_on_disk(project, client, tmp_path):
    from pathlib import Path

    from tests.synthetic import frame

    root = project["root"]
    bad = root / "data" / "period=5"
    bad.mkdir()
    # a broken export upstream: x2 is gone, every value missing (a unit change or a drift
    # would only warn: real data moves, and drift is information for the model)
    broken = frame(1500, 55).assign(x2=float("nan"))
    broken.to_parquet(bad / "part-0.parquet", index=False)
    before = (bad / "part-0.parquet").read_bytes()
    champion = str(client.get_model_version_by_alias("synthetic", "champion").version)
    config, _ = _write_config(root, resources={"cpus_per_trial": 0.9},
                              serving=project["config"].serving.model_dump())
    result = run_cycle(config)
    assert result.admission.quarantined == ("5",)
    (verdict,) = result.admission.partitions
    assert any(p.startswith("x2: every value is missing") for p in verdict.problems)
    assert result.excluded == ("5",)
    assert "5" not in result.lineage["data.train_partitions"].split(",")
    assert result.lineage["data.holdout_partitions"] == "4"
    assert result.decision.verdict is not Verdict.PROMOTE  # same data as the champion's
    assert str(client.get_model_version_by_alias("synthetic", "champion").version) == champion
    assert (bad / "part-0.parquet").read_bytes() == before  # nothing moved or deleted
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert "admission.json" in artifacts
    assert "quarantined" in __import__("pathlib").Path(result.report_path).read_text()
    # the admission page: written to the workdir and logged on the cycle's run, with x2's plot
    assert "admission.html" in artifacts
    page = (Path(config.project.workdir) / "reports" / f"admission-{result.cycle_id}.html")
    text = page.read_text()
    assert "every value is missing" in text and "left on disk" in text
    assert "retrain readmit" in text
    assert '<figure data-partition="5" data-feature="x2">' in text
    logged = client.download_artifacts(result.run_id, "admission.html", str(tmp_path))
    assert Path(logged).read_text() == text


def test_a_search_where_every_trial_fails_leaves_the_champion(project, client):
    before = str(client.get_model_version_by_alias("synthetic", "champion").version)
    config, _ = _write_config(
        project["root"],
        search={"num_samples": 2, "max_failures": 0, "space": {
            "grow_policy": "bogus", "eta": {"type": "float", "low": 0.1, "high": 0.3}}},
        resources={"cpus_per_trial": 0.9},
    )
    with pytest.raises(SearchError, match=r"no trial of 2 completed.*Invalid Input: 'bogus'"):
        run_cycle(config)
    assert str(client.get_model_version_by_alias("synthetic", "champion").version) == before
    failed = client.search_runs(
        [client.get_experiment_by_name("synthetic").experiment_id],
        filter_string="tags.`retrain.kind` = 'cycle' and attributes.status = 'FAILED'",
    )
    assert failed and "SearchError" in failed[0].data.tags["retrain.error"]
    trials = client.search_runs(
        [failed[0].info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{failed[0].info.run_id}'",
    )
    assert len(trials) == 2
    for trial in trials:
        assert trial.info.status == "FAILED"
        assert "Invalid Input: 'bogus'" in trial.data.tags["retrain.error"]


def test_ledger_answers_which_version_served_when_and_why(project, capsys):
    from retrain.ledger import EventKind, Ledger

    config = project["config"]
    ledger = Ledger(config.ledger_path)
    events = ledger.events(model_name="synthetic")
    moves = [e for e in events if e.kind is EventKind.ALIAS_MOVE]
    decisions = [e for e in events if e.kind is EventKind.DECISION]
    assert [m.version for m in moves] == ["1", "2"]
    assert [d.verdict for d in decisions][:2] == ["promote", "promote"]
    assert decisions[0].data_snapshot["partitions"][-1]["role"] == "holdout"
    between = (moves[0].at + moves[1].at) / 2
    served = ledger.served_at("synthetic", between)
    assert served.version == "1" and served.decision.run_id == project["first"].run_id
    assert ledger.served_at("synthetic", moves[0].at - 1) is None
    assert main(["history", "--config", str(project["path"]), "--at", str(between)]) == 0
    out = capsys.readouterr().out
    assert "synthetic@champion was version 1" in out and "because:" in out
    assert main(["history", "--config", str(project["path"])]) == 0
    assert "alias_move" in capsys.readouterr().out


def test_cycle_report_is_written_and_logged(project, client):
    first = project["first"]
    report = __import__("pathlib").Path(first.report_path).read_text()
    assert "PROMOTE" in report and report.count("data:image/png;base64,") >= 1
    assert "Checks" in report and "Search" in report
    artifacts = {a.path for a in client.list_artifacts(first.run_id)}
    assert {"report.html", "decision.json"} <= artifacts
