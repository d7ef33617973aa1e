"""A model replica's process killed under load: the others answer, Serve replaces it.

Real Ray Serve with two replicas, real HTTP on 127.0.0.1, real MLflow. The replica is killed
with SIGKILL by its process id (a process this test's deployment started), as a crash
would: no graceful shutdown, in-flight requests lost with it.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from dataclasses import replace

import pytest
import yaml

from retrain.config import load_config
from retrain.registry import CHAMPION, MlflowRegistry
from tests.conftest import wait_until
from tests.integration.test_rollout_e2e import _register
from tests.integration.test_traffic_serve import Load, _health
from tests.synthetic import config_dict

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP = "replica-kill"


def _replica_pids(dashboard: str) -> dict[str, int]:
    from ray.util.state import list_actors

    # the session cluster's own API server: never "whichever Ray runs on this machine"
    actors = list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], limit=1000)
    return {a.actor_id: a.pid for a in actors
            if a.class_name.startswith(f"ServeReplica:{APP}:")}


def test_killing_one_replica_under_load_loses_almost_nothing_and_heals(
        ray_cluster, serve_port, tmp_path):
    from ray import serve

    from retrain.serving import deploy, serve_settings

    raw = config_dict(tmp_path / "data", tmp_path / "work", project={"name": "kill"},
                      serving={"port": serve_port, "num_replicas": 2, "cpus_per_replica": 0.2,
                               "app_name": APP, "route_prefix": "/kill",
                               "poll_interval_s": 1.0})
    (tmp_path / "retrain.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(tmp_path / "retrain.yaml")
    registry = MlflowRegistry.from_config(config)
    registry.set_alias(CHAMPION, _register(registry, 1, None))
    deploy(replace(serve_settings(config), inference_log_path=None))
    url = f"http://127.0.0.1:{serve_port}/kill"

    def replicas() -> dict[str, int]:
        return _replica_pids(ray_cluster["dashboard"])

    try:
        wait_until(lambda: _health(url).get("model_version") == "1", timeout=120)
        wait_until(lambda: len(replicas()) == 2, timeout=60)
        with Load(url, threads=3) as load:
            time.sleep(5)
            victim_id, victim = next(iter(replicas().items()))
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            # healed: two live replicas again, the new one a different actor
            wait_until(lambda: len(replicas()) == 2 and victim_id not in replicas(),
                       timeout=60, interval=0.2)
            healed = time.monotonic() - killed
            time.sleep(30)  # enough requests that a rate of 0.1 % means something
    finally:
        serve.delete(APP)
    failed = load.failures()
    rate = len(failed) / len(load.answers)
    print(f"\n{len(load.answers)} requests, {len(failed)} failed ({rate:.3%}); replica "
          f"replaced in {healed:.1f}s")
    assert len(load.answers) > 1000
    assert rate <= 0.001, failed[:5]
    # service back within 10 s: no stretch without an answer that long after the kill
    after = [a.started for a in load.answers if a.started > killed and a.status == 200]
    gaps = [b - a for a, b in itertools.pairwise(after)]
    assert after and max(gaps) < 10.0
    # Serve's own replacement time (health check period, then a new actor): reported
    assert healed < 60.0
