"""What an answer costs through Serve, per Serve setting: the retrain app vs plain Serve vs a
bare server running the same request path.

One run, one booster (registered once in a temporary MLflow store), the same single-row
request and the same load generator (retrain/loadgen.py) against:

- ``bare``          FastAPI + uvicorn in its own process, running the app's lean request path
                    (`serve.scoring.Scorer`: JSON to a float32 row block, ``inplace_predict``);
- ``bare-pandas``   the same server with the pandas path the app used before (parse, typed
                    frame, predict on the frame);
- ``plain``         a minimal one-deployment Serve app (FastAPI ingress, the lean path);
- ``traffic``       the retrain app (serve/model.py: traffic split, admin, inference log on,
                    its default batching: only requests that queue are batched);
- ``traffic-nolog`` the same app with the inference log off;
- ``batched``       the retrain app (log off) with ``--batch-size`` and ``--batch-wait``,
                    against ``unbatched`` (log off, ``batch_max_size`` 0) at 32 and 128
                    clients.

Besides answers and latencies, each window counts the CPU seconds (from /proc) of the load
generator (this process), Serve's ingress (HAProxy or the proxy actor), the server (the
target's replica, or the bare process) and the rest of the machine: per answer, what each
target would serve with the cores to itself. On a small machine the load generator shares the
cores, so requests/s ratios understate what the server side gains (batching above all).

Serve's settings are read where Ray starts, so each setting (``--settings``; see SETTINGS)
runs in a child process with a Ray runtime of its own, and the bare servers (started once,
by this process) are measured again inside each child's rotating blocks: every ratio compares
targets measured in the same minutes. Latency p50/p99 come from 1 client thread,
throughput from ``--threads`` and 32 client threads.

With ``--pin`` the load generator runs on core 0 and the servers, Ray and HAProxy on the
other cores: each server's requests/s without the load generator taking its CPU.

Usage: python benchmarks/serve_overhead.py [--settings default haproxy ...] [--seconds 4]
       [--blocks 2] [--threads 8] [--batch-size 32] [--batch-wait 0] [--pin]
       (internal: --bare PORT TRACKING_URI MODE, --child SETTING ARGS_JSON)
"""

# No `from __future__ import annotations`: FastAPI reads the plain app's annotations at run
# time inside a Serve replica, where a class shipped by value cannot resolve strings.
import argparse
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

MODEL = "bench"
TOKEN = "serve-overhead-bench"
ROW = {"x1": 0.3, "x2": 4.0, "x3": -1.2, "cat": "b"}
BODY = {"dataframe_records": [ROW]}

#: Serve settings (environment variables read where Ray starts), each documented by Ray's
#: performance guide; "default" is what `retrain serve` and cluster/local_cluster.py use
SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "no-threads": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
                   "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"},
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1"},
    "haproxy+throughput": {"RAY_SERVE_ENABLE_HA_PROXY": "1",
                           "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    "haproxy+no-threads": {"RAY_SERVE_ENABLE_HA_PROXY": "1",
                           "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
                           "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"},
}


#: with ``--pin``, the load generator runs on this core and every server on the others
LOAD_CORE = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0


def serving_cores() -> set[int]:
    return set(os.sched_getaffinity(0)) - {LOAD_CORE}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def register(root: Path) -> str:
    """The booster of benchmarks/inference_log_overhead.py as version 1, the champion."""
    from inference_log_overhead import make_model  # benchmarks/ is on the path of a script

    from retrain.registry import MlflowRegistry

    model = make_model()
    booster, spec = model.booster, model.spec
    registry = MlflowRegistry(tracking_uri=f"sqlite:///{root}/mlflow.db",
                              artifact_location=str(root / "artifacts"), experiment=MODEL,
                              model_name=MODEL)
    with registry.cycle_run("bench", {}) as run_id:
        uri = registry.log_model(run_id, booster, spec, task="classification", metric="auc")
        version = registry.register(uri, tags={})
    registry.set_alias("champion", version)
    return registry.tracking_uri


# -- the servers ------------------------------------------------------------------------------


