"""cluster/: every YAML there checked against what consumes it, and the local cluster's
process handling (command lines, records, stopping exactly its own process group).

No Ray runtime and no Kubernetes: the KubeRay manifests are checked for the fields KubeRay
and retrain need, the launcher YAML against Ray's own schema, the Serve config against Serve's
schema and `serve.app:app_builder`, the RayJob entrypoint against retrain's CLI parser, the
embedded project config against `config_from_dict`, the MLflow server flags against MLflow's
CLI.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import itertools
import json
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from cluster.local_cluster import (
    LocalCluster,
    Node,
    NodeSpec,
    group_members,
    has_token,
    kill_node,
    process_start_ticks,
    start_command,
    stop_node,
    worker_ip,
)
from retrain.errors import ClusterError

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
RAY_VERSION = importlib.metadata.version("ray")
KUBERAY_KINDS = {"RayCluster", "RayJob", "RayService"}


def _documents() -> dict[str, list[dict]]:
    return {
        str(path.relative_to(CLUSTER)): [d for d in yaml.safe_load_all(path.read_text()) if d]
        for path in sorted(CLUSTER.rglob("*.yaml"))
    }


def _kind(kind: str) -> dict:
    found = [d for docs in _documents().values() for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} under cluster/, found {len(found)}"
    return found[0]


def _cluster_specs() -> dict[str, dict]:
    return {
        "RayCluster": _kind("RayCluster")["spec"],
        "RayJob": _kind("RayJob")["spec"]["rayClusterSpec"],
        "RayService": _kind("RayService")["spec"]["rayClusterConfig"],
    }


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _project_config():
    from retrain.config import config_from_dict

    configmap = next(d for d in _documents()["kuberay/retrain-config.yaml"]
                     if d["kind"] == "ConfigMap")
    return config_from_dict(yaml.safe_load(configmap["data"]["retrain.yaml"]))


# ---------------------------------------------------------------------------------------------
# every file is known and parses


def test_every_yaml_under_cluster_is_checked_here():
    documents = _documents()
    assert set(documents) == {
        "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/rayservice.yaml",
        "kuberay/retrain-config.yaml", "kuberay/mlflow.yaml", "launcher/aws.yaml",
        "runtime_env.yaml",
    }, "a new YAML under cluster/ needs its checks in this file"
    kinds = sorted(d.get("kind", "-") for docs in documents.values() for d in docs)
    assert kinds == sorted(["RayCluster", "RayJob", "RayService", "ConfigMap", "Deployment",
                            "Service", "-", "-"])


# ---------------------------------------------------------------------------------------------
# KubeRay


@pytest.mark.parametrize("kind", sorted(KUBERAY_KINDS))
def test_kuberay_manifests_use_the_v1_api_this_ray_and_token_auth(kind):
    manifest = _kind(kind)
    assert manifest["apiVersion"] == "ray.io/v1"
    spec = _cluster_specs()[kind]
    # driver and cluster must run the same Ray: bump the manifests with the dependency
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["authOptions"] == {"mode": "token"}


@pytest.mark.parametrize("kind", sorted(KUBERAY_KINDS))
def test_kuberay_groups_are_well_formed(kind):
    spec = _cluster_specs()[kind]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        # KubeRay's CRD types rayStartParams as map[string]string
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group
    names = [g["groupName"] for g in spec["workerGroupSpecs"]]
    assert len(names) == len(set(names))
    for g in spec["workerGroupSpecs"]:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
    # the head only coordinates: trials and replicas are scheduled on workers
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_every_pod_runs_the_retrain_image_of_this_version():
    version = importlib.metadata.version("retrain")
    images = {c["image"] for spec in _cluster_specs().values() for c in _containers(spec)}
    deployment = _kind("Deployment")["spec"]["template"]["spec"]["containers"]
    images |= {c["image"] for c in deployment}
    assert len(images) == 1 and images.pop().endswith(f"/retrain:{version}")
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:(\S+)", dockerfile, re.M)
    assert base and base.group(1).startswith(f"{RAY_VERSION}-py3")


def test_mounted_volumes_name_the_configmap_and_claim_the_manifests_need():
    configmaps = {d["metadata"]["name"] for docs in _documents().values() for d in docs
                  if d.get("kind") == "ConfigMap"}
    for kind in ("RayCluster", "RayJob"):
        head = _cluster_specs()[kind]["headGroupSpec"]["template"]["spec"]
        volumes = {v["name"]: v for v in head["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
        assert volumes[mounts["/config"]]["configMap"]["name"] in configmaps
        assert "persistentVolumeClaim" in volumes[mounts["/data"]]


def test_rayjob_entrypoint_is_retrain_run_with_the_mounted_config():
    from retrain.cli import build_parser
    from retrain.cli.project import _cmd_run

    argv = shlex.split(_kind("RayJob")["spec"]["entrypoint"])
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts[argv[0]] == "retrain.cli:main"
    args = build_parser().parse_args(argv[1:])
    assert args.func is _cmd_run
    assert Path(args.config) == Path("/config/retrain.yaml")
    configmap = next(d for d in _documents()["kuberay/retrain-config.yaml"])
    assert Path(args.config).name in configmap["data"]


def test_the_mounted_project_config_is_valid_and_fit_for_many_machines():
    config = _project_config()
    assert config.tracking_uri.startswith("http"), "every node must reach one MLflow server"
    assert config.artifact_location.startswith("mlflow-artifacts:/")
    assert "://" in config.storage_path, "trial checkpoints need storage every node reaches"
    assert "://" in config.inference_log_path
    assert config.search.max_failures >= 1, "a node may die mid-search"
    # the driver's files (ledger, reports) go where the head mounts its volume
    assert str(config.project.workdir).startswith("/data/")
    assert str(config.data.path).startswith("/data/")


def test_rayservice_deploys_serve_app_builder_with_servesettings_arguments():
    from ray.serve.schema import ServeDeploySchema

    from serve.app import app_builder
    from serve.settings import ServeSettings

    raw = yaml.safe_load(_kind("RayService")["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(raw)  # Serve's own schema of `serve deploy` configs
    (app,) = raw["applications"]
    module, _, name = app["import_path"].partition(":")
    assert getattr(importlib.import_module(module), name) is app_builder
    assert set(app["args"]) <= set(ServeSettings.__dataclass_fields__)
    app_builder(app["args"])  # builds the application graph; no Ray runtime needed
    config = _project_config()
    assert app["args"]["tracking_uri"] == config.tracking_uri
    assert app["args"]["model_name"] == config.model_name


def test_mlflow_server_flags_are_mlflows_and_match_the_service():
    from mlflow.cli import server

    deployment = _kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["mlflow", "server"]
    params = server.make_context("server", list(container["args"])).params
    assert params["serve_artifacts"] is True
    assert params["artifacts_destination"].startswith("s3://")
    backend = next(e for e in container["env"] if e["name"] == "MLFLOW_BACKEND_STORE_URI")
    assert params["backend_store_uri"] == "$(MLFLOW_BACKEND_STORE_URI)"
    assert backend["valueFrom"]["secretKeyRef"]["key"] == "uri"
    service = _kind("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    host = f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert _project_config().tracking_uri == f"http://{host}"
    assert host in params["allowed_hosts"].split(",")


# ---------------------------------------------------------------------------------------------
# cluster launcher and runtime env


def test_launcher_yaml_is_valid_for_rays_own_schema():
    import jsonschema

    config = yaml.safe_load((CLUSTER / "launcher" / "aws.yaml").read_text())
    ray_dir = Path(importlib.util.find_spec("ray").submodule_search_locations[0])
    schema = json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["docker"]["image"].startswith(f"rayproject/ray:{RAY_VERSION}-")
    assert config["head_node_type"] in config["available_node_types"]
    # the checkout is copied to every node and installed there
    assert config["file_mounts"]["~/retrain"] == "."
    assert any("pip install -e ~/retrain" in c for c in config["setup_commands"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = config[key][-1]
        assert "RAY_AUTH_MODE=token ray start" in start
    assert "--head" in config["head_start_ray_commands"][-1]


def test_runtime_env_fields_are_rays_and_pip_mirrors_pyproject():
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert set(env) <= RuntimeEnv.known_fields
    RuntimeEnv(**env)  # Ray's own validation of each field
    for module in env["py_modules"]:
        assert (ROOT / module / "__init__.py").is_file(), module
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {Requirement(d).name for d in declared} - {"ray"}
    assert {Requirement(p).name for p in env["pip"]["packages"]} == wanted


# ---------------------------------------------------------------------------------------------
# the local cluster: command lines


def test_a_token_is_found_where_ray_looks_for_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not has_token({})  # a fresh machine: `ray start` with token auth would refuse
    assert has_token({"RAY_AUTH_TOKEN": "abc"})
    token = tmp_path / "token"
    assert not has_token({"RAY_AUTH_TOKEN_PATH": str(token)})  # named but missing
    token.write_text("abc\n")
    assert has_token({"RAY_AUTH_TOKEN_PATH": str(token)})
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("")
    assert not has_token({})  # empty
    (tmp_path / ".ray" / "auth_token").write_text("abc")
    assert has_token({})


def test_a_cluster_with_its_own_token_tells_its_clients_where_it_is():
    node = Node(role="head", pid=1, start_ticks=1, ip="127.0.0.1", num_cpus=1,
                temp_dir="/tmp/rlc-x/head", log="/tmp/rlc-x/head.log")
    own = LocalCluster(address="127.0.0.1:5002", nodes=(node,), root="/tmp/rlc-x",
                       token_path="/tmp/rlc-x/auth_token")
    assert own.client_env() == {"RAY_ADDRESS": "127.0.0.1:5002", "RAY_AUTH_MODE": "token",
                                "RAY_AUTH_TOKEN_PATH": "/tmp/rlc-x/auth_token"}
    shared = LocalCluster(address="127.0.0.1:5002", nodes=(node,), root="/tmp/rlc-x")
    assert "RAY_AUTH_TOKEN_PATH" not in shared.client_env()


def test_head_command_takes_free_ports_and_its_own_temp_dir():
    spec = NodeSpec(role="head", num_cpus=2, temp_dir="/tmp/rlc-x/head", agent_port=5001,
                    gcs_port=5002, dashboard_port=None, client_port=5003, object_store_mb=256)
    cmd = start_command(spec, "ray")
    assert cmd[:3] == ["ray", "start", "--block"]
    pairs = dict(itertools.pairwise(cmd))  # each flag -> the value after it
    assert pairs["--num-cpus"] == "2" and pairs["--num-gpus"] == "0"
    assert pairs["--port"] == "5002" and pairs["--ray-client-server-port"] == "5003"
    assert pairs["--dashboard-agent-listen-port"] == "5001"
    assert pairs["--temp-dir"] == "/tmp/rlc-x/head"
    assert pairs["--object-store-memory"] == str(256 * 1024 * 1024)
    assert pairs["--include-dashboard"] == "false"
    assert "--head" in cmd and "--address" not in cmd and "stop" not in cmd


def test_worker_command_joins_the_head_from_its_own_address():
    spec = NodeSpec(role="worker", num_cpus=1, temp_dir="/tmp/rlc-x/w0", node_ip="127.0.0.2",
                    address="127.0.0.1:5002")
    cmd = start_command(spec, "ray")
    assert cmd[cmd.index("--address") + 1] == "127.0.0.1:5002"
    assert cmd[cmd.index("--node-ip-address") + 1] == "127.0.0.2"
    assert "--head" not in cmd and "--dashboard-agent-listen-port" not in cmd


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (NodeSpec(role="head", num_cpus=1, temp_dir="/tmp/" + "x" * 60), "temp dir"),
        (NodeSpec(role="worker", num_cpus=0.5, temp_dir="/tmp/w"), "whole number of CPUs"),
        (NodeSpec(role="worker", num_cpus=1, temp_dir="/tmp/w"), "GCS address"),
        (NodeSpec(role="driver", num_cpus=1, temp_dir="/tmp/w"), "'head' or 'worker'"),
    ],
)
def test_bad_node_specs_are_refused_with_the_fix(spec, message):
    with pytest.raises(ClusterError, match=message):
        start_command(spec)


def test_worker_addresses_are_distinct_loopback_ips():
    assert worker_ip(0) == "127.0.0.2"
    assert worker_ip(0, taken=["127.0.0.2", "192.0.2.2"]) == "127.0.0.3"
    assert worker_ip(1, taken=["127.0.0.3"]) == "127.0.0.4"


def test_cluster_record_round_trips(tmp_path):
    node = Node(role="head", pid=123, start_ticks=456, ip="10.0.0.1", num_cpus=1,
                temp_dir="/tmp/rlc-x/head", log="/tmp/rlc-x/head.log")
    cluster = LocalCluster(address="127.0.0.1:5002", nodes=(node,), root="/tmp/rlc-x")
    cluster.save(tmp_path / "state.json")
    assert LocalCluster.load(tmp_path / "state.json") == cluster
    with pytest.raises(ClusterError, match="--state"):
        LocalCluster.load(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------------------
# the local cluster: stopping exactly its own processes (real processes, no Ray)


def _group(script: str) -> tuple[Node, subprocess.Popen]:
    """A stand-in node: a shell leading its own process group, with a child of its own."""
    child = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    deadline = time.monotonic() + 5
    while len(_members_of(child.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    node = Node(role="worker", pid=child.pid, start_ticks=process_start_ticks(child.pid),
                ip="127.0.0.2", num_cpus=1, temp_dir="/tmp/x", log="/dev/null")
    return node, child


def _members_of(pgid: int) -> list[int]:
    return group_members(Node(role="worker", pid=pgid, start_ticks=process_start_ticks(pgid),
                              ip="", num_cpus=1, temp_dir="", log=""))


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@linux_only
def test_kill_node_ends_its_whole_group_and_nothing_else():
    (node, leader), (other, other_leader) = _group("sleep 60 & wait"), _group("sleep 60 & wait")
    try:
        assert len(group_members(node)) == 2
        kill_node(node)
        assert group_members(node) == []
        assert len(group_members(other)) == 2  # another group is never touched
    finally:
        kill_node(other)
        leader.wait(5), other_leader.wait(5)


@linux_only
def test_stop_node_escalates_to_sigkill_when_sigterm_is_ignored():
    node, leader = _group("trap '' TERM; sleep 60 & wait")
    start = time.monotonic()
    stop_node(node, grace=0.5)
    assert group_members(node) == []
    assert leader.wait(5) == -signal.SIGKILL
    assert time.monotonic() - start < 10


@linux_only
def test_a_reused_pid_is_never_taken_for_the_node():
    node, leader = _group("sleep 60 & wait")
    try:
        stranger = replace(node, start_ticks=node.start_ticks - 1)
        assert group_members(stranger) == []
        stop_node(stranger, grace=0.1)  # signals nothing: not the process it started
        assert len(group_members(node)) == 2
    finally:
        kill_node(node)
        leader.wait(5)
