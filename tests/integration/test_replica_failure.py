"""A model replica's process killed under load: only its in-flight requests fail, the other
answers, Serve replaces it.

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


# What holds when a replica's process dies, stated as bounds this test checks:
THREADS = 3  # client threads, so at most this many requests are in flight at any moment
RESUME_S = 10.0  # after the kill, no stretch longer than this without a successful answer
HEAL_S = 60.0  # Serve replaces the dead replica within this (health check, then a new actor)
AFTER_HEAL_S = 10.0  # load kept on after the replacement, so the new replica takes requests


def test_killing_one_replica_under_load_fails_only_its_in_flight_requests_and_heals(
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
        with Load(url, threads=THREADS) as load:
            wait_until(lambda: sum(a.ok for a in load.snapshot()) >= 100, timeout=60)
            victim_id, victim = next(iter(replicas().items()))
            kill_sent = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            kill_done = time.monotonic()
            # healed: two live replicas again, the new one a different actor
            wait_until(lambda: len(replicas()) == 2 and victim_id not in replicas(),
                       timeout=HEAL_S, interval=0.2)
            healed_at = time.monotonic()
            time.sleep(AFTER_HEAL_S)
    finally:
        serve.delete(APP)
    answers = load.snapshot()
    # The requests that can have been on the killed replica when it died: those sent and not
    # yet answered while the kill was sent (from the load generator's own records).
    in_flight = load.in_flight(kill_sent, kill_done)
    failed = [a for a in answers if not a.ok]
    print(f"\n{len(answers)} requests, {len(in_flight)} in flight at the kill, {len(failed)} "
          f"failed {[(a.status, a.error) for a in failed]}; replica replaced in "
          f"{healed_at - kill_done:.1f}s")
    assert len(in_flight) <= THREADS
    # only requests in flight at the kill may fail; every other request succeeds
    in_flight_ids = {id(a) for a in in_flight}
    assert [a for a in failed if id(a) not in in_flight_ids] == [], failed
    # and those were told to retry (serve/proxy.py), not answered a server error
    assert all(a.status == 503 for a in failed), failed
    # answers resume within RESUME_S: the first success after the kill, and no later stretch
    # without one, even while Serve replaces the replica
    after = sorted(a.finished for a in answers if a.ok and a.started > kill_done)
    assert after and after[0] - kill_done < RESUME_S
    gaps = [b - a for a, b in itertools.pairwise([kill_done, *after])]
    assert max(gaps) < RESUME_S, max(gaps)
    # and the healed deployment answers: requests sent after the replacement all succeeded
    healed = [a for a in answers if a.started > healed_at]
    assert healed and all(a.ok for a in healed)
