"""`retrain serve` as a user runs it: a local Ray runtime of its own, the port from --port,
stopped by SIGTERM without a traceback or a native stack dump, leaving no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from retrain.serving import check_port_free
from tests.conftest import free_port
from tests.synthetic import config_dict, write_partitions

pytestmark = pytest.mark.slow

ROOT = str(Path(__file__).resolve().parents[2])


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def _health(url: str) -> int | None:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code  # 503 until a champion exists: still an answer from the app
    except OSError:
        return None


def test_serve_listens_on_the_given_port_and_sigterm_stops_everything_it_started(tmp_path):
    write_partitions(tmp_path / "data", [1, 2, 3], rows=50)
    raw = config_dict(tmp_path / "data", tmp_path / "work",
                      serving={"port": 1, "cpus_per_replica": 0.2}, ray={"num_cpus": 1})
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(raw))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    stdout = tmp_path / "stdout.txt"
    with open(stdout, "w") as out_file:
        child = subprocess.Popen(
            [sys.executable, "-m", "retrain.cli", "serve", "--config", str(path), "--port",
             str(port)], stdout=out_file, stderr=subprocess.PIPE, text=True, env=env,
            cwd=tmp_path, start_new_session=True)  # its own session: what it started stays in it
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while _health(url) is None or "stops it" not in stdout.read_text():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "not serving within 180 s"
            time.sleep(0.5)
        assert len(_session_pids(child.pid)) > 1  # Ray's processes run beside it, in it
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    out = stdout.read_text()
    print(json.dumps({"stdout": out[-2000:], "stderr": err[-2000:]}, indent=1))
    assert child.returncode == 143, err
    assert f"serving synthetic@champion at {url}/invocations" in out
    assert f"stopped serving on 127.0.0.1:{port}" in err
    assert "retrain serve: stopped (SIGTERM)" in err
    assert "Traceback" not in err and "SIGTERM received" not in err
    assert "(raylet)" not in out + err  # Ray's shutdown lines went to the project's log file
    # nothing it started is left, and the port is free again
    deadline = time.monotonic() + 30
    while _session_pids(child.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _session_pids(child.pid) == []
    check_port_free("127.0.0.1", port, fix="the stopped server still holds it")