def _lean(model):
    from serve.scoring import Scorer

    scorer = Scorer(model)
    return lambda raw: scorer.score_body(raw)


def _pandas(model):
    from serve.schemas import parse_invocation

    def score(raw: bytes):
        frame = model.spec.frame(parse_invocation(json.loads(raw)))
        return model.booster.inplace_predict(frame)

    return score


def _handler_app(model, score):
    """FastAPI app with one handler: the body scored by ``score``, the answer as the app's."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.post("/invocations")
    async def invocations(request: Request) -> JSONResponse:
        scores = score(await request.body())
        return JSONResponse({"predictions": np.asarray(scores, dtype=float).tolist(),
                             "model_version": model.version})

    return app


def plain_app(tracking_uri: str, cpus: float, max_ongoing: int):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from ray import serve

    from serve.loader import load_version

    app = FastAPI()

    @serve.deployment(max_ongoing_requests=max_ongoing, ray_actor_options={"num_cpus": cpus},
                      logging_config={"enable_access_log": False})
    @serve.ingress(app)
    class Plain:
        def __init__(self) -> None:
            self.model = load_version(tracking_uri, MODEL, "1")
            self.score = _lean(self.model)

        @app.post("/invocations")
        async def invocations(self, request: Request) -> JSONResponse:
            scores = self.score(await request.body())
            return JSONResponse({"predictions": np.asarray(scores, dtype=float).tolist(),
                                 "model_version": self.model.version})

    return Plain.bind()


def run_bare(port: int, tracking_uri: str, mode: str) -> None:
    import threading

    import uvicorn

    from serve.loader import load_version

    parent = os.getppid()

    def orphaned() -> None:  # the benchmark died without stopping us: stop too
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=orphaned, daemon=True).start()
    model = load_version(tracking_uri, MODEL, "1")
    score = _lean(model) if mode == "lean" else _pandas(model)
    uvicorn.run(_handler_app(model, score), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


# -- measuring ---------------------------------------------------------------------------------


#: clock ticks per second of /proc's CPU times
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # the name may hold spaces
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def _box_cpu() -> float:
    """CPU seconds the whole machine has been busy (all but idle and I/O wait)."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK


def processes(app: str | None, bare_pid: int | None) -> dict[str, list[int]]:
    """The processes that serve a target: its server (a Serve replica of ``app``, or the bare
    server) and Serve's ingress (HAProxy and the proxy actor; none for a bare server)."""
    if bare_pid is not None:
        return {"server": [bare_pid], "ingress": []}
    found: dict[str, list[int]] = {"server": [], "ingress": []}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            command = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0].decode()
        except (OSError, UnicodeDecodeError):
            continue
        if command.startswith(f"ray::ServeReplica:{app}:"):
            found["server"].append(int(entry))
        elif command.startswith("ray::ProxyActor") or Path(command).name == "haproxy":
            found["ingress"].append(int(entry))
    return found


def _cpu(groups: dict[str, list[int]]) -> dict[str, dict[int, float | None]]:
    """CPU seconds so far: the machine's and this process's (as pid 0), each group's per
    process."""
    return {"box": {0: _box_cpu()}, "load": {0: sum(os.times()[:2])},
            **{name: {pid: _process_cpu(pid) for pid in pids}
               for name, pids in groups.items()}}


def _spent(before: dict[int, float | None], after: dict[int, float | None]) -> float:
    """CPU seconds between two readings, over the processes alive at both."""
    return sum(after[pid] - was for pid, was in before.items()
               if was is not None and after.get(pid) is not None)


