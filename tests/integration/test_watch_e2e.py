"""End to end on a real Ray cluster and Serve app: live traffic drives the controller.

Drifted live inputs make `retrain watch` start a cycle; labels posted to /feedback that show
the champion doing badly make the performance trigger fire. Everything is real: the cycle
(Ray Tune, MLflow in SQLite), the Serve app answering HTTP on 127.0.0.1, its inference log
in Parquet, the monitor reading it, the ledger.
"""

import time

import httpx
import numpy as np
import pytest
import yaml

from retrain.config import load_config
from retrain.ledger import EventKind, Ledger
from retrain.pipeline import run_cycle
from retrain.serving import start_serving
from retrain.watch import Controller
from serve.inference_log import pending_requests, read_predictions
from tests.synthetic import config_dict, frame, write_partitions

TOKEN = "e2e-secret"
ROWS_PER_REQUEST = 50

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(ray_cluster, serve_port, tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("watch")
    write_partitions(root / "data", [1, 2, 3], rows=1500)
    raw = config_dict(
        root / "data", root / "work",
        resources={"cpus_per_trial": 0.9},
        serving={"port": serve_port, "cpus_per_replica": 0.2, "poll_interval_s": 0.5,
                 "app_name": "watch-e2e", "route_prefix": "/watch"},
        inference_log={"flush_rows": 200, "flush_interval_s": 0.3},
        monitor={"window_rows": 1000, "min_rows": 300},
        triggers={"debounce": 1, "cooldown_s": 0, "check_interval_s": 1,
                  "performance": {"tolerance": 0.05, "min_samples": 300}},
    )
    # the project's own first model: this test is about what happens after
    path = root / "retrain.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    assert run_cycle(config).model_version == "1"
    monkeypatch_module.setenv(config.serving.admin_token_env, TOKEN)
    url = start_serving(config)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).json().get("model_version") == "1":
                break
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    else:
        pytest.fail("the app never served version 1")
    yield {"config": config, "url": url}
    from ray import serve

    serve.delete(config.serving.app_name)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _send(url: str, rows, http: httpx.Client) -> list[tuple[str, int, float]]:
    """Answer ``rows`` through HTTP; (request_id, row, prediction) for each."""
    out = []
    records = rows[["x1", "x2", "cat"]].to_dict(orient="records")
    for start in range(0, len(records), ROWS_PER_REQUEST):
        body = {"dataframe_records": records[start : start + ROWS_PER_REQUEST]}
        response = http.post(f"{url}/invocations", json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        out += [(answer["request_id"], i, p) for i, p in enumerate(answer["predictions"])]
    return out


def _logged(config, at_least: int, since: float) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if len(read_predictions(config.inference_log_path, since=since)) >= at_least:
            return
        time.sleep(0.2)
    pytest.fail(f"fewer than {at_least} predictions reached the inference log")


def _cycles(config) -> list[str]:
    return [e.details["outcome"] for e in Ledger(config.ledger_path).events(
        model_name=config.model_name, kinds=[EventKind.CYCLE])]


def test_drifted_live_inputs_make_the_controller_start_a_cycle(live):
    config, url = live["config"], live["url"]
    since = time.time()
    with httpx.Client(timeout=30) as http:
        _send(url, frame(1000, 101), http)
        _logged(config, 1000, since)
        with Controller(config) as controller:
            calm = controller.tick()
            assert calm.evaluation.fired is None, calm.evaluation.reason
            assert calm.monitor.drift_detected is False and calm.monitor.rows == 1000
            # upstream starts sending x2 in other units: live inputs drift
            since = time.time()
            _send(url, frame(1000, 102).assign(x2=lambda f: f["x2"] * 3 + 5), http)
            _logged(config, 1000, since)
            drifted = controller.tick()
    assert str(drifted.evaluation.fired) == "drift", drifted.evaluation.reason
    assert "x2" in drifted.monitor.drift.drifted
    assert drifted.cycle is not None and drifted.cycle.get("verdict"), drifted.cycle
    assert _cycles(config)[-2:] == ["started", "finished"]
    triggers = Ledger(config.ledger_path).events(model_name=config.model_name,
                                                 kinds=[EventKind.TRIGGER])
    assert [t.details["outcome"] for t in triggers[-2:]] == ["none", "drift"]
    assert triggers[-1].details["monitor"]["drifted_features"]


def test_labels_posted_to_feedback_make_the_performance_trigger_fire(live):
    config, url = live["config"], live["url"]
    since = time.time()
    with httpx.Client(timeout=30) as http:
        answered = _send(url, frame(1000, 103), http)  # in distribution: no drift now
        _logged(config, 1000, since)
        # the world changed: the true labels are the opposite of what the model believes
        labels = [{"request_id": rid, "row": row, "label": int(p < 0.5)}
                  for rid, row, p in answered]
        refused = http.post(f"{url}/feedback", json={"labels": labels[:5]},
                            headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401
        for start in range(0, len(labels), 500):
            r = http.post(f"{url}/feedback", json={"labels": labels[start : start + 500]},
                          headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200 and r.json()["accepted"] == len(
                labels[start : start + 500])
    deadline = time.monotonic() + 30
    with Controller(config) as controller:
        while True:
            tick = controller.tick()
            if tick.evaluation.fired is not None or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # the labels are still on their way to Parquet
    assert str(tick.evaluation.fired) == "performance", tick.evaluation.reason
    live_metric = tick.monitor.live
    assert live_metric.labelled >= 300 and live_metric.value < 0.2
    assert live_metric.evaluated is not None and live_metric.evaluated > 0.7
    assert tick.cycle is not None and _cycles(config)[-1] == "finished"


def test_an_admin_request_over_http_is_served_by_the_next_check(live):
    config, url = live["config"], live["url"]
    assert httpx.post(f"{url}/admin/retrain", json={"reason": "x"}).status_code in (401, 403)
    assert pending_requests(config.inference_log_path) == []
    r = httpx.post(f"{url}/admin/retrain", json={"reason": "new labels are in"},
                   headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 202
    (request,) = pending_requests(config.inference_log_path)
    with Controller(config) as controller:
        tick = controller.tick()
    assert str(tick.evaluation.fired) == "on_demand"
    assert tick.evaluation.demand_ids == (request.id,)
    assert pending_requests(config.inference_log_path) == []
    assert np.isin(["started", "finished"], _cycles(config)[-2:]).all()
