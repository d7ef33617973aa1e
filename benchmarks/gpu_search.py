"""The same retrain search on a GPU and on CPUs: 10M rows, fixed space, seed and budget (issue #6).

`retrain.search.run_search` on a local Ray runtime this script starts, over a seeded
synthetic binary task (20 numeric features, 3 categoricals; the newest 20 % of rows
validate), with a fixed search space, seed and trial budget and no early stopping, so both
runs train the same configurations for the same number of rounds:

- ``--device cpu``: every trial holds 1 CPU (one XGBoost thread), ``--concurrent`` at once;
- ``--device cuda``: every trial also holds ``1 / --concurrent`` of the GPU (0.5: two trials
  share one GPU), so XGBoost trains with device="cuda" (`retrain.search.trial._trial`).

It writes a JSON result (``--out``): the search's wall seconds (`run_search` end to end:
Tune's set-up, the data into the object store, every trial, collecting results; starting
Ray is not in it), each trial's params, score, rounds and training seconds (the trial's own:
building its matrices and boosting, without Ray's start of the trial actor and reporting; the
first trial on each trial actor also builds the matrices the actor keeps for the next, see
`retrain.search.trial._matrices`), its reports, and the machine. Given ``--baseline cpu.json`` (a
run of this script on the CPU machine) it prints the comparison as ratios: speed-up of the
wall and of each trial's training (trials are paired by their params: the same seed gives
the same configurations), and the best score's difference. Target from issue #6: the search
on the GPU >= 15x faster than on the 2-core CPU box (wall).

Usage: python benchmarks/gpu_search.py --device cpu --out cpu.json
       python benchmarks/gpu_search.py --device cuda --out gpu.json --baseline cpu.json
       python benchmarks/gpu_search.py --result gpu.json --baseline cpu.json  (no run)
       (--rows 10000000 --trials 4 --rounds 60 by default; --rows 100000 for a quick check)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: this checkout: retrain is imported from here, also where it is not installed (the device
#: machine runs the script from a bare checkout)
ROOT = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, ROOT)

NUMERIC = 20
#: categorical columns and their number of levels
CATEGORIES = {"c0": 8, "c1": 32, "c2": 100}
TARGET_SPEEDUP = 15.0

#: fixed so that every run trains the same configurations: depth is fixed (training time
#: grows with it), the rest is searched; the seed then picks the same values on every machine
SPACE: dict[str, Any] = {
    "max_depth": 8,
    "eta": {"type": "float", "low": 0.05, "high": 0.3, "log": True},
    "min_child_weight": {"type": "float", "low": 1.0, "high": 20.0, "log": True},
    "subsample": {"type": "float", "low": 0.6, "high": 1.0},
    "colsample_bytree": {"type": "float", "low": 0.6, "high": 1.0},
    "lambda": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
}


def make_data(rows: int, seed: int):
    """A seeded binary task: linear, interaction, non-linear and categorical effects, plus
    noise features; float32 throughout (what XGBoost stores anyway), built in a few seconds
    at 10M rows. Returns (x_train, y_train, x_valid, y_valid), the newest 20 % validating."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, NUMERIC), dtype=np.float32)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(NUMERIC)], copy=False)
    codes = {name: rng.integers(0, levels, rows, dtype=np.int16)
             for name, levels in CATEGORIES.items()}
    # a fixed effect per level of each categorical
    effects = {name: np.random.default_rng(seed + i + 1).normal(0, 0.5, levels)
               for i, (name, levels) in enumerate(CATEGORIES.items())}
    logit = (x[:, 0] - 0.5 * x[:, 1] + 0.6 * x[:, 2] * x[:, 3] + 0.8 * np.sin(2 * x[:, 4])
             + 0.4 * np.abs(x[:, 5]) - 0.3 * x[:, 6] * x[:, 7] + 0.5 * (x[:, 8] > 1))
    for name in CATEGORIES:
        logit += effects[name][codes[name]]
        frame[name] = pd.Categorical.from_codes(
            codes[name], categories=[f"{name}_{k}" for k in range(CATEGORIES[name])])
    y = (rng.random(rows, dtype=np.float32) < 1 / (1 + np.exp(-logit))).astype("int8")
    cut = int(rows * 0.8)
    return (frame.iloc[:cut].reset_index(drop=True), y[:cut],
            frame.iloc[cut:].reset_index(drop=True), y[cut:])


