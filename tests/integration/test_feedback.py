"""Inference log, feedback and admin endpoints on real Ray Serve, real HTTP, real Parquet."""

from __future__ import annotations

import os
import uuid

import httpx
import pandas as pd
import pytest
import yaml

from retrain import Verdict, load_config, run_cycle
from retrain.serving import start_serving
from serve.inference_log import consume_request, pending_requests, read_feedback, read_predictions
from tests.conftest import wait_until
from tests.synthetic import config_dict, write_partitions

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TOKEN_ENV = "RETRAIN_TEST_FEEDBACK_TOKEN"
UNSET_ENV = "RETRAIN_TEST_FEEDBACK_TOKEN_UNSET"
TOKEN = "feedback-test-" + uuid.uuid4().hex
AUTH = {"authorization": f"Bearer {TOKEN}"}
ROW = {"x1": 0.3, "x2": 4.0, "cat": "b"}


def _config(root, serve_port, *, log: dict | None = None, **serving):
    raw = config_dict(
        root / "data", root / "work",
        search={"num_samples": 2, "num_boost_round": 10, "report_every": 5},
        resources={"cpus_per_trial": 0.9},
        serving={"port": serve_port, "cpus_per_replica": 0.2, "poll_interval_s": 0.5,
                 **serving},
    )
    path = root / f"{serving['app_name']}.yaml"
    path.write_text(yaml.safe_dump(raw | {"inference_log": log or {}}))
    return load_config(path)


def _health(url: str) -> dict:
    try:
        return httpx.get(f"{url}/health", timeout=5).json()
    except httpx.HTTPError:
        return {}


def _serve(config) -> str:
    url = start_serving(config)
    wait_until(lambda: _health(url).get("model_version") == "1", timeout=120)
    return url


@pytest.fixture(scope="module")
def project(ray_cluster, serve_port, tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback")
    write_partitions(root / "data", [1, 2, 3], rows=1500)
    config = _config(root, serve_port, app_name="feedback-test", route_prefix="/fb",
                     admin_token_env=TOKEN_ENV, log={"flush_interval_s": 0.3})
    result = run_cycle(config)
    assert result.decision.verdict is Verdict.PROMOTE and result.model_version == "1"
    return {"root": root, "config": config, "port": serve_port}


@pytest.fixture(scope="module")
def served(project):
    from ray import serve

    os.environ[TOKEN_ENV] = TOKEN
    try:
        url = _serve(project["config"])
    finally:
        # The token travels in the app's settings; the replica never reads the environment.
        del os.environ[TOKEN_ENV]
    yield url
    serve.delete(project["config"].serving.app_name)


@pytest.fixture(scope="module")
def log_path(project) -> str:
    return project["config"].inference_log_path


def _predict(url: str, records: list[dict], request_id: str | None = None) -> httpx.Response:
    headers = {"x-request-id": request_id} if request_id else {}
    response = httpx.post(f"{url}/invocations", json={"dataframe_records": records},
                          headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response


def test_every_prediction_lands_in_parquet_with_version_and_raw_typed_features(served, log_path):
    rid = f"pred-{uuid.uuid4().hex}"
    sent = [ROW, {"x1": -1, "x2": None, "cat": "zzz"}]  # an int, a missing value, a new category
    answer = _predict(served, sent, request_id=rid).json()
    other = _predict(served, [ROW]).json()

    def logged() -> tuple[pd.DataFrame] | None:
        frame = read_predictions(log_path)
        return (frame,) if {rid, other["request_id"]} <= set(frame["request_id"]) else None

    (frame,) = wait_until(logged, timeout=30)
    assert list(frame.columns) == ["request_id", "row", "ts", "model_version", "prediction",
                                   "latency_ms", "shadow", "error", "x1", "x2", "cat"]
    mine = frame[frame["request_id"] == rid].sort_values("row")
    assert mine["row"].tolist() == [0, 1]
    assert set(mine["model_version"]) == {"1"}
    assert mine["prediction"].tolist() == pytest.approx(answer["predictions"])
    assert mine["x1"].tolist() == [0.3, -1.0] and frame["x1"].dtype == "float64"
    assert mine["x2"].iloc[0] == 4.0 and pd.isna(mine["x2"].iloc[1])
    assert mine["cat"].tolist() == ["b", "zzz"]  # as sent, before category encoding
    assert str(frame["ts"].dtype) == "datetime64[ms, UTC]"
    files = list((__import__("pathlib").Path(log_path) / "predictions").rglob("*.parquet"))
    assert files and all(p.parent.name.startswith("hour=") for p in files)
    assert all(p.parent.parent.name.startswith("date=") for p in files)


def test_health_reports_the_log(served):
    def written() -> dict | None:
        log = _health(served).get("inference_log", {})
        return log if log.get("predictions_written", 0) > 0 else None

    log = wait_until(written, timeout=30)
    assert log["enabled"] is True and log["rows_dropped"] == 0 and log["last_error"] is None
    assert log["writer_id"] and log["files_written"] >= 1


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {TOKEN}"},
     {"authorization": TOKEN}],
    ids=["none", "wrong", "basic-scheme", "no-scheme"],
)
def test_feedback_without_the_right_token_is_401_and_stores_nothing(
    served, log_path, headers
):
    rid = f"denied-{uuid.uuid4().hex}"
    response = httpx.post(f"{served}/feedback", headers=headers,
                          json={"labels": [{"request_id": rid, "label": 1}]})
    assert response.status_code == 401
    assert "Authorization: Bearer" in response.json()["error"]
    assert response.headers["www-authenticate"] == "Bearer"
    wait_until(lambda: _health(served)["inference_log"]["rows_buffered"] == 0, timeout=10)
    assert rid not in set(read_feedback(log_path)["request_id"])


