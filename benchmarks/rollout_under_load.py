"""A full canary promotion and a rollback under steady load: what callers see.

One run on a local Ray runtime (2 CPUs) and Serve: two registered versions of one model, the
retrain app serving version 1, client threads posting single rows for the whole run. Then:

- ``steady``    the baseline window before anything changes;
- ``rollout``   `RolloutDriver.run`: smoke, shadow, canary 5/25/50 %, 100 %, completed
                (the champion alias moves to version 2), then split at each transition
                (the driver process starting, smoke, shadow, each canary step): where in
                the rollout the p99 rises;
- ``rollback``  the alias back to version 1 (`retrain rollout promote 1`), until the app
                answers from version 1 only, plus a few seconds.

Per window: requests, failures, p50/p99/max latency and the longest gap between answers
(a stall), with p99 as a ratio of the steady window's; and the CPU seconds the driver process
used. Targets: 0 failures, p99 <= 1.5x, no stall over 1 s.

Usage: python benchmarks/rollout_under_load.py [--threads 3] [--steady-s 15] [--bake-s 3]
       [--batch-max-size N]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from retrain.loadgen import Answer, LoadGenerator

TOKEN = "rollout-bench"
ROW = {"x1": 0.3, "x2": 4.0, "cat": "b"}


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2, cat = rng.normal(size=n), rng.uniform(0, 10, n), rng.choice(["a", "b", "c"], n)
    logit = 1.5 * x1 - 0.3 * x2 + (cat == "b") + 1.0
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype("int8")
    return pd.DataFrame({"x1": x1, "x2": x2, "cat": cat, "label": y})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _window(answers: list[Answer], start: float, end: float) -> dict:
    rows = [a for a in answers if start <= a.started < end]
    ok = np.array([a.seconds for a in rows if a.ok]) * 1000
    done = sorted(a.started + a.seconds for a in rows)
    gaps = [b - a for a, b in itertools.pairwise(done)] or [0.0]
    return {"requests": len(rows), "failed": sum(not a.ok for a in rows),
            "p50": float(np.percentile(ok, 50)) if ok.size else float("nan"),
            "p99": float(np.percentile(ok, 99)) if ok.size else float("nan"),
            "max": float(ok.max()) if ok.size else float("nan"), "stall": max(gaps) * 1000,
            "versions": sorted({a.version for a in rows if a.version})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("--steady-s", type=float, default=15.0)
    parser.add_argument("--bake-s", type=float, default=3.0)
    parser.add_argument("--batch-max-size", type=int, default=None,
                        help="serving.batch_max_size (default: the app's; 0: no batching)")
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray
    import xgboost as xgb
    from ray import serve

    from retrain.cli import main as cli
    from retrain.config import config_from_dict
    from retrain.registry import CHAMPION, MlflowRegistry
    from retrain.serving import deploy, serve_settings, wait_for_version
    from retrain.traffic_control import RolloutDriver
    from serve.features import FeatureSpec

    root = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
    for month in (1, 2):
        folder = root / "data" / f"period={month}"
        folder.mkdir(parents=True)
        _frame(2000, month).to_parquet(folder / "part-0.parquet", index=False)
    port = _free_port()
    config = config_from_dict({
        "project": {"name": "bench", "workdir": str(root / "work")},
        "data": {"path": str(root / "data"), "partition_column": "period", "target": "label"},
        "task": {"type": "classification", "metric": "auc"},
        "serving": {"port": port, "cpus_per_replica": 0.5, "poll_interval_s": 0.5,
                    **({} if args.batch_max_size is None
                       else {"batch_max_size": args.batch_max_size})},
        "inference_log": {"flush_interval_s": 0.5},
        "rollout": {"enabled": True, "smoke": {"requests": 3},
                    "shadow": {"duration_s": args.bake_s, "min_requests": 50},
                    "canary": {"steps": [5, 25, 50, 100], "bake_s": args.bake_s,
                               "min_requests": 50},
                    "gates": {"max_latency_ratio": 3.0, "latency_slack_ms": 20}},
    })
    ray.init(num_cpus=2, logging_level="ERROR", include_dashboard=False)
    try:
        registry = MlflowRegistry.from_config(config)
        for seed in (1, 2):
            data = _frame(3000, seed)
            spec = FeatureSpec.learn(data, ("x1", "x2", "cat"))
            booster = xgb.train({"objective": "binary:logistic", "max_depth": 4, "nthread": 1},
                                xgb.DMatrix(spec.frame(data), data["label"],
                                            enable_categorical=True), 50)
            with registry.cycle_run(f"bench-v{seed}", {}) as run_id:
                uri = registry.log_model(run_id, booster, spec, task="classification",
                                         metric="auc")
                registry.register(uri, tags={})
        registry.set_alias(CHAMPION, "1")
        deploy(replace(serve_settings(config), admin_token=TOKEN))
        url = f"http://127.0.0.1:{port}"
        wait_for_version(url, "1", timeout=120)
        (root / "retrain.yaml").write_text("")  # the CLI below reads the config from a file
        import yaml

        (root / "retrain.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
        driver = RolloutDriver(config, url=url, token=TOKEN)
        marks = {}
        # this process is the client: its own full collections (it holds Ray, MLflow and
        # pandas) would pause the load threads and read as server latency
        gc.collect()
        gc.freeze()
        with LoadGenerator(f"{url}/invocations", {"dataframe_records": [ROW]},
                           threads=args.threads, pause_s=0.0) as load:
            marks["steady"] = time.monotonic()
            time.sleep(args.steady_s)
            marks["rollout"] = time.monotonic()
            # the driver in its own process, as `retrain rollout start` runs in production
            # (in this one it would share the load threads' interpreter lock)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(
                [sys.executable, "-m", "retrain.cli", "rollout", "start", "2", "--config",
                 str(root / "retrain.yaml"), "--url", url, "--poll-s", "0.5",
                 "--timeout-s", "600"],
                env={**os.environ, config.serving.admin_token_env: TOKEN},
                stdout=subprocess.DEVNULL, check=False)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            driver_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            rollout = driver.load()
            wait_for_version(url, "2", timeout=60)
            marks["rollback"] = time.monotonic()
            cli(["rollout", "promote", "1", "--config", str(root / "retrain.yaml"),
                 "--reason", "benchmark"])
            wait_for_version(url, "1", timeout=60)
            time.sleep(3)
            marks["end"] = time.monotonic()
        steady = _window(load.answers, marks["steady"], marks["rollout"])
        print(f"rollout: {rollout.stage} ({rollout.reason}); "
              f"{len(rollout.history)} transitions; the driver process used {driver_cpu:.1f} "
              f"CPU-s in {marks['rollback'] - marks['rollout']:.1f} s")
        print(f"{'window':<20}{'s':>6}{'requests':>10}{'failed':>8}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'p99/steady':>12}{'max ms':>9}{'stall ms':>10}  versions")
        for name, start, end in (("steady", marks["steady"], marks["rollout"]),
                                 ("rollout", marks["rollout"], marks["rollback"]),
                                 *_stages(rollout, marks["rollout"], marks["rollback"]),
                                 ("rollback", marks["rollback"], marks["end"])):
            w = _window(load.answers, start, end)
            print(f"{name:<20}{end - start:>6.1f}{w['requests']:>10}{w['failed']:>8}"
                  f"{w['p50']:>9.1f}{w['p99']:>9.1f}{w['p99'] / steady['p99']:>12.2f}"
                  f"{w['max']:>9.1f}{w['stall']:>10.1f}  {','.join(w['versions'])}")
        serve.delete(config.serving.app_name)
    finally:
        serve.shutdown()
        ray.shutdown()


def _stages(rollout, start: float, end: float) -> list[tuple[str, float, float]]:
    """The rollout window split at each transition the driver recorded (its wall-clock
    times mapped onto this process's monotonic clock): where in the rollout a p99 rises."""
    offset = time.time() - time.monotonic()
    cuts = [start, *(min(max(t.at - offset, start), end) for t in rollout.history), end]
    names = ["  (driver starting)"]
    for t in rollout.history:
        step = (rollout.plan.steps[t.to_step]
                if t.to_step < len(rollout.plan.steps) else None)
        names.append(f"  {t.to_stage}" + (f" {step.percent:g}%" if t.to_stage == "canary"
                                          and step is not None else ""))
    return [(n, a, b) for n, a, b in zip(names, cuts, cuts[1:], strict=False) if b > a]


if __name__ == "__main__":
    main()
