"""Shared fixtures. Ray-backed tests share one cluster per test session, started here with
`ray start --head` (so Ray job submission is tested against it too) and stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
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
    """A real single-node Ray cluster (2 CPUs) started with `ray start --head`.

    Yields the dashboard URL (for job submission); the test process is connected to it.
    """
    import ray

    gcs_port, dashboard_port = free_port(), free_port()
    # The cluster's job drivers find this interpreter's console scripts (`retrain`) first.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path}
    start = [
        _ray_cli(), "start", "--head", "--num-cpus", "2", "--num-gpus", "0",
        "--port", str(gcs_port), "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dashboard_port), "--disable-usage-stats",
    ]
    subprocess.run(start, check=True, env=env, capture_output=True, timeout=180)
    try:
        ray.init(address=f"127.0.0.1:{gcs_port}", logging_level="WARNING")
        yield {"address": f"127.0.0.1:{gcs_port}",
               "dashboard": f"http://127.0.0.1:{dashboard_port}", "env": env}
    finally:
        try:
            from ray import serve

            serve.shutdown()
        except Exception:
            pass  # serve was never started in this session
        ray.shutdown()
        # `ray stop` ends the cluster this fixture started with `ray start`.
        subprocess.run([_ray_cli(), "stop"], env=env, capture_output=True, timeout=180)


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