def test_feedback_with_the_token_is_stored_and_read_back(served, log_path):
    answer = _predict(served, [ROW, ROW]).json()
    rid = answer["request_id"]
    response = httpx.post(f"{served}/feedback", headers=AUTH, json={
        "labels": [{"request_id": rid, "row": 0, "label": 1}, {"request_id": rid, "row": 1,
                                                              "label": 0}]})
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 2

    def stored() -> tuple[pd.DataFrame] | None:
        frame = read_feedback(log_path)
        mine = frame[frame["request_id"] == rid]
        return (mine,) if len(mine) == 2 else None

    (mine,) = wait_until(stored, timeout=30)
    mine = mine.sort_values("row")
    assert mine["label"].tolist() == [1.0, 0.0] and mine["row"].tolist() == [0, 1]
    joined = read_predictions(log_path).merge(mine, on=["request_id", "row"])
    assert len(joined) == 2  # labels join the logged predictions on (request_id, row)


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[]", 400, "JSON object"),
        (b'{"labels": "x"}', 400, "must be a list"),
        (b'{"labels": [{"request_id": "a"}]}', 400, "no 'label'"),
        (b'{"labels": [{"label": 1}]}', 400, "request_id"),
        (b'{"labels": [{"request_id": "a", "label": "yes"}]}', 400, "finite number"),
        (b'{"labels": [' + b'{"request_id": "a", "label": 1},' * 10_000
         + b'{"request_id": "a", "label": 1}]}', 413, "limit of 10000"),
    ],
    ids=["not-json", "array", "labels-not-list", "no-label", "no-request-id", "text-label",
         "too-many"],
)
def test_bad_feedback_bodies_get_4xx_with_a_message(served, content, status, message):
    response = httpx.post(f"{served}/feedback", content=content,
                          headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == status
    assert message in response.json()["error"]


def test_admin_retrain_writes_a_request_for_the_controller(served, log_path):
    assert httpx.post(f"{served}/admin/retrain", json={"reason": "x"}).status_code == 401
    assert httpx.post(f"{served}/admin/retrain", headers=AUTH,
                      content=b"[1]").status_code == 400
    assert pending_requests(log_path) == []
    response = httpx.post(f"{served}/admin/retrain", headers=AUTH,
                          json={"reason": "new fares table"})
    assert response.status_code == 202, response.text
    made = response.json()["retrain_request_id"]
    (pending,) = pending_requests(log_path)
    assert pending.id == made and pending.reason == "new fares table"
    assert pending.requested_by == "http 127.0.0.1"
    assert consume_request(log_path, made) and pending_requests(log_path) == []
    empty = httpx.post(f"{served}/admin/retrain", headers=AUTH)  # no body: no reason
    assert empty.status_code == 202
    assert [r.reason for r in pending_requests(log_path)] == [""]
    consume_request(log_path, empty.json()["retrain_request_id"])


def test_without_a_configured_token_the_endpoints_are_403_and_shutdown_flushes(project):
    from ray import serve

    assert UNSET_ENV not in os.environ
    root = project["root"]
    config = _config(root, project["port"], app_name="feedback-notoken", route_prefix="/fb0",
                     admin_token_env=UNSET_ENV,
                     log={"path": str(root / "inference-notoken"), "flush_rows": 100_000,
                          "flush_interval_s": 3600})
    url = _serve(config)
    try:
        for endpoint in ("feedback", "admin/retrain"):
            response = httpx.post(f"{url}/{endpoint}", headers=AUTH,
                                  json={"labels": [{"request_id": "a", "label": 1}]})
            assert response.status_code == 403
            assert UNSET_ENV in response.json()["error"]
        rid = _predict(url, [ROW, ROW, ROW]).json()["request_id"]
        assert _health(url)["inference_log"]["rows_buffered"] == 3
    finally:
        serve.delete(config.serving.app_name)
    # Far below flush_rows and flush_interval_s: only the replica's shutdown wrote them.
    logged = read_predictions(config.inference_log_path)
    assert logged["request_id"].tolist() == [rid] * 3


def test_app_builder_types_string_args_and_reads_the_token_from_the_environment(monkeypatch):
    from serve.app import app_builder

    monkeypatch.setenv("RETRAIN_ADMIN_TOKEN", "from-env")
    app = app_builder({"tracking_uri": "sqlite:///x.db", "model_name": "m", "port": "8123",
                       "flush_interval_s": "0.5", "log_predictions": "false",
                       "inference_log_path": "none"})
    (settings,) = app._bound_deployment.init_args
    assert settings["port"] == 8123 and settings["flush_interval_s"] == 0.5
    assert settings["log_predictions"] is False and settings["inference_log_path"] is None
    # only a salted hash of the token is a deployment argument (Ray stores those)
    assert settings["admin_token"] is None and "from-env" not in str(settings)
    with pytest.raises(ValueError, match="log_predictions must be true or false"):
        app_builder({"tracking_uri": "t", "model_name": "m", "log_predictions": "maybe"})
