"""What the inference log costs an answer: ``score_request`` with and without the log append.

One process, no Ray: the replica's own request path (``serve.answer.score_request``: parse the body,
shape the features, predict) on many single-row requests, with and without
``InferenceLog.log_predictions`` after each. The log is real: a background thread writes
Parquet to a temporary folder while the requests run (so its work competes for the GIL and
the cores as it would in a replica). Blocks of the two paths alternate so that a busy
machine moves both alike; the table shows per-request medians, p99s and their ratio.

Usage: python benchmarks/inference_log_overhead.py [--requests 10000] [--blocks 10]
       [--flush-rows 5000] [--flush-interval 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pandas as pd
import xgboost as xgb

from serve.answer import score_request
from serve.features import FeatureSpec
from serve.inference_log import InferenceLog, read_predictions
from serve.loader import LoadedModel
from serve.scoring import Scorer


def make_model(seed: int = 0) -> LoadedModel:
    rng = np.random.default_rng(seed)
    n = 5000
    frame = pd.DataFrame({
        "x1": rng.normal(size=n), "x2": rng.uniform(0, 10, n),
        "x3": rng.normal(size=n), "cat": rng.choice(["a", "b", "c"], n),
    })
    label = (frame["x1"] + (frame["cat"] == "b") > 0.5).astype(int)
    spec = FeatureSpec.learn(frame, ("x1", "x2", "x3", "cat"))
    booster = xgb.train({"max_depth": 4, "objective": "binary:logistic", "nthread": 1},
                        xgb.DMatrix(spec.frame(frame), label, enable_categorical=True), 50)
    return LoadedModel(name="bench", version="1", task="classification", spec=spec,
                       booster=booster)


def bodies(n: int, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    def row() -> dict:
        return {"x1": float(rng.normal()), "x2": float(rng.uniform(0, 10)),
                "x3": float(rng.normal()), "cat": str(rng.choice(list("abc")))}

    return [{"dataframe_records": [row()]} for _ in range(n)]


def run_block(
    model: LoadedModel, block: list[dict], log: InferenceLog | None,
    scorer: Scorer | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Seconds per request for the whole path, and for the append alone (0 without a log).
    ``scorer``: the version's, made once as a replica makes it (one is made when None)."""
    scorer = scorer or Scorer(model)
    times, appends = np.empty(len(block)), np.zeros(len(block))
    for i, body in enumerate(block):
        start = time.perf_counter()
        rows, scores = score_request(model, body, 10_000, scorer)
        if log is not None:
            scored = time.perf_counter()
            log.log_predictions(request_id=f"r{i}", model_version=model.version,
                                spec=model.spec, frame=rows, predictions=scores)
            appends[i] = time.perf_counter() - scored
        times[i] = time.perf_counter() - start
    return times, appends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="per path")
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--flush-rows", type=int, default=5000)
    parser.add_argument("--flush-interval", type=float, default=5.0)
    args = parser.parse_args()

    model = make_model()
    scorer = Scorer(model)
    per_block = args.requests // args.blocks
    requests = bodies(per_block)
    run_block(model, requests[:200], None, scorer)  # warm-up: first calls pay lazy set-up
    with tempfile.TemporaryDirectory(prefix="inference-log-bench-") as folder:
        log = InferenceLog(folder, flush_rows=args.flush_rows,
                           flush_interval_s=args.flush_interval, max_buffer_rows=1_000_000)
        bare: list[np.ndarray] = []
        logged: list[np.ndarray] = []
        appended: list[np.ndarray] = []
        for b in range(args.blocks):
            # alternate which path goes first, so a drift in machine load hits both alike
            order = [(None, bare), (log, logged)] if b % 2 == 0 else [(log, logged), (None, bare)]
            for target_log, sink in order:
                times, appends = run_block(model, requests, target_log, scorer)
                sink.append(times)
                if target_log is not None:
                    appended.append(appends)
        started = time.perf_counter()
        log.close(timeout=60)
        close_s = time.perf_counter() - started
        stats = log.stats()
        written = len(read_predictions(folder))

    a, b = np.concatenate(bare) * 1e6, np.concatenate(logged) * 1e6
    c = np.concatenate(appended) * 1e6
    print(f"{len(a)} single-row requests per path, {args.blocks} alternating blocks; "
          f"flush_rows={args.flush_rows}, flush_interval_s={args.flush_interval}")
    print(f"{'path':<26}{'median us':>11}{'mean us':>10}{'p99 us':>10}")
    for name, t in (("score_request", a), ("score_request + log", b)):
        print(f"{name:<26}{np.median(t):>11.1f}{t.mean():>10.1f}{np.percentile(t, 99):>10.1f}")
    print(f"{'  of which the append':<26}{np.median(c):>11.1f}{c.mean():>10.1f}"
          f"{np.percentile(c, 99):>10.1f}")
    print(f"{'ratio (logged / bare)':<26}{np.median(b) / np.median(a):>11.3f}"
          f"{b.mean() / a.mean():>10.3f}{np.percentile(b, 99) / np.percentile(a, 99):>10.3f}")
    print(f"{'append / score_request':<26}{np.median(c) / np.median(a):>11.3f}"
          f"{c.mean() / a.mean():>10.3f}")
    print(f"log: {stats.predictions_written} rows in {stats.files_written} files "
          f"({written} read back), dropped {stats.rows_dropped}, final flush {close_s:.3f}s, "
          f"last error {stats.last_error}")


if __name__ == "__main__":
    main()
