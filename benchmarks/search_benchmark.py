"""Parallel search through retrain vs sequential Optuna vs scikit-learn's RandomizedSearchCV.

One run, same data, same search space (retrain's default XGBoost space), same seed, same
trial budget and boosting rounds (issue #6):

- retrain: `retrain.search.run_search` on a local Ray runtime this script starts with
  ``num_cpus=2``: 2 concurrent trials of 1 XGBoost thread each, OptunaSearch (TPE); without
  pruning, and with ASHA;
- Optuna: one trial at a time with 2 XGBoost threads (TPE, same seed), the training matrices
  built once; without pruning, and with `optuna.pruners.SuccessiveHalvingPruner` on the same
  rungs as ASHA (``grace_period x report_every`` rounds, reduction factor 2);
- scikit-learn: ``RandomizedSearchCV(XGBClassifier(n_jobs=1), n_jobs=-1)`` over the same
  ranges with a fixed validation split (`PredefinedSplit`), no refit.

Columns: wall seconds; best validation AUC of a fully trained trial; time until the first fully
trained model at or above the target score (default: the best score of sequential Optuna
without pruning minus ``--tolerance``); and core utilisation U = sum of trial training
seconds x threads per trial / (wall x cores), where a trial's training seconds are its own
(matrix construction and boosting, without waiting on the tuner). Ratios are against
sequential Optuna under the same pruning (wall) and without pruning (time to target).

The retrain wall is ``run_search`` end to end (Tune's set-up, putting the data into the object
store, every trial, collecting results); starting Ray itself (seconds, once per process) is
not in it. Targets from issue #6: U >= 0.9; wall <= 0.8x sequential Optuna under the same
pruning; with early stopping, time to target <= 0.4x sequential Optuna without pruning.

Usage: python benchmarks/search_benchmark.py [--rows 1000000] [--trials 16] [--rounds 100]
       [--report-every 10] [--seed 0] [--only retrain-asha optuna-sh ...]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

CORES = 2
GRACE, REDUCTION = 2, 2  # ASHA / successive halving, in reports


def make_data(rows: int, seed: int):
    """A seeded binary task with interactions, a non-linear term and a categorical effect;
    the newest 20 % of rows validate."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 10)).astype("float32")
    cat = rng.choice(list("abcdefgh"), rows)
    logit = (x[:, 0] - 0.5 * x[:, 1] + 0.6 * x[:, 2] * x[:, 3] + 1.0 * (cat == "c")
             + 0.8 * np.sin(2 * x[:, 4]) + 0.4 * np.abs(x[:, 5]) - 0.3 * x[:, 6] * x[:, 7])
    y = (rng.uniform(size=rows) < 1 / (1 + np.exp(-logit))).astype("int8")
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(10)])
    frame["cat"] = pd.Categorical(cat, categories=list("abcdefgh"))
    cut = int(rows * 0.8)
    return frame.iloc[:cut].reset_index(drop=True), y[:cut], \
        frame.iloc[cut:].reset_index(drop=True), y[cut:]


@dataclass(frozen=True)
class Outcome:
    name: str
    wall: float
    #: (seconds since start, final score) of every fully trained trial
    finished: tuple[tuple[float, float], ...]
    #: sum over trials of training seconds x threads
    busy: float
    trials: int
    pruned: int
    #: seconds from the start until the first trial began training (retrain: Tune's set-up
    #: and the trial actors' start)
    startup: float = 0.0

    @property
    def best(self) -> float:
        return max((s for _, s in self.finished), default=float("nan"))

    def time_to(self, target: float) -> float | None:
        return min((t for t, s in self.finished if s >= target), default=None)

    @property
    def utilisation(self) -> float:
        return self.busy / (self.wall * CORES)


def run_retrain(name: str, data, args, space, early_stopping: bool, root: Path) -> Outcome:
    import retrain
    from retrain.search import TrainData, run_search

    config = retrain.config_from_dict({
        "project": {"name": "bench", "workdir": str(root / name)},
        "data": {"path": str(root), "partition_column": "p", "target": "y"},
        "task": {"type": "classification", "metric": "auc"},
        "search": {"num_samples": args.trials, "max_concurrent": CORES,
                   "num_boost_round": args.rounds, "report_every": args.report_every,
                   "seed": args.seed, "early_stopping": early_stopping,
                   "asha": {"grace_period": GRACE, "reduction_factor": REDUCTION},
                   "space": space},
        "resources": {"cpus_per_trial": 1},
    })
    start = time.time()
    result = run_search(config, TrainData(*data), name=name)
    wall = time.time() - start
    finished = tuple((t.history[-1]["at"] - start, t.score) for t in result.trials
                     if t.status == "completed")
    busy = sum(t.history[-1]["trained"] for t in result.trials if t.history)
    startup = min(t.history[0]["at"] - t.history[0]["trained"] for t in result.trials
                  if t.history) - start
    return Outcome(name, wall, finished, busy, len(result.trials), result.count("stopped"),
                   startup)