def search_config(args, workdir: Path):
    import retrain

    gpus = 1.0 / args.concurrent if args.device == "cuda" else 0.0
    return retrain.config_from_dict({
        "project": {"name": "gpu-bench", "workdir": str(workdir)},
        "data": {"path": str(workdir), "partition_column": "p", "target": "y"},
        "task": {"type": "classification", "metric": "auc"},
        "search": {"num_samples": args.trials, "max_concurrent": args.concurrent,
                   "num_boost_round": args.rounds, "report_every": args.report_every,
                   "seed": args.seed, "early_stopping": False, "space": SPACE},
        "resources": {"cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": gpus},
    })


def machine(device: str) -> dict[str, Any]:
    import ray
    import xgboost

    info: dict[str, Any] = {"host": platform.node(), "cores": os.cpu_count(),
                            "python": platform.python_version(), "ray": ray.__version__,
                            "xgboost": xgboost.__version__}
    if device == "cuda":
        import subprocess

        done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                               "--format=csv,noheader"], capture_output=True, text=True)
        info["gpu"] = done.stdout.strip()
    return info


def run(args) -> dict[str, Any]:
    import ray

    from retrain.runtime import quiet_defaults
    from retrain.search import TrainData, run_search

    quiet_defaults()
    began = time.perf_counter()
    data = TrainData(*make_data(args.rows, args.seed))
    made = time.perf_counter() - began
    nbytes = int(data.x_train.memory_usage(deep=True).sum()
                 + data.x_valid.memory_usage(deep=True).sum())
    print(f"data: {args.rows:,} rows ({nbytes / 2**30:.2f} GiB) in {made:.1f}s", flush=True)
    num_cpus = args.num_cpus or max(1, round(args.concurrent * args.cpus_per_trial))
    # the frames go into the object store once (tune.with_parameters); sized from the data
    # so that both machines run with the same room, whatever their memory
    store = max(2 * 2**30, int(3 * nbytes))
    # the trial workers are started by the runtime started here and inherit this environment
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=num_cpus, num_gpus=1 if args.device == "cuda" else 0,
             object_store_memory=store, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = search_config(args, Path(tmp))
            result = run_search(config, data, name=f"gpu-bench-{args.device}",
                                progress=True)
        info = machine(args.device)
    finally:
        ray.shutdown()
    trials = []
    for t in result.trials:
        trained = t.fit_seconds if t.fit_seconds is not None else (
            t.history[-1].get("trained") if t.history else None)
        trials.append({"params": t.params, "status": t.status, "score": t.score,
                       "rounds": t.rounds, "train_s": trained, "gpu": t.gpu,
                       "error": t.error,
                       # per report: round, score, training seconds so far, unix time
                       "history": [dict(h) for h in t.history]})
    best = result.best
    return {
        "device": args.device, "rows": args.rows, "features": NUMERIC + len(CATEGORIES),
        "trials": args.trials, "rounds": args.rounds, "concurrent": args.concurrent,
        "cpus_per_trial": args.cpus_per_trial, "seed": args.seed, "num_cpus": num_cpus,
        "data_s": made, "wall_s": result.wall_seconds,
        "best_score": None if best is None else best.score,
        "completed": result.count("completed"), "machine": info, "results": trials,
    }


def _key(params: dict[str, Any]) -> str:
    return json.dumps({k: round(v, 9) if isinstance(v, float) else v
                       for k, v in sorted(params.items())})


