"""Shared fixtures. Ray-backed tests share one cluster per test session, started here with
`ray start` (so Ray job submission is tested against it too) and stopped at the end by the
processes it started, never by `ray stop`.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

# Ray reads its auth mode when first imported, and `ray start` clusters use tokens: set it
# before any test module imports ray.
os.environ.setdefault("RAY_AUTH_MODE", "token")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray_cli() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A real single-node Ray cluster (2 CPUs) started with `ray start`, stopped at the end.

    It is `cluster/local_cluster.py`'s cluster: its own temp dir and free ports, and stopped
    by the process group it started (never `ray stop`, which would end every Ray cluster on
    the machine). Yields its address and dashboard URL (for job submission); the test
    process is connected to it.
    """
    import ray

    from cluster.local_cluster import start_cluster, stop_cluster

    cluster = start_cluster(workers=0, head_cpus=2, dashboard=True)
    # The cluster's job drivers find this interpreter's console scripts (`retrain`) first.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, **cluster.client_env(), "PATH": path}
    env.pop("RAY_ADDRESS")  # `ray job submit` is told its address; the tests' own drivers too
    # where the machine had no Ray token, the cluster made its own: this process connects
    # with it too (and clusters started later in the session share it)
    os.environ.update(cluster.token_env())
    try:
        ray.init(address=cluster.address, logging_level="WARNING")
        yield {"address": cluster.address, "dashboard": cluster.dashboard_url, "env": env}
    finally:
        try:
            from ray import serve

            serve.shutdown()
        except Exception:
            pass  # serve was never started in this session
        ray.shutdown()
        stop_cluster(cluster)


@pytest.fixture(scope="session")
def serve_port(ray_cluster) -> int:
    """Serve's HTTP port for this session (Serve binds it once per cluster)."""
    return free_port()


def wait_until(predicate, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


_HELD = ("PENDING", "CREATED", "RESCHEDULING", "PREPARED")


@pytest.fixture(autouse=True, scope="module")
def no_placement_group_left_behind(request):
    """A test module that leaves a placement group on the session's cluster fails here, by
    name, and the group is removed: left alone, a pending group takes the CPUs the moment they
    are free and every later search in the session waits for ever (it happened: one leaked
    1-CPU group failed 15 tests after it, each after its placement timeout)."""
    yield
    if not _ray_connected():
        return
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    def held() -> dict:
        return {k: v for k, v in ray.util.placement_group_table().items()
                if v["state"] in _HELD}

    deadline = time.monotonic() + 30  # Tune and Train remove theirs asynchronously
    left = held()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = held()
    for key in left:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(key))))
    assert not left, (
        f"{request.module.__name__} left placement groups holding or waiting for resources: "
        + "; ".join(f"{v['state']} {v['bundles']}" for v in left.values()))


def _ray_connected() -> bool:
    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized()
