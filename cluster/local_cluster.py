"""A local multi-node Ray cluster on one machine: a head and N workers, each with its own CPUs.

    python cluster/local_cluster.py up --workers 2 --head-cpus 1 --worker-cpus 1
    export RAY_ADDRESS=127.0.0.1:<port> RAY_AUTH_MODE=token     # as printed by `up`
    retrain run --config retrain.yaml
    python cluster/local_cluster.py down

It stops exactly what it started, never anything else (no `ray stop`, which ends every Ray
process of the user on the machine). How:

- Every node is one `ray start --block` process, started in a new session, so it leads its
  own process group. With `--block`, Ray keeps that process alive and starts the node's GCS,
  raylet, dashboard, agents and (through the raylet) workers as its descendants, in that
  group, each with a parent-death signal: they die with it.
- The record of a node is the pid of that process and its start time (from /proc), so a pid
  reused by an unrelated process after a reboot or a long pause is never signalled.
- Stopping a node: SIGTERM to its `ray start` (Ray's own handler ends the node's processes),
  then SIGKILL to whatever is still in its process group. Workers go before the head, because
  a worker whose GCS vanished waits a minute before it gives up.
- Killing a node (a test of node failure): SIGKILL to the whole process group at once, as if
  the machine had gone away.
- Every node has its own temp dir under a fresh folder, and every port that Ray would
  otherwise take from a fixed default (GCS 6379, client server 10001, agent 52365, dashboard
  8265) is a free one, so the cluster neither collides with another Ray cluster on the
  machine nor moves the `/tmp/ray` pointers that `ray.init()` uses to find "the" local one.
- Each worker gets its own loopback address (127.0.0.2, 127.0.0.3, ...; Linux routes all of
  127/8 to the loopback device), so Ray and Tune report each node under its own IP, as on
  real machines. The head keeps the IP Ray chooses for it.

Linux only (/proc, 127/8 loopback). Importable (`start_cluster`, `stop_cluster`, `kill_node`,
`add_worker`) and a script (`up`, `down`, `status`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from retrain.errors import ClusterError

#: Ray prints this once a node's processes are up and registered with the GCS.
READY_LINE = "Ray runtime started"
#: Unix socket paths are limited to 107 bytes and Ray puts a ~62-character session path
#: under a node's temp dir, so the temp dir itself must stay short.
MAX_TEMP_DIR_CHARS = 40
#: The defaults a local cluster sets for its nodes unless the caller's environment names
#: them: token auth (Ray 2.60's default, stated so that clients match), no drain wait on
#: SIGTERM (nothing on a local cluster is worth the wait of the drain phase), and the Serve
#: proxy's header checks (serve/proxy.py: a 400, not the proxy's 500, for a bad x-request-id).
NODE_ENV_DEFAULTS = {"RAY_AUTH_MODE": "token", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
                     "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve.proxy:middlewares"}
#: Settings that make the GCS declare a dead node within seconds rather than ~15 s (Ray's
#: defaults: 3 s period x 5 misses). For node-failure tests; pass as ``head_env``.
FAST_FAILURE_DETECTION = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "2000",
    "RAY_health_check_failure_threshold": "5",
}
DEFAULT_STATE = ".local-ray-cluster.json"


@dataclass(frozen=True)
class NodeSpec:
    """What one node is asked to be: pure data, turned into a `ray start` command line."""

    role: str  # "head" or "worker"
    #: `ray start` takes whole CPUs; 0 is allowed (a head that only coordinates)
    num_cpus: int
    temp_dir: str
    #: None: the IP Ray picks (the head); workers get their own loopback address
    node_ip: str | None = None
    num_gpus: int = 0
    object_store_mb: int | None = None
    #: the dashboard agent's HTTP port (Ray's fixed default, 52365, collides between clusters)
    agent_port: int | None = None
    #: head only
    gcs_port: int = 0
    dashboard_port: int | None = None
    client_port: int = 0
    #: workers only: the GCS to join
    address: str | None = None


@dataclass(frozen=True)
class Node:
    """A node that runs: the `ray start --block` process (leader of the node's group)."""

    role: str
    pid: int
    #: /proc/<pid>/stat field 22: tells this process from a later one with a reused pid
    start_ticks: int
    ip: str
    num_cpus: int
    temp_dir: str
    log: str


@dataclass(frozen=True)
class LocalCluster:
    address: str
    nodes: tuple[Node, ...]
    #: the folder holding every node's temp dir and log; removed by `stop_cluster`
    root: str
    dashboard_url: str | None = None
    #: the cluster's own token file, where the caller had no token (`RAY_AUTH_TOKEN`,
    #: `RAY_AUTH_TOKEN_PATH` or ~/.ray/auth_token); None: the caller's token is the cluster's
    token_path: str | None = None

    def client_env(self) -> dict[str, str]:
        """What a driver, `ray job submit` or `retrain run` needs in its environment."""
        env = {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token"}
        return {**env, **self.token_env()}

    def token_env(self) -> dict[str, str]:
        return {"RAY_AUTH_TOKEN_PATH": self.token_path} if self.token_path else {}

    @property
    def head(self) -> Node:
        return next(n for n in self.nodes if n.role == "head")

    @property
    def workers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.role == "worker")

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LocalCluster:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ClusterError(
                f"cannot read the local cluster record {str(path)!r}: {exc}. Pass the --state "
                "file that `up` wrote"
            ) from None
        return cls(**{**raw, "nodes": tuple(Node(**n) for n in raw["nodes"])})


# ---------------------------------------------------------------------------------------------
# pure: command lines


def ray_cli() -> str:
    """The `ray` beside this interpreter first, so the nodes run the same Ray as the caller."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


def worker_ip(index: int, taken: Sequence[str] = ()) -> str:
    """The loopback address of worker ``index`` (0-based): 127.0.0.2 upward, skipping ``taken``."""
    host = 2
    free = []
    while len(free) <= index:
        ip = f"127.0.0.{host}"
        if ip not in taken:
            free.append(ip)
        host += 1
        if host > 254:
            raise ClusterError(f"no free loopback address for worker {index}; use fewer workers")
    return free[index]


def start_command(spec: NodeSpec, ray: str = "ray") -> list[str]:
    """The `ray start --block` command line of one node."""
    if len(spec.temp_dir) > MAX_TEMP_DIR_CHARS:
        raise ClusterError(
            f"temp dir {spec.temp_dir!r} has {len(spec.temp_dir)} characters but Ray's socket "
            f"paths allow at most {MAX_TEMP_DIR_CHARS} here; use a shorter root (e.g. under /tmp)"
        )
    if not isinstance(spec.num_cpus, int) or spec.num_cpus < 0:
        raise ClusterError(
            f"`ray start` takes a whole number of CPUs >= 0, but got num_cpus={spec.num_cpus!r}"
        )
    cmd = [
        ray, "start", "--block", "--disable-usage-stats",
        "--num-cpus", str(spec.num_cpus), "--num-gpus", str(spec.num_gpus),
        "--temp-dir", spec.temp_dir,
    ]
    if spec.agent_port is not None:
        cmd += ["--dashboard-agent-listen-port", str(spec.agent_port)]
    if spec.object_store_mb is not None:
        cmd += ["--object-store-memory", str(spec.object_store_mb * 1024 * 1024)]
    if spec.node_ip:
        cmd += ["--node-ip-address", spec.node_ip]
    if spec.role == "head":
        cmd += ["--head", "--port", str(spec.gcs_port),
                "--ray-client-server-port", str(spec.client_port)]
        if spec.dashboard_port is None:
            cmd += ["--include-dashboard", "false"]
        else:
            cmd += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(spec.dashboard_port)]
    elif spec.role == "worker":
        if not spec.address:
            raise ClusterError("a worker node needs the head's GCS address to join")
        cmd += ["--address", spec.address]
    else:
        raise ClusterError(f"node role must be 'head' or 'worker', but got {spec.role!r}")
    return cmd


# ---------------------------------------------------------------------------------------------
# processes (Linux /proc)

# Popen objects of the nodes this process started: kept so that they are reaped (no zombies
# that look alive in /proc) and never garbage-collected while the node runs.
_CHILDREN: dict[int, subprocess.Popen] = {}


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time in ticks) of ``pid``, or None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[2]), int(fields[19])


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): with the pid, names one process for good."""
    stat = _stat(pid)
    return None if stat is None else stat[2]


def _is_ours(node: Node) -> bool:
    """Whether the node's `ray start` process still runs and is the one we started."""
    child = _CHILDREN.get(node.pid)
    if child is not None and child.poll() is not None:
        return False  # exited, and now reaped
    stat = _stat(node.pid)
    return stat is not None and stat[0] != "Z" and stat[2] == node.start_ticks


def group_members(node: Node) -> list[int]:
    """Live processes in the node's process group (its `ray start` and all it started).

    A pid cannot be handed out again while a process group of that number has members, so a
    non-empty group with the leader gone is still ours; a leader with another start time means
    the number was reused and our group is empty.
    """
    leader = _stat(node.pid)
    if leader is not None and leader[2] != node.start_ticks:
        return []
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == node.pid and stat[0] != "Z":
                members.append(int(entry.name))
    return sorted(members)


def _signal_group(node: Node, sig: int) -> None:
    if group_members(node):
        with contextlib.suppress(ProcessLookupError):  # emptied in the meantime
            os.killpg(node.pid, sig)


def _wait_empty(node: Node, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        child = _CHILDREN.get(node.pid)
        if child is not None:
            child.poll()  # reap the leader when it exits
        left = group_members(node)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def kill_node(node: Node, timeout: float = 10.0) -> None:
    """SIGKILL every process of the node at once, as if its machine had died."""
    _signal_group(node, signal.SIGKILL)
    left = _wait_empty(node, timeout)
    if left:
        raise ClusterError(f"{node.role} node {node.ip}: processes {left} survived SIGKILL")
    _CHILDREN.pop(node.pid, None)


def stop_node(node: Node, grace: float = 20.0) -> None:
    """SIGTERM the node's `ray start` (Ray ends its processes), then SIGKILL what is left."""
    if _is_ours(node):
        os.kill(node.pid, signal.SIGTERM)
        if not _wait_empty(node, grace):
            _CHILDREN.pop(node.pid, None)
            return
    # the leader is gone (or ignored SIGTERM): whatever is left of its group goes now
    kill_node(node)


# ---------------------------------------------------------------------------------------------
# starting


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {**NODE_ENV_DEFAULTS, **os.environ, **(extra or {})}
    # each node is told its cluster on the command line; a RAY_ADDRESS of the caller's, left
    # for another cluster, must not reach it
    env.pop("RAY_ADDRESS", None)
    # the nodes' Python workers find this interpreter's console scripts (`retrain`) first
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def has_token(env: Mapping[str, str]) -> bool:
    """Whether Ray finds a token with this environment: `RAY_AUTH_TOKEN`, the file named by
    `RAY_AUTH_TOKEN_PATH`, or ~/.ray/auth_token (in Ray's order)."""
    if env.get("RAY_AUTH_TOKEN"):
        return True
    path = Path(env["RAY_AUTH_TOKEN_PATH"]) if env.get("RAY_AUTH_TOKEN_PATH") \
        else Path.home() / ".ray" / "auth_token"
    try:
        return bool(path.read_text().strip())
    except OSError:
        return False


def _own_token(root: str) -> str:
    """A token for a cluster whose caller has none: `ray start` with token auth refuses to
    start without one (only a local `ray.init()` makes ~/.ray/auth_token), and a cluster of
    ours has no business writing into the user's home."""
    import secrets

    path = Path(root) / "auth_token"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return str(path)


def _launch(spec: NodeSpec, log: Path, env: dict[str, str], timeout: float) -> Node:
    """Start one node and wait until Ray says it is up; its log tail on failure."""
    command = start_command(spec, ray_cli())
    with open(log, "wb") as out:
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            # its own session, hence its own process group: what `stop_node` signals
            start_new_session=True,
        )
    _CHILDREN[child.pid] = child
    ticks = process_start_ticks(child.pid)
    node = Node(role=spec.role, pid=child.pid, start_ticks=-1 if ticks is None else ticks,
                ip=spec.node_ip or "", num_cpus=spec.num_cpus, temp_dir=spec.temp_dir,
                log=str(log))
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace")
        if READY_LINE in text:
            break
        if child.poll() is not None or time.monotonic() > deadline:
            kill_node(node)
            why = (f"exited with code {child.returncode}" if child.returncode is not None
                   else f"was not up within {timeout:.0f}s")
            raise ClusterError(
                f"`ray start` of the {spec.role} node {why}. Its log ({log}) ends with:\n"
                + text[-3000:]
            )
        time.sleep(0.2)
    if not node.ip:
        # the IP Ray chose (it replaces 127.0.0.1 by the machine's address)
        found = re.search(r"Local node IP: (\S+)", re.sub(r"\x1b\[[0-9;]*m", "", text))
        node = replace(node, ip=found.group(1) if found else "")
    return node


def start_cluster(
    *,
    workers: int | Sequence[int] = 1,
    head_cpus: int = 1,
    object_store_mb: int | None = 512,
    dashboard: bool = True,
    head_env: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    root: str | None = None,
    timeout: float = 120.0,
) -> LocalCluster:
    """Start a head and workers on this machine; returns the record `stop_cluster` needs.

    ``workers`` is a count (1 CPU each) or one CPU count per worker. ``head_env`` reaches the
    head only (GCS settings such as `FAST_FAILURE_DETECTION`); ``env`` every node. Object store
    memory defaults to 512 MiB per node: Ray's own default (30 % of RAM) counted once per node
    would oversubscribe one machine's shared memory.
    """
    cpus = [1] * workers if isinstance(workers, int) else list(workers)
    root = root or tempfile.mkdtemp(prefix="rlc-", dir="/tmp")
    Path(root).mkdir(parents=True, exist_ok=True)
    common = _node_env(env)
    token_path = None
    if common.get("RAY_AUTH_MODE", "").lower() == "token" and not has_token(common):
        token_path = _own_token(root)
        common["RAY_AUTH_TOKEN_PATH"] = token_path
    dashboard_port = free_port() if dashboard else None
    head_spec = NodeSpec(
        role="head", num_cpus=head_cpus, temp_dir=f"{root}/head", object_store_mb=object_store_mb,
        agent_port=free_port(), gcs_port=free_port(), dashboard_port=dashboard_port,
        client_port=free_port(),
    )
    head = _launch(head_spec, Path(root) / "head.log", {**common, **(head_env or {})}, timeout)
    cluster = LocalCluster(
        address=f"127.0.0.1:{head_spec.gcs_port}", nodes=(head,), root=root,
        dashboard_url=f"http://127.0.0.1:{dashboard_port}" if dashboard else None,
        token_path=token_path,
    )
    try:
        for n in cpus:
            cluster = add_worker(cluster, num_cpus=n, object_store_mb=object_store_mb, env=env,
                                 timeout=timeout)
    except BaseException:
        stop_cluster(cluster, keep_root=True)
        raise
    return cluster


def add_worker(
    cluster: LocalCluster, *, num_cpus: int = 1, object_store_mb: int | None = 512,
    env: Mapping[str, str] | None = None, timeout: float = 120.0,
) -> LocalCluster:
    """Join one more worker node to the cluster; returns the cluster with it."""
    index = len(cluster.workers)
    # never the address of an earlier (even dead) node: results name nodes by IP
    ip = worker_ip(0, taken=[n.ip for n in cluster.nodes])
    spec = NodeSpec(
        role="worker", num_cpus=num_cpus, temp_dir=f"{cluster.root}/w{index}", node_ip=ip,
        object_store_mb=object_store_mb, agent_port=free_port(), address=cluster.address,
    )
    node = _launch(spec, Path(cluster.root) / f"w{index}.log",
                   {**_node_env(env), **cluster.token_env()}, timeout)
    return replace(cluster, nodes=(*cluster.nodes, node))


def stop_cluster(cluster: LocalCluster, *, keep_root: bool = False, grace: float = 20.0) -> None:
    """Stop every node of the cluster (workers first), then remove its folder."""
    problems = []
    for node in (*cluster.workers, cluster.head):
        try:
            stop_node(node, grace=grace)
        except ClusterError as exc:
            problems.append(str(exc))
    if problems:
        raise ClusterError("; ".join(problems) + ". Kill those pids by hand")
    if not keep_root:
        shutil.rmtree(cluster.root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# script


def _cmd_up(args: argparse.Namespace) -> int:
    state = Path(args.state)
    if state.exists():
        raise ClusterError(
            f"{state} exists: a cluster started from here may still run. Run `down` first, or "
            "pass another --state"
        )
    cpus = args.worker_cpus or [1]
    workers = cpus * args.workers if len(cpus) == 1 else cpus
    if len(cpus) > 1 and args.workers not in (1, len(cpus)):
        raise ClusterError(
            f"--workers {args.workers} but {len(cpus)} --worker-cpus values; give one value "
            "for all workers or one per worker"
        )
    cluster = start_cluster(
        workers=workers, head_cpus=args.head_cpus, object_store_mb=args.object_store_mb,
        dashboard=not args.no_dashboard, root=args.root,
        head_env=FAST_FAILURE_DETECTION if args.fast_failure_detection else None,
    )
    cluster.save(state)
    for node in cluster.nodes:
        print(f"{node.role:<6} {node.ip:<15} cpus={node.num_cpus} pid={node.pid} "
              f"log={node.log}")
    print("export " + " ".join(f"{k}={v}" for k, v in cluster.client_env().items()))
    if cluster.dashboard_url:
        print(f"dashboard (job submission): {cluster.dashboard_url}")
    print(f"stop it with: python {sys.argv[0]} down --state {state}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    cluster = LocalCluster.load(args.state)
    stop_cluster(cluster)
    Path(args.state).unlink()
    print(f"stopped {len(cluster.nodes)} node(s) of {cluster.address}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    cluster = LocalCluster.load(args.state)
    print(f"cluster {cluster.address}")
    for node in cluster.nodes:
        members = group_members(node)
        state = f"running ({len(members)} processes)" if members else "gone"
        print(f"{node.role:<6} {node.ip:<15} cpus={node.num_cpus} pid={node.pid}: {state}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a head and workers")
    up.add_argument("--workers", type=int, default=1)
    up.add_argument("--head-cpus", type=int, default=1)
    up.add_argument("--worker-cpus", type=int, nargs="*",
                    help="one value for every worker, or one per worker (default 1)")
    up.add_argument("--object-store-mb", type=int, default=512, help="per node")
    up.add_argument("--no-dashboard", action="store_true",
                    help="skip the dashboard (no job submission, no Serve config deploys)")
    up.add_argument("--fast-failure-detection", action="store_true",
                    help="declare a dead node within seconds (for failure drills)")
    up.add_argument("--root", help="folder for the nodes' temp dirs (short; default /tmp/rlc-*)")
    for p in (up, sub.add_parser("down", help="stop what `up` started"),
              sub.add_parser("status", help="which nodes still run")):
        p.add_argument("--state", default=DEFAULT_STATE, help="the record `up` writes")
    up.set_defaults(func=_cmd_up)
    sub.choices["down"].set_defaults(func=_cmd_down)
    sub.choices["status"].set_defaults(func=_cmd_status)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