def measure(url: str, threads: int, seconds: float, groups: dict[str, list[int]]) -> dict:
    """One window of load on ``url``: answers, latencies, and the CPU seconds each part of
    the machine used meanwhile (``load``: this process, the load generator)."""
    from retrain.loadgen import LoadGenerator

    with LoadGenerator(url, BODY, threads=threads, pause_s=0.0) as load:
        time.sleep(0.5)  # warm: connections, first requests
        before = (load.stats.ok, len(load.stats.latencies), load.stats.failed)
        cpu_before = _cpu(groups)
        started = time.perf_counter()
        time.sleep(seconds)
        after = (load.stats.ok, len(load.stats.latencies), load.stats.failed)
        cpu_after = _cpu(groups)
        elapsed = time.perf_counter() - started
    latencies = np.asarray(load.stats.latencies[before[1]:after[1]]) * 1000
    return {"ok": after[0] - before[0], "failed": after[2] - before[2],
            "rps": (after[0] - before[0]) / elapsed, "latencies": latencies.tolist(),
            "cpu": {k: _spent(cpu_before[k], cpu_after[k]) for k in cpu_after}}


def merge(parts: list[dict]) -> dict:
    lat = np.concatenate([np.asarray(p["latencies"]) for p in parts])
    ok = sum(p["ok"] for p in parts)
    cpu = {k: sum(p["cpu"][k] for p in parts) for k in parts[0]["cpu"]}
    cpu["rest"] = cpu["box"] - cpu["load"] - cpu["server"] - cpu["ingress"]
    return {"ok": ok, "failed": sum(p["failed"] for p in parts),
            "rps": float(np.mean([p["rps"] for p in parts])),
            "p50": float(np.percentile(lat, 50)) if lat.size else float("nan"),
            "p99": float(np.percentile(lat, 99)) if lat.size else float("nan"),
            # CPU milliseconds per answer, per part of the machine
            "cpu_ms": {k: 1000 * v / max(ok, 1) for k, v in cpu.items()}}


def wait_ready(url: str, timeout: float = 180) -> None:
    from retrain.serving import post_json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if post_json(url, BODY, timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout:.0f}s")


def run_child(setting: str, args: dict) -> None:
    """One setting: a Ray runtime of its own with the setting's environment, the Serve apps,
    and the rotating blocks over them and the bare servers; prints one JSON line."""
    os.environ.update(SETTINGS[setting])
    # short: HAProxy's admin socket lands two levels below, and a unix socket's path is
    # limited to 107 bytes (a longer one makes HAProxy refuse its configuration)
    scratch = Path(tempfile.mkdtemp(prefix="so-"))
    # HAProxy's files and ports: this run's own (its defaults are shared by every cluster on
    # the machine, and 8404/9101 may be taken)
    os.environ.update({"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(scratch / "haproxy.cfg"),
                       "RAY_SERVE_HAPROXY_SOCKET_PATH": str(scratch / "admin.sock"),
                       "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(scratch),
                       "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(scratch / "server-state"),
                       "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
                       "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())})
    import ray
    from ray import serve

    from retrain.runtime import quiet_defaults
    from retrain.serving import deploy
    from serve.settings import ServeSettings

    quiet_defaults()
    port, cpus, tracking_uri = free_port(), args["cpus"], args["tracking_uri"]
    if args["pin"]:  # Ray's processes (raylet, workers, HAProxy) inherit the serving cores
        os.sched_setaffinity(0, serving_cores())
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = f"http://127.0.0.1:{port}"
        serve.run(plain_app(tracking_uri, cpus, 64), name="plain", route_prefix="/plain",
                  blocking=False)
        common = dict(tracking_uri=tracking_uri, model_name=MODEL, port=port,
                      cpus_per_replica=cpus, max_ongoing_requests=64, poll_interval_s=2.0)
        deploy(ServeSettings(app_name="traffic", route_prefix="/traffic",
                             inference_log_path=str(scratch / "inference"), **common))
        deploy(ServeSettings(app_name="traffic-nolog", route_prefix="/traffic-nolog",
                             **common))
        deploy(ServeSettings(app_name="unbatched", route_prefix="/unbatched",
                             batch_max_size=0, **common))
        deploy(ServeSettings(app_name="batched", route_prefix="/batched",
                             batch_max_size=args["batch_size"], batch_wait_s=args["batch_wait"],
                             admin_token=TOKEN, **common))
        targets = {"bare": args["bare"], "bare-pandas": args["bare_pandas"],
                   "plain": f"{base}/plain/invocations",
                   "traffic": f"{base}/traffic/invocations",
                   "traffic-nolog": f"{base}/traffic-nolog/invocations"}
        batch = {"unbatched": f"{base}/unbatched/invocations",
                 "batched": f"{base}/batched/invocations"}
        for url in {**targets, **batch}.values():
            wait_ready(url)
        if args["pin"]:  # the load generator's threads, started below, inherit this core
            os.sched_setaffinity(0, {LOAD_CORE})
        # this process is the client: its own full collections (it holds Ray and pandas)
        # would pause the load threads and read as server latency
        gc.collect()
        gc.freeze()
        seconds, threads = args["seconds"], args["threads"]
        runs: dict[str, dict[str, list]] = {}

        bare_pids = {"bare": args["bare_pid"], "bare-pandas": args["bare_pandas_pid"]}
        groups = {name: processes(None if name in bare_pids else name, bare_pids.get(name))
                  for name in {**targets, **batch}}

        def add(key: str, name: str, url: str, clients: int) -> None:
            runs.setdefault(key, {}).setdefault(name, []).append(
                measure(url, clients, seconds, groups[name]))

        for block in range(args["blocks"]):
            order = list(targets) if block % 2 == 0 else list(reversed(targets))
            for name in order:
                add("1", name, targets[name], 1)
                add(str(threads), name, targets[name], threads)
                add("32", name, targets[name], 32)
            for name in (batch if block % 2 == 0 else reversed(batch)):
                for clients in (32, 128):
                    add(f"batch{clients}", name, batch[name], clients)
        counters = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"{base}/batched/admin/traffic", headers={"authorization": f"Bearer {TOKEN}"}),
            timeout=10).read())["counters"]["1"]
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    merged = {key: {name: merge(parts) for name, parts in by.items()}
              for key, by in runs.items()}
    print("RESULT " + json.dumps({"setting": setting, "runs": merged,
                                  "batches": counters["batches"],
                                  "batched_requests": counters["batched_requests"]}),
          flush=True)


