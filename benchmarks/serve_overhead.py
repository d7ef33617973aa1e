"""What traffic control costs an answer: the retrain app vs plain Serve vs bare FastAPI.

One run, one booster (registered once in a temporary MLflow store), the same single-row
request and the same load generator (retrain/loadgen.py) against:

- ``bare``     FastAPI + uvicorn in its own process, ``inplace_predict`` in the handler;
- ``plain``    a minimal one-deployment Ray Serve app (FastAPI ingress, the same handler);
- ``traffic``  the retrain app (serve/model.py) with a split of one version, inference log
  off (its cost is benchmarks/inference_log_overhead.py's subject), and ``traffic+log``
  with it on;
- ``batched``  the retrain app with ``batch_max_size`` > 1 (``serve.batch``), against
  ``traffic`` at concurrency 32.

All Serve apps run side by side in one Serve instance, and the measurement blocks rotate
through the targets, so a drift in machine load hits all alike. Latency p50/p99 come from
1 client thread, throughput from ``--threads`` client threads (and 32 for batching).

Usage: python benchmarks/serve_overhead.py [--seconds 6] [--blocks 3] [--threads 8]
       [--batch-size 32] [--batch-wait 0.005]
       (internal: --bare PORT TRACKING_URI sets up the bare server process)
"""

# No `from __future__ import annotations`: FastAPI reads the plain app's annotations at run
# time inside a Serve replica, where a class shipped by value cannot resolve strings.
import argparse
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


# -- the two baselines -------------------------------------------------------------------------


