"""What a retrain cycle costs on top of the XGBoost training it runs.

Same data, same number of trials and rounds, in one run:

- baseline: the trials' XGBoost configurations trained one after another in this process
  (``nthread`` = all cores), no Ray, no MLflow;
- retrain: ``run_cycle`` with the same trial budget (Ray Tune, 2 concurrent trials of 1 thread,
  ASHA off so every trial trains all rounds, MLflow logging, registration).

Prints wall times and the ratio. Usage: python benchmarks/cycle_overhead.py [--rows 200000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def write_data(root: Path, rows: int, partitions: int = 4) -> None:
    rng = np.random.default_rng(0)
    for p in range(1, partitions + 1):
        n = rows // partitions
        x = rng.normal(size=(n, 10))
        cat = rng.choice(list("abcdefgh"), n)
        logit = x[:, 0] - 0.5 * x[:, 1] + 0.3 * x[:, 2] * x[:, 3] + (cat == "c")
        y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype("int8")
        frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(10)]).assign(cat=cat, label=y)
        folder = root / f"period={p}"
        folder.mkdir(parents=True)
        frame.to_parquet(folder / "part-0.parquet", index=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()

    import xgboost as xgb

    import retrain
    from retrain.candidates import xgb_params
    from retrain.data import load_split

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_data(root / "data", args.rows)
        config = retrain.config_from_dict({
            "project": {"name": "bench", "workdir": str(root / "work")},
            "data": {"path": str(root / "data"), "partition_column": "period",
                     "target": "label"},
            "task": {"type": "classification"},
            "search": {"num_samples": args.trials, "max_concurrent": 2,
                       "num_boost_round": args.rounds, "report_every": 10,
                       "early_stopping": False, "seed": 0},
            "ray": {"num_cpus": os.cpu_count()},
        })
        cycle = retrain.run_cycle(config)
        params = [t.params for t in cycle.search.trials]

        split = load_split(config.data, "classification")
        start = time.perf_counter()
        dtrain = xgb.DMatrix(split.x_train, split.y_train, enable_categorical=True)
        dvalid = xgb.DMatrix(split.x_valid, split.y_valid, enable_categorical=True)
        for p in params:
            xgb.train(xgb_params("classification", "auc", p, nthread=os.cpu_count() or 1,
                                 device="cpu", seed=0),
                      dtrain, args.rounds, evals=[(dvalid, "valid")], verbose_eval=False)
        baseline = time.perf_counter() - start
        trial_seconds = sum(t.train_seconds for t in cycle.search.trials)

    cores = os.cpu_count() or 1
    rows = [
        ("sequential xgboost (baseline)", baseline, 1.0),
        ("retrain search only", cycle.search.wall_seconds, cycle.search.wall_seconds / baseline),
        ("retrain whole cycle", cycle.wall_seconds, cycle.wall_seconds / baseline),
    ]
    print(f"\n{args.trials} trials x {args.rounds} rounds on {args.rows:,} rows, {cores} cores")
    print(f"{'':32} {'wall s':>8} {'x baseline':>10}")
    for name, seconds, ratio in rows:
        print(f"{name:32} {seconds:8.1f} {ratio:10.2f}")
    utilisation = trial_seconds / (cycle.search.wall_seconds * cores)
    print(f"core utilisation of the search U = {utilisation:.2f} "
          "(sum of trial seconds / (wall x cores))")


if __name__ == "__main__":
    main()
