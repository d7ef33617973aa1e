"""A real two-node Ray cluster on this machine: a head and a worker, each `ray start --block`
with 1 CPU, started and stopped by `cluster/local_cluster.py` (by the process ids it recorded,
never `ray stop`).

The pytest process never connects to this cluster: the session's `ray_cluster` fixture may
hold its one Ray connection. Each cycle runs in a driver subprocess (this module run as a
script), which writes what happened as JSON. Tune records the IP of the node behind every
reported result (``node_ip``) and every worker node has its own loopback address, so the
driver can say where each trial ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cluster.local_cluster import (
    FAST_FAILURE_DETECTION,
    LocalCluster,
    add_worker,
    group_members,
    kill_node,
    start_cluster,
    stop_cluster,
)
from tests.synthetic import config_dict, write_partitions

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"),
                       reason="the local cluster reads /proc and uses 127.0.0.x addresses"),
]

ROOT = Path(__file__).resolve().parents[2]


class _Holder:
    """The module's cluster; a test that kills the worker leaves a new one to the next."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.started: list = list(cluster.nodes)


@pytest.fixture(scope="module")
def holder(request):
    cluster = start_cluster(
        workers=[1], head_cpus=1, object_store_mb=256, dashboard=False,
        # GCS notices a dead node within seconds instead of ~15 s
        head_env=FAST_FAILURE_DETECTION,
        # the nodes' workers import retrain (trials) from this checkout
        env={"PYTHONPATH": str(ROOT)},
    )
    held = _Holder(cluster)
    failed_before = request.session.testsfailed
    try:
        yield held
    finally:
        # the nodes' logs stay for a look when a test failed
        failed = request.session.testsfailed > failed_before
        stop_cluster(held.cluster, keep_root=failed)
        if failed:
            print(f"\nRay logs of the failed multi-node test: {held.cluster.root}")
        # everything any node of the test started is gone, and nothing else was touched
        left = {n.pid: group_members(n) for n in held.started}
        assert not any(left.values()), f"processes left behind: {left}"


@pytest.fixture
def cluster(holder) -> LocalCluster:
    """The module's cluster with a live worker node (a new one after a kill test)."""
    if not any(group_members(w) for w in holder.cluster.workers):
        holder.cluster = add_worker(holder.cluster, num_cpus=1, object_store_mb=256,
                                    env={"PYTHONPATH": str(ROOT)})
        holder.started.append(holder.cluster.workers[-1])
    return holder.cluster


def _project(root: Path, cluster: LocalCluster, *, trials: int, rows: int, rounds: int,
             report_every: int) -> Path:
    write_partitions(root / "data", [1, 2, 3], rows=rows)
    raw = config_dict(root / "data", root / "work")
    raw["search"].update(num_samples=trials, max_concurrent=2, num_boost_round=rounds,
                         report_every=report_every, early_stopping=False, max_failures=3,
                         early_stopping_rounds=None)
    # one trial fills a node: two at a time must use both
    raw["resources"] = {"cpus_per_trial": 1}
    raw["ray"] = {"address": cluster.address}
    path = root / "retrain.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _driver(config: Path, out: Path, cluster: LocalCluster) -> subprocess.Popen:
    env = {**os.environ, **cluster.client_env(), "PYTHONPATH": str(ROOT)}
    with open(out.with_suffix(".log"), "wb") as log:  # the child keeps its own handle
        return subprocess.Popen(
            [sys.executable, "-m", "tests.integration.test_multinode", str(config), str(out)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )


def _finish(driver: subprocess.Popen, out: Path, cluster: LocalCluster, timeout: float) -> dict:
    try:
        driver.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        driver.kill()
        driver.wait()
    log = out.with_suffix(".log").read_text(errors="replace")
    assert driver.returncode == 0 and out.exists(), (
        f"driver failed:\n{log[-4000:]}{_stopped_from_outside(cluster)}"
    )
    return json.loads(out.read_text())


def _stopped_from_outside(cluster: LocalCluster) -> str:
    """The test only ever SIGKILLs a node; a raylet that got SIGTERM was stopped by another
    process, typically a `ray stop` run elsewhere on the machine (it stops every cluster)."""
    hit = [str(log) for node in cluster.nodes
           for log in Path(node.temp_dir).glob("session_*/logs/raylet*.out")
           if "received SIGTERM" in log.read_text(errors="replace")]
    return (f"\nNOTE: raylet(s) of this test's cluster received SIGTERM from outside the test "
            f"(a `ray stop` elsewhere on this machine?): {hit}") if hit else ""


def _results(cluster: LocalCluster) -> list[dict]:
    """Every result Tune's driver has recorded so far.

    Tune writes each result at once (flushed) to its staging folder in the driver node's
    session dir and copies the folder to ``search.storage_path`` only now and then, so the
    staging folder is where a running trial shows up.
    """
    rows = []
    staging = "session_*/artifacts/*/*/driver_artifacts/*/result.json"
    for path in Path(cluster.head.temp_dir).glob(staging):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):  # a line still being written
                rows.append(json.loads(line))
    return [r for r in rows if "trial_id" in r]


