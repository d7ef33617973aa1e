"""Leaks and row indexes named before they get into a model (pure; no Ray, no MLflow)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from retrain.suspects import suspicious_columns


def _frame(n: int = 4000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    late = (x + rng.normal(size=n) > 0).astype("int8")
    delay = np.where(late == 1, rng.uniform(16, 300, n), rng.uniform(-30, 15, n))
    return pd.DataFrame({
        "x": x,
        "noise": rng.normal(size=n),
        "arr_delay": delay,                    # defines the target: a leak
        "row": np.arange(n, dtype="int64"),    # an export's row index
        "tail": rng.choice([f"N{i}" for i in range(n)], n),  # id-like, no signal
        "late": late,
    })


def test_a_column_that_defines_the_target_and_a_row_index_are_named_with_the_fix():
    frame = _frame()
    found = suspicious_columns(frame, "late", ("x", "noise", "arr_delay", "row", "tail"),
                               "classification")
    assert [(s.column, s.kind) for s in found] == [("row", "index"), ("arr_delay", "leak")]
    leak = found[1].message()
    assert "AUC 1.000" in leak and "data.exclude: [arr_delay]" in leak
    assert "row index" in found[0].message()


def test_regression_leaks_use_the_rank_correlation():
    rng = np.random.default_rng(1)
    y = rng.normal(size=3000)
    frame = pd.DataFrame({"copy": y * 3 + 1, "x": y + rng.normal(size=3000) * 2, "y": y})
    found = suspicious_columns(frame, "y", ("copy", "x"), "regression")
    assert [(s.column, s.kind) for s in found] == [("copy", "leak")]


def test_honest_features_raise_nothing():
    frame = _frame().drop(columns=["arr_delay", "row"])
    assert suspicious_columns(frame, "late", ("x", "noise", "tail"), "classification") == []
