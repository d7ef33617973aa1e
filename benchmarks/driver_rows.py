"""What a cycle's driver loads: every training row, or only the holdout (data-parallel trials).

When every trial trains data-parallel, `retrain.data.load_split(training_rows=False)` leaves
the training rows to the Ray Train workers: the driver reads the holdout, the categorical
columns (vocabularies) and the target (checked), and `retrain.pipeline` sketches the drift
reference from a uniform sample (`retrain.data.training_sample`). This script measures both
ways on the same partitioned Parquet, each in a fresh process (so peak memory is its own):

- ``all``: `load_split` as a cycle does when trials train in one process, then the drift
  reference from every training row;
- ``holdout``: `load_split(training_rows=False)`, then the reference from a sample of
  ``--sample`` rows (the pipeline's default is 1M).

Columns: wall seconds, peak resident memory (MiB, the process's own high-water mark
``VmHWM``; Linux only), and both as ratios of ``all``. The data is synthetic (``--rows``
rows over ``--partitions`` partitions, the newest one the holdout; 20 float32 features and
3 string categoricals).

Usage: python benchmarks/driver_rows.py [--rows 10000000] [--partitions 10] [--sample 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, ROOT)

NUMERIC = 20
CATEGORIES = {"c0": 8, "c1": 32, "c2": 100}

#: run in a fresh interpreter: argv = data folder, mode, sample rows; prints one JSON line
CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
from retrain.config import config_from_dict
from retrain.data import load_split, training_sample
from retrain.drift import build_reference

path, mode, sample = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = config_from_dict({{
    "project": {{"name": "bench", "workdir": path + "/work"}},
    "data": {{"path": path + "/data", "partition_column": "p", "target": "y"}},
    "task": {{"type": "classification", "metric": "auc"}},
}})
start = time.perf_counter()
split = load_split(config.data, "classification", training_rows=(mode == "all"))
if mode == "all":
    import pandas as pd
    frame = pd.concat([split.x_train, split.x_valid], ignore_index=True)
    frame["y"] = list(split.y_train) + list(split.y_valid)
else:
    frame, y = training_sample(config.data, "classification", split, sample)
    frame["y"] = y
reference = build_reference(frame, target="y")
wall = time.perf_counter() - start
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so it would count the parent's
# pages at the fork; VmHWM belongs to this process's own address space
peak = next(int(line.split()[1]) for line in open("/proc/self/status")
            if line.startswith("VmHWM:"))
print(json.dumps({{"wall": wall, "peak_mib": peak / 1024,
                   "train_rows": split.train_rows + split.valid_rows,
                   "holdout_rows": len(split.x_holdout), "reference_rows": reference.rows}}))
"""


def write_data(root: Path, rows: int, partitions: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    each = rows // partitions
    for p in range(1, partitions + 1):
        x = rng.normal(size=(each, NUMERIC)).astype("float32")
        frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(NUMERIC)])
        for name, levels in CATEGORIES.items():
            frame[name] = pd.Categorical.from_codes(
                rng.integers(0, levels, size=each), [f"{name}_{k}" for k in range(levels)])
        frame["y"] = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=each) > 0).astype("int8")
        folder = root / "data" / f"p={p}"
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False),
                       folder / "part-0.parquet", row_group_size=1_000_000)


def measure(root: Path, mode: str, sample: int) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD.format(root=ROOT), str(root), mode,
                           str(sample)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--partitions", type=int, default=10)
    parser.add_argument("--sample", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_data(root, args.rows, args.partitions)
        results = {mode: measure(root, mode, args.sample) for mode in ("all", "holdout")}
    base = results["all"]
    print(f"\n{args.rows:,} rows in {args.partitions} partitions (the newest is the holdout), "
          f"{NUMERIC} float32 + {len(CATEGORIES)} categorical features")
    print(f"{'driver loads':14} {'train rows':>11} {'reference rows':>15} {'wall s':>7} "
          f"{'ratio':>6} {'peak MiB':>9} {'ratio':>6}")
    for mode, r in results.items():
        print(f"{mode:14} {r['train_rows']:11,} {r['reference_rows']:15,} {r['wall']:7.1f} "
              f"{r['wall'] / base['wall']:5.2f}x {r['peak_mib']:9.0f} "
              f"{r['peak_mib'] / base['peak_mib']:5.2f}x")


if __name__ == "__main__":
    main()