def test_search_on_head_and_worker_spreads_trials_over_both_nodes(cluster, tmp_path):
    config = _project(tmp_path, cluster, trials=4, rows=1500, rounds=20, report_every=5)
    start = time.perf_counter()
    out = tmp_path / "out.json"
    result = _finish(_driver(config, out, cluster), out, cluster, 300)
    nodes = {n["ip"] for n in result["nodes"] if n["alive"]}
    assert nodes == {cluster.head.ip, cluster.workers[-1].ip}
    used = {ip for t in result["trials"] for ip in t["node_ips"]}
    assert used == nodes, f"trials ran on {used}, the cluster has {nodes}"
    assert [t["status"] for t in result["trials"]] == ["completed"] * 4
    assert result["verdict"] == "promote"
    print(f"\nspread: {len(result['trials'])} trials on {sorted(used)}; "
          f"search {result['search_seconds']:.1f}s, driver {time.perf_counter() - start:.1f}s")


def test_search_survives_the_worker_node_dying_mid_search(cluster, tmp_path):
    # ~8 ms a round here: a trial trains for ~8 s after its first report, time enough to see
    # it running on the worker and kill the node under it
    trials, rounds = 3, 1000
    config = _project(tmp_path, cluster, trials=trials, rows=15_000, rounds=rounds,
                      report_every=25)
    worker, head = cluster.workers[-1], cluster.head
    out = tmp_path / "out.json"
    # the head's staging folder also holds the trials of earlier tests on this cluster
    earlier = {r["trial_id"] for r in _results(cluster)}
    start = time.perf_counter()
    driver = _driver(config, out, cluster)
    hit = None
    deadline = time.monotonic() + 240
    while hit is None and driver.poll() is None and time.monotonic() < deadline:
        # a trial whose latest report came from the worker, with most of its rounds to go
        latest = {r["trial_id"]: r for r in _results(cluster) if r["trial_id"] not in earlier}
        running = [r for r in latest.values()
                   if r.get("node_ip") == worker.ip and r.get("round", rounds) <= rounds // 3]
        if running:
            hit = running[0]
            break
        time.sleep(0.1)
    assert hit is not None, "no trial seen running on the worker" + _stopped_from_outside(cluster)
    kill_node(worker)  # raises unless every process of the node is gone
    killed_at = time.perf_counter() - start
    result = _finish(driver, out, cluster, 400)

    ids = [t["trial_id"] for t in result["trials"]]
    assert len(ids) == trials and len(set(ids)) == trials, f"not accounted for once: {ids}"
    assert [t["status"] for t in result["trials"]] == ["completed"] * trials, result["trials"]
    assert all(t["rounds"] == rounds and t["error"] is None for t in result["trials"])
    # the trial the kill hit ran on the worker, was retried and finished on the head
    victim = next((t for t in result["trials"] if t["trial_id"] == hit["trial_id"]), None)
    assert victim is not None, f"trial {hit['trial_id']} is not in the search's results"
    assert worker.ip in victim["node_ips"] and victim["node_ips"][-1] == head.ip, victim
    assert {n["ip"]: n["alive"] for n in result["nodes"]}[worker.ip] is False
    assert result["verdict"] in {"promote", "keep", "reject"} and result["reasons"]
    print(f"\nkill: worker killed at {killed_at:.1f}s (trial {hit['trial_id']} at round "
          f"{hit['round']}), search {result['search_seconds']:.1f}s, "
          f"driver {time.perf_counter() - start:.1f}s, verdict {result['verdict']}")


# ---------------------------------------------------------------------------------------------
# the driver: `python -m tests.integration.test_multinode CONFIG OUT`


def _node_ips(experiment: Path) -> dict[str, list[str]]:
    """Per trial id, the nodes its results came from, in order (repeats collapsed)."""
    ips: dict[str, list[str]] = {}
    for path in sorted(experiment.glob("*/result.json")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            seen = ips.setdefault(row["trial_id"], [])
            if not seen or seen[-1] != row["node_ip"]:
                seen.append(row["node_ip"])
    return ips


def _drive(config_path: str, out: str) -> None:
    import ray

    from retrain import load_config, run_cycle

    result = run_cycle(load_config(config_path))
    ips = _node_ips(Path(result.search.experiment_path))
    report = {
        "verdict": result.decision.verdict.value,
        "reasons": list(result.decision.reasons),
        "search_seconds": result.search.wall_seconds,
        "trials": [
            {"trial_id": t.trial_id, "status": t.status, "rounds": t.rounds, "error": t.error,
             "node_ips": ips.get(t.trial_id, [])}
            for t in result.search.trials
        ],
        "nodes": [{"ip": n["NodeManagerAddress"], "alive": n["Alive"]} for n in ray.nodes()],
    }
    Path(out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    _drive(sys.argv[1], sys.argv[2])
