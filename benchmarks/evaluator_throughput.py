"""Evaluator throughput: scoring champion and finalists on a large holdout through
`retrain.evaluate.compare` (metrics, paired DeLong / bootstrap intervals, slices) against
calling the models' predict directly, in the same run on the same rows.

Target: the evaluator keeps >= 0.9x the rows/s of the bare predictions, bootstrap included.
Usage: python benchmarks/evaluator_throughput.py [--rows 1000000] [--finalists 3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd


def make(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 12))
    region = rng.choice(["north", "south", "east", "west"], rows)
    logit = x[:, 0] - 0.6 * x[:, 1] + 0.4 * x[:, 2] * x[:, 3] + (region == "east") * 0.5
    y = (rng.uniform(size=rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(12)])
    frame["region"] = pd.Categorical(region, categories=["east", "north", "south", "west"])
    return frame, y


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--finalists", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import xgboost as xgb

    from retrain.config import EvaluationConfig, SliceConfig
    from retrain.evaluate import Finalist, compare

    x_train, y_train = make(200_000, 0)
    x_hold, y_hold = make(args.rows, 1)
    dtrain = xgb.DMatrix(x_train, y_train, enable_categorical=True)
    models = [
        xgb.train({"objective": "binary:logistic", "max_depth": depth, "eta": 0.1,
                   "tree_method": "hist", "seed": i}, dtrain, args.rounds)
        for i, depth in enumerate([4, 6, 8, 5][: args.finalists + 1])
    ]
    policy = EvaluationConfig(slices=(SliceConfig(column="region", min_rows=1000),))
    slices = pd.DataFrame({"region": x_hold["region"].astype("string")})

    def direct() -> list[np.ndarray]:
        return [m.inplace_predict(x_hold) for m in models]

    def evaluate(preds):
        finalists = [Finalist(f"t{i}", p, trial_id=str(i)) for i, p in enumerate(preds[1:])]
        champion = Finalist("v1", preds[0], version="1")
        return compare("classification", "auc", y_hold, finalists, champion, policy=policy,
                       slice_frame=slices)

    direct()  # warm once
    # Predictions on 2 shared cores vary by +-30 % from run to run, so the evaluator path is
    # timed as the same predictions plus compare() on them, paired per repeat.
    predicting, evaluating = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        preds = direct()
        predicting.append(time.perf_counter() - start)
        start = time.perf_counter()
        comparison = evaluate(preds)
        evaluating.append(time.perf_counter() - start)
    scored = args.rows * len(models)
    direct_s = float(np.median(predicting))
    extra_s = float(np.median(evaluating))
    print(f"\n{args.rows:,} holdout rows x {len(models)} models (champion + "
          f"{args.finalists} finalists), {args.rounds} trees each; median of {args.repeats}")
    print(f"{'path':34} {'seconds':>8} {'rows/s':>12} {'x direct':>9}")
    print(f"{'direct inplace_predict':34} {direct_s:8.2f} {scored / direct_s:12,.0f} "
          f"{1.0:9.2f}")
    total = direct_s + extra_s
    print(f"{'evaluator (predict + CI + slices)':34} {total:8.2f} {scored / total:12,.0f} "
          f"{direct_s / total:9.2f}")
    print(f"compare() alone (metrics, DeLong + bootstrap intervals, slices): {extra_s:.2f}s "
          f"median, {min(evaluating):.2f}s best; predictions {min(predicting):.2f}-"
          f"{max(predicting):.2f}s")
    d = comparison.difference
    secondary = ", ".join(f"{k} {v.estimate:+.4f}" for k, v in comparison.secondary.items())
    print(f"challenger {comparison.challenger.name}: auc difference {d.estimate:+.4f} "
          f"[{d.low:+.4f}, {d.high:+.4f}] ({d.method}, {d.confidence:.3f}); "
          f"secondary: {secondary}; {len(comparison.slices)} slices")


if __name__ == "__main__":
    main()