def run_optuna(name: str, data, args, space, pruning: bool) -> Outcome:
    import optuna
    import xgboost as xgb

    from retrain.candidates import _suggest, xgb_params
    from retrain.config import ParamRange

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    x_train, y_train, x_valid, y_valid = data
    start = time.time()
    dtrain = xgb.DMatrix(x_train, y_train, enable_categorical=True, nthread=CORES)
    dvalid = xgb.DMatrix(x_valid, y_valid, enable_categorical=True, nthread=CORES)
    busy = [(time.time() - start) * CORES]
    finished = []
    every = args.report_every

    def objective(trial):
        began = time.time()
        params = {k: _suggest(trial, k, v) if isinstance(v, ParamRange) else v
                  for k, v in space.items()}
        params = xgb_params("classification", "auc", params, nthread=CORES, device="cpu",
                            seed=args.seed)

        class Report(xgb.callback.TrainingCallback):
            # scores where it reports, as retrain's trials do (not every round)
            def after_iteration(self, model, epoch, evals_log) -> bool:
                done = epoch + 1
                if pruning and done % every == 0 and done != args.rounds:
                    trial.report(_auc(model, dvalid, epoch), step=done)
                    if trial.should_prune():
                        busy.append((time.time() - began) * CORES)
                        raise optuna.TrialPruned()
                return False

        booster = xgb.train(params, dtrain, args.rounds, callbacks=[Report()])
        value = _auc(booster, dvalid, args.rounds - 1)
        now = time.time()
        busy.append((now - began) * CORES)
        finished.append((now - start, value))
        return value

    pruner = (optuna.pruners.SuccessiveHalvingPruner(
        min_resource=GRACE * every, reduction_factor=REDUCTION, min_early_stopping_rate=0)
        if pruning else optuna.pruners.NopPruner())
    study = optuna.create_study(direction="maximize", pruner=pruner,
                                sampler=optuna.samplers.TPESampler(seed=args.seed))
    study.optimize(objective, n_trials=args.trials)
    wall = time.time() - start
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    return Outcome(name, wall, tuple(finished), sum(busy), len(study.trials), pruned)


def _auc(model, dvalid, epoch: int) -> float:
    return float(model.eval(dvalid, "valid", epoch).rsplit(":", 1)[1])


def _distribution(entry):
    from scipy import stats

    if entry.type == "categorical":
        return list(entry.choices)
    if entry.type == "int":
        return stats.randint(int(entry.low), int(entry.high) + 1)
    if entry.log:
        return stats.loguniform(entry.low, entry.high)
    return stats.uniform(entry.low, entry.high - entry.low)