def _handler_app(get_model):
    """FastAPI app with the plain handler: parse, shape, ``inplace_predict``, answer."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from serve.schemas import parse_invocation

    app = FastAPI()

    @app.post("/invocations")
    async def invocations(request: Request) -> JSONResponse:
        model = get_model()
        raw = parse_invocation(json.loads(await request.body()))
        scores = model.booster.inplace_predict(model.spec.frame(raw))
        return JSONResponse({"predictions": np.asarray(scores, dtype=float).tolist(),
                             "model_version": model.version})

    return app


def plain_app(tracking_uri: str, cpus: float, max_ongoing: int):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from ray import serve

    from serve.loader import load_version
    from serve.schemas import parse_invocation

    app = FastAPI()

    @serve.deployment(max_ongoing_requests=max_ongoing, ray_actor_options={"num_cpus": cpus},
                      logging_config={"enable_access_log": False})
    @serve.ingress(app)
    class Plain:
        def __init__(self) -> None:
            self.model = load_version(tracking_uri, MODEL, "1")

        @app.post("/invocations")
        async def invocations(self, request: Request) -> JSONResponse:
            raw = parse_invocation(json.loads(await request.body()))
            scores = self.model.booster.inplace_predict(self.model.spec.frame(raw))
            return JSONResponse({"predictions": np.asarray(scores, dtype=float).tolist(),
                                 "model_version": self.model.version})

    return Plain.bind()


def run_bare(port: int, tracking_uri: str) -> None:
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
    uvicorn.run(_handler_app(lambda: model), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


# -- measuring ---------------------------------------------------------------------------------


def measure(url: str, threads: int, seconds: float) -> dict:
    from retrain.loadgen import LoadGenerator

    with LoadGenerator(url, BODY, threads=threads, pause_s=0.0) as load:
        time.sleep(0.5)  # warm: connections, first requests
        before = (load.stats.ok, len(load.stats.latencies), load.stats.failed)
        started = time.perf_counter()
        time.sleep(seconds)
        after = (load.stats.ok, len(load.stats.latencies), load.stats.failed)
        elapsed = time.perf_counter() - started
    latencies = np.asarray(load.stats.latencies[before[1]:after[1]]) * 1000
    return {"ok": after[0] - before[0], "failed": after[2] - before[2],
            "rps": (after[0] - before[0]) / elapsed, "latencies": latencies}


def merge(parts: list[dict]) -> dict:
    lat = np.concatenate([p["latencies"] for p in parts])
    return {"ok": sum(p["ok"] for p in parts), "failed": sum(p["failed"] for p in parts),
            "rps": float(np.mean([p["rps"] for p in parts])),
            "p50": float(np.percentile(lat, 50)) if lat.size else float("nan"),
            "p99": float(np.percentile(lat, 99)) if lat.size else float("nan")}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per target and block")
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8, help="client threads, throughput")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batch-wait", type=float, default=0.005)
    parser.add_argument("--cpus", type=float, default=0.5, help="CPUs per replica (logical)")
    parser.add_argument("--bare", nargs=2, metavar=("PORT", "TRACKING_URI"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        run_bare(int(args.bare[0]), args.bare[1])
        return

    import ray
    from ray import serve

    from retrain.runtime import quiet_defaults
    from retrain.serving import deploy
    from serve.settings import ServeSettings

    quiet_defaults()
    root = Path(tempfile.mkdtemp(prefix="serve-overhead-"))
    tracking_uri = register(root)
    bare_port, serve_port = free_port(), free_port()
    # one OpenMP thread, as Ray gives a replica with < 2 CPUs: the same XGBoost in all three
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    bare = subprocess.Popen([sys.executable, __file__, "--bare", str(bare_port), tracking_uri],
                            cwd=Path(__file__).resolve().parent.parent, env=env)
    try:
        # a runtime of its own (never another cluster on this machine); logical CPUs: four
        # replicas at --cpus each, the cores are what they are
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
        serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
        base = f"http://127.0.0.1:{serve_port}"
        serve.run(plain_app(tracking_uri, args.cpus, 64), name="plain", route_prefix="/plain",
                  blocking=False)
        common = dict(tracking_uri=tracking_uri, model_name=MODEL, port=serve_port,
                      cpus_per_replica=args.cpus, max_ongoing_requests=64, poll_interval_s=2.0)
        deploy(ServeSettings(app_name="traffic", route_prefix="/traffic", **common))
        deploy(ServeSettings(app_name="traffic-log", route_prefix="/traffic-log",
                             inference_log_path=str(root / "inference"), **common))
        deploy(ServeSettings(app_name="batched", route_prefix="/batched",
                             batch_max_size=args.batch_size, batch_wait_s=args.batch_wait,
                             admin_token=TOKEN, **common))
        targets = {
            "bare": f"http://127.0.0.1:{bare_port}/invocations",
            "plain": f"{base}/plain/invocations",
            "traffic": f"{base}/traffic/invocations",
            "traffic+log": f"{base}/traffic-log/invocations",
        }
        batch_targets = {"traffic": targets["traffic"], "batched": f"{base}/batched/invocations"}
        for url in {**targets, **batch_targets}.values():
            wait_ready(url)

        latency: dict[str, list] = {k: [] for k in targets}
        throughput: dict[str, list] = {k: [] for k in targets}
        batching: dict[str, list] = {k: [] for k in batch_targets}
        for block in range(args.blocks):
            names = list(targets) if block % 2 == 0 else list(reversed(targets))
            for name in names:
                latency[name].append(measure(targets[name], 1, args.seconds))
                throughput[name].append(measure(targets[name], args.threads, args.seconds))
            for name in (batch_targets if block % 2 == 0 else reversed(batch_targets)):
                batching[name].append(measure(batch_targets[name], 32, args.seconds))
        counters = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"{base}/batched/admin/traffic", headers={"authorization": f"Bearer {TOKEN}"}),
            timeout=10).read())["counters"]["1"]
    finally:
        bare.terminate()
        bare.wait(30)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()

    lat = {k: merge(v) for k, v in latency.items()}
    thr = {k: merge(v) for k, v in throughput.items()}
    bat = {k: merge(v) for k, v in batching.items()}
    print(f"\none single-row XGBoost request; {args.blocks} rotating blocks of {args.seconds:g}s "
          f"per target; {args.cpus:g} CPU per replica\n")
    head = (f"{'target':<13}{'p50 ms':>8}{'p99 ms':>8}{'p50/plain':>10}{'p99/plain':>10}"
            f"{'rps@' + str(args.threads):>9}{'rps/plain':>10}{'failed':>8}")
    print(head)
    for name in targets:
        a, t = lat[name], thr[name]
        print(f"{name:<13}{a['p50']:>8.2f}{a['p99']:>8.2f}{a['p50'] / lat['plain']['p50']:>10.3f}"
              f"{a['p99'] / lat['plain']['p99']:>10.3f}{t['rps']:>9.1f}"
              f"{t['rps'] / thr['plain']['rps']:>10.3f}{a['failed'] + t['failed']:>8}")
    print(f"\nbatching at 32 client threads (batch_max_size={args.batch_size}, "
          f"batch_wait_s={args.batch_wait:g})\n")
    print(f"{'target':<13}{'rps':>8}{'p50 ms':>8}{'p99 ms':>8}{'rps ratio':>10}{'failed':>8}")
    for name, b in bat.items():
        print(f"{name:<13}{b['rps']:>8.1f}{b['p50']:>8.2f}{b['p99']:>8.2f}"
              f"{b['rps'] / bat['traffic']['rps']:>10.3f}{b['failed']:>8}")
    size = counters["batched_requests"] / max(counters["batches"], 1)
    print(f"batched app: {counters['batches']} batches, {size:.1f} requests per batch on "
          "average")


if __name__ == "__main__":
    main()
