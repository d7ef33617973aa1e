"""A drift check against a reference sketch versus the raw-data baseline, in one run.

Same seeded data for both: a reference frame and a new frame of ``--rows`` rows and
``--features`` features (90% numeric, 10% categorical), the new frame with a few injected
shifts (a mean shift, a variance change, a missing-rate jump, a trivial shift, a new category,
changed category frequencies).

- sketch: ``retrain.drift.build_reference`` once (timed apart: it runs at registration), then
  ``retrain.drift.compare(sketch, new)``, which never sees the raw reference;
- baseline: pandas + scipy on the raw reference kept in memory, per column:
  ``scipy.stats.ks_2samp`` (numeric, NaN dropped) and ``scipy.stats.chi2_contingency`` on
  the two value counts (categorical); a feature drifts at p < 0.01.

Reports wall seconds, peak extra memory during each step (tracemalloc: numpy buffers and
Python objects allocated by the step, not the frames that exist before it), the state each
path keeps between registration and check, and the features each found.

Usage: python benchmarks/drift_check.py [--rows 1000000] [--features 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from retrain.drift import build_reference, compare

ALPHA = 0.01


def make_frames(rows: int, features: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    rng = np.random.default_rng(seed)
    n_cat = max(1, features // 10)
    n_num = features - n_cat
    vocab = [f"v{i:02d}" for i in range(50)]
    zipf = 1 / np.arange(1, 51)
    zipf /= zipf.sum()

    def frame() -> pd.DataFrame:
        columns: dict[str, Any] = {}
        for i, x in enumerate(rng.standard_normal((n_num, rows))):
            columns[f"f{i}"] = x
        for j in range(n_cat):
            codes = rng.choice(50, size=rows, p=zipf).astype(np.int8)
            columns[f"c{j}"] = pd.Categorical.from_codes(codes, categories=vocab)
        return pd.DataFrame(columns, copy=False)

    reference, new = frame(), frame()
    shifts: dict[str, str] = {}
    mask = rng.random(rows)
    if n_num >= 4:
        new["f0"] += 0.5
        new["f1"] *= 2.0
        new.loc[mask < 0.3, "f2"] = np.nan
        new["f3"] += 0.02
        shifts |= {"f0": "mean +0.5 sd", "f1": "sd x2", "f2": "30% missing",
                   "f3": "mean +0.02 sd (trivial)"}
    if n_cat >= 2:
        c0 = new["c0"].astype("object")
        c0[mask > 0.8] = "new-category"
        new["c0"] = pd.Categorical(c0)
        uniform = rng.integers(0, 50, rows).astype(np.int8)
        mixed = np.where(rng.random(rows) < 0.5, uniform, new["c1"].cat.codes.to_numpy())
        new["c1"] = pd.Categorical.from_codes(mixed, categories=vocab)
        shifts |= {"c0": "new category in 20% of rows", "c1": "half the rows uniform"}
    return reference, new, shifts


def baseline(reference: pd.DataFrame, new: pd.DataFrame) -> list[str]:
    drifted = []
    for name in reference.columns:
        if isinstance(reference[name].dtype, pd.CategoricalDtype):
            ref = reference[name].astype("object").value_counts()
            cur = new[name].astype("object").value_counts()
            table = pd.concat([ref, cur], axis=1).fillna(0).to_numpy().T
            p = stats.chi2_contingency(table).pvalue
        else:
            p = stats.ks_2samp(reference[name].dropna(), new[name].dropna()).pvalue
        if p < ALPHA:
            drifted.append(name)
    return drifted


def measure(step: Callable[[], Any]) -> tuple[Any, float, float]:
    """Result, wall seconds and peak extra MiB (tracemalloc) of one step."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    result = step()
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, seconds, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    reference, new, shifts = make_frames(args.rows, args.features, args.seed)
    print(f"data: 2 x {args.rows:,} rows x {args.features} features "
          f"({time.perf_counter() - start:.1f} s to generate); injected shifts: {shifts}")

    sketch, build_s, build_mib = measure(lambda: build_reference(reference))
    sketch_bytes = len(json.dumps(sketch.to_dict()).encode())
    raw_bytes = int(reference.memory_usage(deep=True).sum())

    report, sketch_s, sketch_mib = measure(lambda: compare(sketch, new))
    start = time.perf_counter()
    compare(sketch, new)  # again without tracemalloc: its bookkeeping costs little here
    sketch_untraced_s = time.perf_counter() - start
    found_base, base_s, base_mib = measure(lambda: baseline(reference, new))

    def names(found: list[str] | tuple[str, ...]) -> str:
        return ", ".join(found) if len(found) <= 12 else f"{len(found)} features"

    rows = [
        ("build reference sketch (once)", build_s, build_mib, f"{sketch_bytes / 1024:.0f} KiB",
         ""),
        ("drift check on the sketch", sketch_s, sketch_mib, f"{sketch_bytes / 1024:.0f} KiB",
         names(report.drifted)),
        ("baseline ks_2samp/chi2 on raw", base_s, base_mib, f"{raw_bytes / 2**20:.0f} MiB",
         names(found_base)),
    ]
    print()
    print(f"| step | wall s | peak extra MiB | state kept | drifted found (p < {ALPHA}) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for label, seconds, mib, state, found in rows:
        print(f"| {label} | {seconds:.2f} | {mib:.0f} | {state} | {found} |")
    print()
    print(f"speed ratio, baseline / sketch check: {base_s / sketch_s:.1f}x "
          f"(sketch check without tracemalloc: {sketch_untraced_s:.2f} s)")
    print(f"dataset drifted (sketch): {report.dataset_drifted} "
          f"({report.drifted_share:.0%} of features)")
    for feature in report.features:
        if feature.name in shifts:
            print(f"  {feature.name} [{shifts[feature.name]}]: "
                  f"{'DRIFTED' if feature.drifted else 'ok'} - {feature.reason}")


if __name__ == "__main__":
    main()