class _TimedAuc:
    """A scorer that also appends (unix time, score) to a file: the scoring happens in
    joblib's worker processes, and this is how the finishing times come back."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, estimator, x, y) -> float:
        from sklearn.metrics import roc_auc_score

        value = float(roc_auc_score(y, estimator.predict_proba(x)[:, 1]))
        with open(self.path, "a") as out:
            out.write(f"{time.time()} {value}\n")
        return value


def run_sklearn(name: str, data, args, space, root: Path) -> Outcome:
    from sklearn.model_selection import PredefinedSplit, RandomizedSearchCV
    from xgboost import XGBClassifier

    from retrain.config import ParamRange

    x_train, y_train, x_valid, y_valid = data
    x = pd.concat([x_train, x_valid], ignore_index=True)
    y = np.concatenate([y_train, y_valid])
    fold = np.r_[np.full(len(x_train), -1), np.zeros(len(x_valid), dtype=int)]
    renamed = {"eta": "learning_rate", "lambda": "reg_lambda", "alpha": "reg_alpha"}
    searched = {renamed.get(k, k): _distribution(v) for k, v in space.items()
                if isinstance(v, ParamRange)}
    fixed = {renamed.get(k, k): v for k, v in space.items() if not isinstance(v, ParamRange)}
    log = root / f"{name}.scores"
    search = RandomizedSearchCV(
        XGBClassifier(n_estimators=args.rounds, tree_method="hist", enable_categorical=True,
                      n_jobs=1, random_state=args.seed, **fixed),
        searched, n_iter=args.trials, scoring=_TimedAuc(str(log)),
        cv=PredefinedSplit(fold), n_jobs=-1, refit=False, random_state=args.seed,
    )
    start = time.time()
    search.fit(x, y)
    wall = time.time() - start
    lines = [line.split() for line in log.read_text().splitlines()]
    finished = tuple((float(t) - start, float(s)) for t, s in lines)
    cv = search.cv_results_
    busy = float(np.sum(cv["mean_fit_time"]) + np.sum(cv["mean_score_time"]))
    return Outcome(name, wall, finished, busy, args.trials, 0)


def table(outcomes: dict[str, Outcome], target: float) -> str:
    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}x" if a is not None and b else "-"

    plain, sh = outcomes.get("optuna"), outcomes.get("optuna-sh")
    lines = [f"{'':22} {'wall s':>7} {'wall ratio':>10} {'best AUC':>9} {'to target s':>11} "
             f"{'ratio':>6} {'U':>5} {'trials':>6} {'pruned':>6}"]
    for name, o in outcomes.items():
        base = sh if name.endswith(("-asha", "-sh")) else plain
        reach = o.time_to(target)
        lines.append(
            f"{name:22} {o.wall:7.1f} {ratio(o.wall, base.wall if base else None):>10} "
            f"{o.best:9.5f} {(f'{reach:.1f}' if reach is not None else 'never'):>11} "
            f"{ratio(reach, plain.time_to(target) if plain else None):>6} "
            f"{o.utilisation:5.2f} {o.trials:6d} {o.pruned:6d}")
    return "\n".join(lines)


def verdicts(outcomes: dict[str, Outcome], target: float) -> list[str]:
    """Issue #6's targets, each met or missed, for the runs that were made."""
    lines = []
    for name, peer in (("retrain", "optuna"), ("retrain-asha", "optuna-sh")):
        if name in outcomes:
            u = outcomes[name].utilisation
            lines.append(f"target U >= 0.9 ({name}): {u:.2f} {'met' if u >= 0.9 else 'MISSED'}")
        if name in outcomes and peer in outcomes:
            r = outcomes[name].wall / outcomes[peer].wall
            lines.append(f"target wall <= 0.8x {peer} ({name}): {r:.2f}x "
                         f"{'met' if r <= 0.8 else 'MISSED'}")
    if "retrain-asha" in outcomes and "optuna" in outcomes:
        ours, theirs = outcomes["retrain-asha"], outcomes["optuna"]
        a, b = ours.time_to(target), theirs.time_to(target)
        same = ours.best >= theirs.best
        r = a / b if a is not None and b else None
        shown = f"{r:.2f}x" if r is not None else "not reached"
        ok = r is not None and r <= 0.4 and same
        lines.append(f"target time to target <= 0.4x optuna at the same best score "
                     f"(retrain-asha): {shown}, best {ours.best:.5f} vs {theirs.best:.5f} "
                     f"{'met' if ok else 'MISSED'}")
    return lines


RUNS = ("retrain-asha", "optuna-sh", "retrain", "optuna", "sklearn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--report-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.0005,
                        help="target = best of sequential Optuna without pruning - this")
    parser.add_argument("--target", type=float, default=None, help="a fixed target score")
    parser.add_argument("--only", nargs="+", choices=RUNS, default=list(RUNS))
    parser.add_argument("--show-trials", action="store_true",
                        help="also list each method's finished trials (seconds, score)")
    args = parser.parse_args()

    import ray

    from retrain.config import SearchConfig
    from retrain.runtime import quiet_defaults

    quiet_defaults()
    space = dict(SearchConfig().space)
    data = make_data(args.rows, args.seed)
    ray.init(num_cpus=CORES, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    outcomes: dict[str, Outcome] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for name in args.only:
                if name.startswith("retrain"):
                    o = run_retrain(name, data, args, space, name.endswith("asha"), root)
                elif name.startswith("optuna"):
                    o = run_optuna(name, data, args, space, name.endswith("-sh"))
                else:
                    o = run_sklearn(name, data, args, space, root)
                outcomes[name] = o
                print(f"  {name}: wall {o.wall:.1f}s best {o.best:.5f} U {o.utilisation:.2f}",
                      flush=True)
    finally:
        ray.shutdown()
    target = args.target
    if target is None:
        target = outcomes["optuna"].best - args.tolerance if "optuna" in outcomes \
            else min(o.best for o in outcomes.values())
    load = os.getloadavg()[0]
    print(f"\n{args.trials} trials x {args.rounds} rounds (report every {args.report_every}) "
          f"on {args.rows:,} rows x 11 features, {CORES} cores; target AUC {target:.5f}; "
          f"load average at the end {load:.1f}")
    print(table(outcomes, target))
    for line in verdicts(outcomes, target):
        print(line)
    for name, o in outcomes.items():
        if o.startup:
            print(f"{name}: first trial began training {o.startup:.1f}s after the search "
                  "started (Tune set-up, trial actors starting and importing)")
        if args.show_trials:
            print(f"{name} finished: " + ", ".join(f"{t:.1f}s {v:.5f}"
                                                   for t, v in sorted(o.finished)))
    if not math.isfinite(target):
        print("no method finished a trial")


if __name__ == "__main__":
    main()
