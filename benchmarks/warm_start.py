"""Warm start vs full retrain: what continuing the champion saves, and what it costs in quality.

Same data, same XGBoost parameters, in one process (no Ray, no MLflow):

- champion: trained on the old months (``--rounds`` rounds);
- full retrain: from scratch on old + new months, ``--rounds`` rounds (what a cycle without
  warm start trains);
- warm start: the champion's booster, read from its UBJ bytes as a trial does, boosted on for
  ``k`` more rounds (the ``xgboost_warm_start`` family): on the new month, the rows the
  champion never trained on (``rows: new``, the default), and on old + new (``rows: all``).

Each fit is timed end to end (DMatrix construction and loading the champion included) and
repeated; the table shows medians, the time ratio to the full retrain and the holdout AUC
difference. Target from issue #6: time <= 0.2x at an AUC within 0.002 of the full retrain
(no more than 0.002 below it; ``--shift`` drifts the new month, where a warm start on the new
rows can beat the full retrain).

Usage: python benchmarks/warm_start.py [--rows 100000] [--rounds 200] [--warm 10 20 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd


def month(rows: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    """One month of a fixed concept with an interaction and a categorical effect."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 10))
    cat = rng.choice(list("abcdefgh"), rows)
    logit = (x[:, 0] - 0.5 * x[:, 1] + 0.3 * x[:, 2] * x[:, 3] + (cat == "c")
             + 0.5 * np.sin(2 * x[:, 4]) + shift * x[:, 5])
    y = (rng.uniform(size=rows) < 1 / (1 + np.exp(-logit))).astype("int8")
    return pd.DataFrame(x, columns=[f"f{i}" for i in range(10)]).assign(cat=cat, label=y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows per month")
    parser.add_argument("--old-months", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=200, help="rounds of a full training")
    parser.add_argument("--warm", type=int, nargs="+", default=[10, 20, 40],
                        help="rounds a warm start adds")
    parser.add_argument("--warm-eta", type=float, default=0.02,
                        help="learning rate of the added trees (the full training uses 0.1)")
    parser.add_argument("--shift", type=float, default=0.0,
                        help="drift of the new month and the holdout (0: same concept)")
    parser.add_argument("--nthread", type=int, default=1, help="threads, as one trial has")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import xgboost as xgb

    from retrain.candidates import xgb_params
    from retrain.evaluate import score
    from serve.features import FeatureSpec

    old = pd.concat([month(args.rows, m) for m in range(args.old_months)], ignore_index=True)
    new = month(args.rows, 100, args.shift)
    holdout = month(args.rows, 200, args.shift)
    both = pd.concat([old, new], ignore_index=True)
    names = tuple(c for c in old.columns if c != "label")
    spec = FeatureSpec.learn(both, names)
    params = xgb_params("classification", "auc", {"max_depth": 6, "eta": 0.1},
                        nthread=args.nthread, device="cpu", seed=0)

    def fit(frame: pd.DataFrame, rounds: int, start: bytes | None = None):
        chosen = params if start is None else {**params, "eta": args.warm_eta}
        began = time.perf_counter()
        dtrain = xgb.DMatrix(spec.frame(frame), frame["label"], enable_categorical=True,
                             nthread=args.nthread)
        base = None if start is None else xgb.Booster(model_file=bytearray(start))
        booster = xgb.train(chosen, dtrain, num_boost_round=rounds, xgb_model=base)
        return booster, time.perf_counter() - began

    x_holdout, y_holdout = spec.frame(holdout), holdout["label"].to_numpy()

    def auc(booster) -> float:
        return score("auc", y_holdout, booster.inplace_predict(x_holdout))

    champion, champion_s = fit(old, args.rounds)
    raw = bytes(champion.save_raw("ubj"))
    rows = [("champion (old months only)", champion_s, auc(champion), args.rounds)]
    full_times, full = [], None
    for _ in range(args.repeats):
        full, seconds = fit(both, args.rounds)
        full_times.append(seconds)
    full_s, full_auc = statistics.median(full_times), auc(full)
    rows.append(("full retrain (old + new)", full_s, full_auc, args.rounds))
    for data, which in ((new, "new"), (both, "all")):
        for k in args.warm:
            times, warm = [], None
            for _ in range(args.repeats):
                warm, seconds = fit(data, k, raw)
                times.append(seconds)
            rows.append((f"warm +{k}, rows: {which}", statistics.median(times), auc(warm), k))

    print(f"{args.old_months} old months + 1 new month of {args.rows:,} rows, 11 features; "
          f"holdout {len(holdout):,} rows; shift={args.shift}; warm eta={args.warm_eta}; "
          f"nthread={args.nthread}; "
          f"median of {args.repeats}")
    print(f"{'model':<28} {'rounds':>6} {'seconds':>8} {'time ratio':>10} {'AUC':>8} "
          f"{'AUC - full':>10}")
    for name, seconds, value, rounds in rows:
        print(f"{name:<28} {rounds:>6} {seconds:>8.2f} {seconds / full_s:>9.3f}x "
              f"{value:>8.4f} {value - full_auc:>+10.4f}")
    passing = [(name, s / full_s, v - full_auc) for name, s, v, _ in rows[2:]
               if s / full_s <= 0.2 and v - full_auc >= -0.002]
    verdict = ", ".join(f"{n} ({r:.3f}x, {d:+.4f})" for n, r, d in passing) or "none"
    print(f"target time <= 0.2x at AUC no more than 0.002 below full: met by {verdict}")


if __name__ == "__main__":
    main()