def _child(setting: str, args: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", setting, json.dumps(args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, env=env,
                          stdout=subprocess.PIPE, text=True, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return {"setting": setting, "error": f"exit {done.returncode}"}
    return json.loads(lines[-1][len("RESULT "):])


def _print(results: list[dict], threads: int) -> None:
    t = str(threads)
    print(f"\n{'setting':<20}{'target':<15}{'p50 ms':>8}{'p99 ms':>8}{'p50/bare':>9}"
          f"{'rps@' + t:>8}{'/bare':>7}{'rps@32':>8}{'/bare':>7}{'failed':>7}")
    for r in results:
        if "error" in r:
            print(f"{r['setting']:<20}failed to run: {r['error']}")
            continue
        one, many, wide = r["runs"]["1"], r["runs"][t], r["runs"]["32"]
        for name in one:
            failed = one[name]["failed"] + many[name]["failed"] + wide[name]["failed"]
            print(f"{r['setting']:<20}{name:<15}{one[name]['p50']:>8.2f}{one[name]['p99']:>8.2f}"
                  f"{one[name]['p50'] / one['bare']['p50']:>9.2f}{many[name]['rps']:>8.0f}"
                  f"{many[name]['rps'] / many['bare']['rps']:>7.2f}{wide[name]['rps']:>8.0f}"
                  f"{wide[name]['rps'] / wide['bare']['rps']:>7.2f}{failed:>7}")
    print("\nbatching (the retrain app, log off): rps, and batched / unbatched")
    print(f"{'setting':<20}{'clients':>8}{'unbatched':>10}{'batched':>9}{'ratio':>7}"
          f"{'p99 ms':>8}{'per batch':>10}")
    for r in results:
        if "error" in r:
            continue
        size = r["batched_requests"] / max(r["batches"], 1)
        for clients in (32, 128):
            b = r["runs"][f"batch{clients}"]
            plain, batched = b["unbatched"]["rps"], b["batched"]["rps"]
            print(f"{r['setting']:<20}{clients:>8}{plain:>10.0f}{batched:>9.0f}"
                  f"{batched / plain:>7.2f}{b['batched']['p99']:>8.1f}{size:>10.1f}")
    _print_cpu(results, t)


def _print_cpu(results: list[dict], threads: str) -> None:
    """Where the machine's CPU went, per answer: what a target would serve with the cores
    to itself, apart from the load generator sharing them here."""
    parts = ("load", "ingress", "server", "rest", "box")
    print("\nCPU milliseconds per answer: the load generator (this process), Serve's ingress, "
          "the server (replica or bare process), the rest of the machine, all")
    print(f"{'setting':<20}{'target':<15}{'clients':>8}"
          + "".join(f"{p:>9}" for p in ("load", "ingress", "server", "rest", "all"))
          + f"{'server/unbatched':>18}")
    for r in results:
        if "error" in r:
            continue
        rows = [(name, threads, m) for name, m in r["runs"][threads].items()]
        for clients in (32, 128):
            rows += [(name, str(clients), m)
                     for name, m in r["runs"][f"batch{clients}"].items()]
        for name, clients, m in rows:
            cpu = m["cpu_ms"]
            base = (r["runs"][f"batch{clients}"]["unbatched"]["cpu_ms"]["server"]
                    if name == "batched" else None)
            print(f"{r['setting']:<20}{name:<15}{clients:>8}"
                  + "".join(f"{cpu[p]:>9.3f}" for p in parts)
                  + (f"{base / cpu['server']:>17.2f}x" if base else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS),
                        default=["default", "haproxy"])
    parser.add_argument("--seconds", type=float, default=4.0, help="per target and block")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8, help="client threads, throughput")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batch-wait", type=float, default=0.0)
    parser.add_argument("--cpus", type=float, default=0.5, help="CPUs per replica (logical)")
    parser.add_argument("--pin", action="store_true",
                        help="the load generator on core 0, the servers and Ray on the rest: "
                             "what each server serves when the load does not share its cores")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--bare", nargs=3, metavar=("PORT", "TRACKING_URI", "MODE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, metavar=("SETTING", "ARGS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        run_bare(int(args.bare[0]), args.bare[1], args.bare[2])
        return
    if args.child:
        run_child(args.child[0], json.loads(args.child[1]))
        return

    if args.pin and len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("--pin needs at least 2 cores")
    root = Path(tempfile.mkdtemp(prefix="serve-overhead-"))
    tracking_uri = register(root)
    # one OpenMP thread, as Ray gives a replica with < 2 CPUs: the same XGBoost everywhere
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ports = {"lean": free_port(), "pandas": free_port()}
    # with --pin, each bare server is on the serving cores from its first instruction, every
    # thread it starts included
    pin = (lambda: os.sched_setaffinity(0, serving_cores())) if args.pin else None
    bares = [subprocess.Popen([sys.executable, __file__, "--bare", str(port), tracking_uri, mode],
                              cwd=Path(__file__).resolve().parent.parent, env=env,
                              preexec_fn=pin)
             for mode, port in ports.items()]
    child_args = {"tracking_uri": tracking_uri, "cpus": args.cpus, "seconds": args.seconds,
                  "blocks": args.blocks, "threads": args.threads,
                  "batch_size": args.batch_size, "batch_wait": args.batch_wait, "pin": args.pin,
                  "bare_pid": bares[0].pid, "bare_pandas_pid": bares[1].pid,
                  "bare": f"http://127.0.0.1:{ports['lean']}/invocations",
                  "bare_pandas": f"http://127.0.0.1:{ports['pandas']}/invocations"}
    try:
        wait_ready(child_args["bare"])
        wait_ready(child_args["bare_pandas"])
        results = [_child(setting, child_args) for setting in args.settings]
    finally:
        for bare in bares:
            bare.terminate()
            bare.wait(30)
    print(f"\none single-row XGBoost request; {args.blocks} rotating blocks of "
          f"{args.seconds:g}s per target and client count; {args.cpus:g} CPU per replica; "
          "ratios against the bare lean server measured in the same child"
          + (f"; load generator on core {LOAD_CORE}, servers and Ray on cores "
             f"{sorted(serving_cores())}" if args.pin else "; all share every core"))
    _print(results, args.threads)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
