"""Rollouts end to end under load: the driver, the registry, the Serve app, the ledger.

Real Ray Serve answering HTTP on 127.0.0.1 to client threads for the whole of each rollout,
real MLflow (SQLite) holding the versions and the split, the real inference log feeding the
gates. Versions: 1 (champion), 2 (healthy), and three bad challengers injected through the
replicas' ``model_loader`` (real registered boosters, wrapped by their ``test.fault`` tag):
3 raises on some rows, 4 answers late, 5 answers shifted predictions.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import numpy as np
import pytest
import xgboost as xgb
import yaml

from retrain.cli import main
from retrain.config import load_config
from retrain.ledger import EventKind, Ledger
from retrain.operations import record_admin_moves
from retrain.registry import CHAMPION, MlflowRegistry
from retrain.rollout import Stage
from retrain.traffic_control import RolloutDriver
from serve.inference_log import pending_moves
from serve.loader import LoadedModel, load_version
from tests.conftest import wait_until
from tests.integration.test_traffic_serve import Load, _health
from tests.synthetic import config_dict, frame, write_partitions

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TOKEN = "rollout-" + uuid.uuid4().hex
FAULT_TAG = "test.fault"


class _Faulty:
    def __init__(self, booster, fault: str) -> None:
        self.booster, self.fault = booster, fault

    def inplace_predict(self, data):
        if self.fault == "raise" and (data["x1"].to_numpy() > 0.5).any():
            raise ValueError("injected fault: x1 > 0.5")
        if self.fault == "slow":
            time.sleep(0.25)
        predictions = self.booster.inplace_predict(data)
        return np.clip(predictions + 0.35, 0, 1) if self.fault == "shift" else predictions


def faulty_loader(tracking_uri: str, name: str, version: str) -> LoadedModel:
    from mlflow import MlflowClient

    model = load_version(tracking_uri, name, version)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    fault = client.get_model_version(name, version).tags.get(FAULT_TAG)
    return replace(model, booster=_Faulty(model.booster, fault)) if fault else model


def _register(registry: MlflowRegistry, seed: int, fault: str | None) -> str:
    from serve.features import FeatureSpec

    data = frame(1500, seed)
    spec = FeatureSpec.learn(data, ("x1", "x2", "cat"))
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "nthread": 1},
                        xgb.DMatrix(spec.frame(data), data["label"], enable_categorical=True),
                        20)
    with registry.cycle_run(f"rollout-v{seed}", {}) as run_id:
        uri = registry.log_model(run_id, booster, spec, task="classification", metric="auc")
        return registry.register(uri, tags={FAULT_TAG: fault} if fault else {})


@pytest.fixture(scope="module")
def project(ray_cluster, serve_port, tmp_path_factory):
    from ray import serve

    from retrain.serving import deploy, serve_settings

    root = tmp_path_factory.mktemp("rollout")
    write_partitions(root / "data", [1, 2], rows=200)
    raw = config_dict(
        root / "data", root / "work",
        project={"name": "rollout"},
        serving={"port": serve_port, "cpus_per_replica": 0.2, "poll_interval_s": 0.5,
                 "app_name": "rollout-e2e", "route_prefix": "/ro",
                 "version_timeout_s": 5.0},
        inference_log={"flush_interval_s": 0.3, "flush_rows": 100},
        rollout={"enabled": True,
                 "smoke": {"requests": 3},
                 "shadow": {"duration_s": 1, "min_requests": 30},
                 "canary": {"steps": [25, 100], "bake_s": 1, "min_requests": 30},
                 "gates": {"max_latency_ratio": 3.0, "latency_slack_ms": 50,
                           "max_error_rate": 0.02}},
    )
    path = root / "retrain.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    registry = MlflowRegistry.from_config(config)
    versions = [_register(registry, seed, fault) for seed, fault in
                ((1, None), (2, None), (3, "raise"), (4, "slow"), (5, "shift"))]
    assert versions == ["1", "2", "3", "4", "5"]
    registry.set_alias(CHAMPION, "1")
    settings = replace(serve_settings(config), admin_token=TOKEN,
                       model_loader=f"{__name__}:faulty_loader")
    deploy(settings)
    url = f"http://127.0.0.1:{serve_port}/ro"
    wait_until(lambda: _health(url).get("model_version") == "1", timeout=120)
    yield {"config": config, "path": path, "url": url, "registry": registry}
    serve.delete(settings.app_name)


def _driver(project) -> RolloutDriver:
    return RolloutDriver(project["config"], url=project["url"], token=TOKEN)


def _serving_only(project, version: str) -> float:
    """Wait until the replica routes everything to ``version``; when it was seen."""
    wait_until(lambda: _health(project["url"]).get("traffic", {}).get("weights") == {version: 1.0}
               and _health(project["url"]).get("traffic", {}).get("shadow") is None,
               timeout=60)
    return time.monotonic()


def test_a_healthy_challenger_goes_through_every_step_then_rolls_back_without_a_failure(
        project):
    driver = _driver(project)
    ledger = Ledger(project["config"].ledger_path)
    with Load(project["url"], threads=2) as load:
        time.sleep(1.0)
        rollout = driver.start("2")
        assert rollout.stage is Stage.SMOKE
        rollout = driver.run(poll_s=0.5, timeout_s=180)
        assert rollout.stage is Stage.COMPLETED, rollout.reason
        assert project["registry"].alias_version(CHAMPION) == "2"
        cutover = _serving_only(project, "2")
        time.sleep(1.0)
        # and back: the operator returns the champion alias to version 1
        assert main(["rollout", "promote", "1", "--config", str(project["path"]),
                     "--reason", "back to v1"]) == 0
        back = _serving_only(project, "1")
        time.sleep(1.0)
    assert not load.failures(), load.failures()[:5]
    stages = [t.to_stage.value for t in rollout.history]
    assert stages == ["smoke", "shadow", "canary", "canary", "completed"]
    middle = {a.version for a in load.answers if cutover > a.started > load.answers[0].started}
    assert middle == {"1", "2"}  # the canary served both
    assert {a.version for a in load.after(cutover) if a.started < back - 2} <= {"2"}
    assert {a.version for a in load.after(back)} == {"1"}
    steps = ledger.events(model_name="rollout", kinds=[EventKind.TRAFFIC_STEP])
    assert len(steps) == 5 and not any(s.details["rolled_back"] for s in steps)
    moves = ledger.events(model_name="rollout", kinds=[EventKind.ALIAS_MOVE, EventKind.ROLLBACK])
    assert [(m.kind, m.version) for m in moves[-2:]] == [(EventKind.ALIAS_MOVE, "2"),
                                                         (EventKind.ROLLBACK, "1")]


@pytest.mark.parametrize(("version", "gate"), [
    # the smoke batch (real rows of the newest partition) already trips the raising version
    ("3", "health"), ("4", "latency"), ("5", "prediction_shift"),
])
def test_a_bad_challenger_is_caught_by_its_gate_and_rolled_back(project, version, gate):
    driver = _driver(project)
    body = {"dataframe_records": frame(8, int(version)).drop(columns="label")
            .to_dict(orient="records")}
    with Load(project["url"], threads=2, body=body) as load:
        time.sleep(0.5)
        driver.start(version)
        rollout = driver.run(poll_s=0.5, timeout_s=120)
        _serving_only(project, "1")
    assert rollout.stage is Stage.ROLLED_BACK
    assert gate in rollout.reason, rollout.reason
    # caught before any live answer came from it, and the champion never moved
    assert project["registry"].alias_version(CHAMPION) == "1"
    assert driver.store.read() is None
    assert not load.failures(), load.failures()[:5]
    assert {a.version for a in load.answers} == {"1"}
    last = Ledger(project["config"].ledger_path).events(
        model_name="rollout", kinds=[EventKind.TRAFFIC_STEP])[-1]
    assert last.details["rolled_back"] and gate in last.reasons[0]


def test_a_driver_that_died_mid_rollout_is_reconciled_with_the_registry(project):
    driver = _driver(project)
    rollout = driver.start("2")
    while rollout.stage is not Stage.CANARY:
        time.sleep(0.5)
        rollout = driver.step()  # no load: smoke is pinned, shadow waits for traffic...
        if rollout.stage is Stage.SHADOW:
            break
    # the crash: the state was saved but the registry write never happened
    driver.store.write(None)
    fresh = _driver(project)
    assert "re-applied" in fresh.reconcile()
    assert fresh.store.read() == fresh._applied(fresh.load())
    assert "in agreement" in fresh.reconcile()
    # an operator rolls it back; a split left behind without a rollout is removed
    fresh.roll_back("operator: test")
    assert fresh.store.read() is None
    from serve.traffic import TrafficSplit

    fresh.store.write(TrafficSplit({"1": 0.5, "2": 0.5}))
    assert "stale" in fresh.reconcile() and fresh.store.read() is None
    _serving_only(project, "1")


def test_admin_http_status_rollback_and_promote_agree_with_driver_and_ledger(project):
    import httpx

    url, auth = project["url"], {"authorization": f"Bearer {TOKEN}"}
    driver = _driver(project)
    with Load(url, threads=2) as load:
        time.sleep(0.5)
        driver.start("2")
        rollout = driver.step()  # smoke: pinned batches
        status = httpx.get(f"{url}/admin/rollout", headers=auth, timeout=10).json()
        assert status["rollout"]["challenger"] == "2" and status["champion"] == "1"
        assert status["rollout"]["stage"] == rollout.stage.value
        refused = httpx.post(f"{url}/admin/promote", json={"version": "2"}, headers=auth)
        assert refused.status_code == 409 and "in progress" in refused.json()["error"]
        assert httpx.post(f"{url}/admin/rollback", timeout=10).status_code in (401, 403)
        assert driver.active() is not None  # a refused request changed nothing
        assert httpx.post(f"{url}/admin/rollback", headers=auth, timeout=10).status_code == 200
        stopped = driver.step()  # the driver sees the split changed under it
        assert stopped.stage is Stage.ROLLED_BACK and "outside the rollout" in stopped.reason
        _serving_only(project, "1")
        # no rollout now: the app may move the alias, and notes each move as it makes it
        moved = httpx.post(f"{url}/admin/promote", json={"version": "2"}, headers=auth)
        assert moved.status_code == 200 and moved.json()["previous"] == "1"
        assert moved.json()["noted"] is True
        _serving_only(project, "2")
        assert httpx.post(f"{url}/admin/promote", json={"version": "99"},
                          headers=auth).status_code == 409
        back = httpx.post(f"{url}/admin/promote", json={"version": "1"}, headers=auth)
        assert back.status_code == 200
        _serving_only(project, "1")
    assert not load.failures(), load.failures()[:5]
    # the controller copies the notes into the ledger with each move's own time and caller
    path, ledger = project["config"].inference_log_path, driver.ledger
    copied = record_admin_moves(ledger, "rollout", pending_moves(path))
    assert [(e.kind, e.traffic or None, e.version, e.previous_version) for e in copied] == [
        (EventKind.TRAFFIC_STEP, {"1": 1.0}, None, None),  # the rollback under the rollout
        (EventKind.ALIAS_MOVE, None, "2", "1"), (EventKind.ROLLBACK, None, "1", "2")]
    assert copied[2].details["request_id"] == back.json()["request_id"]
    assert copied[2].details["made_by"] == "http 127.0.0.1"
    assert ledger.served_at("rollout", copied[2].at - 1e-3).version == "2"
    assert ledger.served_at("rollout", time.time()).version == "1"
    assert record_admin_moves(ledger, "rollout", pending_moves(path)) == []  # copied once
    assert driver.record_outside_moves() is None  # the ledger knew the moves already


def test_a_driver_process_killed_between_steps_is_resumed_by_the_next(project):
    import json
    import os
    import signal
    import subprocess
    import sys

    config = project["config"]
    state = config.project.workdir / "rollout" / "state.json"
    env = {**os.environ, config.serving.admin_token_env: TOKEN}
    # no load: the shadow step waits for traffic, so the driver sits between steps
    child = subprocess.Popen(
        [sys.executable, "-m", "retrain.cli", "rollout", "start", "2", "--config",
         str(project["path"]), "--poll-s", "0.3"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: state.exists()
                   and json.loads(state.read_text())["stage"] == "shadow"
                   and json.loads(state.read_text())["history"][-1]["to_stage"] == "shadow",
                   timeout=120)
        # the driver yields the CPU to serving: every one of its threads runs below the
        # replica's priority (Ray runs its workers at nice 15)
        driver = _nice_values(child.pid)
        assert set(driver) == {min(19, os.getpriority(os.PRIO_PROCESS, 0)
                                   + config.rollout.driver_nice)}, driver
        assert len(driver) > 1  # its library threads too, not only the main one
        replicas = [pid for pid in _pids() if _command(pid).startswith("ray::ServeReplica:")]
        assert replicas and min(driver) > max(n for pid in replicas for n in _nice_values(pid))
    finally:
        os.kill(child.pid, signal.SIGKILL)  # the process this test started, by its id
        child.wait()
    fresh = _driver(project)
    # killed after saving the step: either the split was written too, or it is re-applied
    said = fresh.reconcile()
    assert "in agreement" in said or "re-applied" in said, said
    assert fresh.store.read() == fresh._applied(fresh.load())
    wait_until(lambda: _health(project["url"]).get("traffic", {}).get("shadow") == "2",
               timeout=30)  # and the app applies it
    with Load(project["url"], threads=2) as load:
        rollout = fresh.run(poll_s=0.5, timeout_s=180)
        _serving_only(project, "2")
    assert rollout.stage is Stage.COMPLETED, rollout.reason
    stages = [t.to_stage.value for t in rollout.history]
    assert stages == ["smoke", "shadow", "canary", "canary", "completed"]  # smoke not re-run
    assert not load.failures(), load.failures()[:5]
    assert main(["rollout", "promote", "1", "--config", str(project["path"])]) == 0
    _serving_only(project, "1")


def _pids() -> list[int]:
    import os

    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def _nice_values(pid: int) -> list[int]:
    """The nice value of each of a process's threads (field 19 of /proc/<pid>/task/*/stat)."""
    import os

    values = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                values.append(int(f.read().rsplit(")", 1)[1].split()[16]))
        except OSError:
            continue  # a thread that ended meanwhile
    return values
