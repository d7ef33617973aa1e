"""Seeded tabular datasets written as hive-partitioned Parquet, for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def frame(n: int, seed: int, *, shift: float = 0.0) -> pd.DataFrame:
    """A binary target that depends on a numeric and a categorical feature.

    ``shift`` moves the decision boundary, so later partitions can drift away from earlier ones.
    """
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.uniform(0, 10, n)
    cat = rng.choice(["a", "b", "c"], n)
    logit = 1.5 * x1 - 0.3 * x2 + (cat == "b") * 1.0 + 1.0 + shift * (x2 - 5)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype("int8")
    return pd.DataFrame({"x1": x1, "x2": x2, "cat": cat, "label": y})


def write_partitions(
    root: Path, partitions: range | list[int], *, rows: int = 2000, seed: int = 0,
    shift: dict[int, float] | None = None, column: str = "period",
) -> Path:
    for p in partitions:
        folder = Path(root) / f"{column}={p}"
        folder.mkdir(parents=True, exist_ok=True)
        frame(rows, seed * 1000 + p, shift=(shift or {}).get(p, 0.0)).to_parquet(
            folder / "part-0.parquet", index=False
        )
    return Path(root)


def config_dict(data: Path, workdir: Path, **overrides) -> dict:
    """A small, fast project config over a synthetic dataset."""
    raw = {
        "project": {"name": "synthetic", "workdir": str(workdir)},
        "data": {"path": str(data), "partition_column": "period", "target": "label"},
        "task": {"type": "classification", "metric": "auc"},
        "search": {"num_samples": 4, "max_concurrent": 2, "num_boost_round": 20,
                   "report_every": 5, "seed": 1},
        "evaluation": {"min_score": 0.6},
    }
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    # XGBoost from scratch alone unless a test asks for more families: the window family
    # (on by default) would take half of a test's few trials
    families = raw["search"].setdefault("families", {})
    families.setdefault("xgboost_window", {"enabled": False})
    # whole holdout partitions judge, so tests count rows by partition; tests of the
    # default (the holdout's older half trains) ask for it
    raw["data"].setdefault("holdout_share", 1.0)
    return raw