def compare(run_: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """The comparison table (this run against the baseline) and the verdict lines."""
    def ratio(a, b) -> str:
        return f"{a / b:.1f}x" if a and b else "-"

    lines = []
    same = all(run_[k] == base[k] for k in ("rows", "trials", "rounds", "seed"))
    if not same:
        lines.append("WARNING: rows/trials/rounds/seed differ from the baseline: "
                     "ratios compare different work")
    by_params = {_key(t["params"]): t for t in base["results"]}
    lines.append(f"{'':28} {base['device'] + ' (baseline)':>16} {run_['device']:>10} "
                 f"{'speed-up':>9}")
    lines.append(f"{'search wall s':28} {base['wall_s']:16.1f} {run_['wall_s']:10.1f} "
                 f"{ratio(base['wall_s'], run_['wall_s']):>9}")
    paired = [(by_params[_key(t["params"])], t) for t in run_["results"]
              if _key(t["params"]) in by_params]
    for i, (b, r) in enumerate(paired):
        lines.append(f"{f'trial {i} train s':28} {b['train_s'] or 0:16.2f} "
                     f"{r['train_s'] or 0:10.2f} {ratio(b['train_s'], r['train_s']):>9}")
    both = [(b["train_s"], r["train_s"]) for b, r in paired if b["train_s"] and r["train_s"]]
    if both:
        sb, sr = sum(b for b, _ in both), sum(r for _, r in both)
        lines.append(f"{'sum of trial train s':28} {sb:16.1f} {sr:10.1f} {ratio(sb, sr):>9}")
        med = statistics.median(b / r for b, r in both)
        lines.append(f"{'median per-trial speed-up':28} {'':16} {'':10} {med:8.1f}x")
    if len(paired) < len(run_["results"]):
        lines.append(f"({len(run_['results']) - len(paired)} trials had params the baseline "
                     "did not train: not paired)")
    bs, rs = base.get("best_score"), run_.get("best_score")
    if bs is not None and rs is not None:
        lines.append(f"{'best AUC':28} {bs:16.5f} {rs:10.5f} {'diff':>4} {rs - bs:+.5f}")
    speedup = base["wall_s"] / run_["wall_s"]
    lines.append(f"target search wall speed-up >= {TARGET_SPEEDUP:g}x: {speedup:.1f}x "
                 f"{'met' if speedup >= TARGET_SPEEDUP else 'MISSED'}")
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--report-every", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=2,
                        help="trials at once; on cuda each holds 1/concurrent of the GPU")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0,
                        help="CPUs (XGBoost threads) per trial")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs of the Ray runtime (default: concurrent x cpus-per-trial)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a result JSON of another run (the CPU box) to compare against")
    parser.add_argument("--result", type=Path, default=None,
                        help="compare this saved result JSON (e.g. the GPU's) with --baseline "
                             "instead of running the search")
    args = parser.parse_args(argv)

    if args.result is not None:
        if args.baseline is None:
            parser.error("--result compares a saved run with --baseline; give both")
        result = json.loads(args.result.read_text())
        for line in compare(result, json.loads(args.baseline.read_text())):
            print(line, flush=True)
        return result
    result = run(args)
    summary = (f"{args.device}: {args.trials} trials x {args.rounds} rounds on "
               f"{args.rows:,} rows, {args.concurrent} at once, {args.cpus_per_trial:g} CPU "
               f"per trial: wall {result['wall_s']:.1f}s, best AUC {result['best_score']}, "
               f"{result['completed']}/{args.trials} completed")
    print(summary, flush=True)
    for t in result["results"]:
        print(f"  {t['status']:9} score={t['score']} rounds={t['rounds']} "
              f"train_s={t['train_s']} gpu={t['gpu']} {t['error'] or ''}", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
    if args.baseline is not None:
        for line in compare(result, json.loads(args.baseline.read_text())):
            print(line, flush=True)
    return result


if __name__ == "__main__":
    main()
