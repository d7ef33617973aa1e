"""The demo's pieces that need no Ray: the `why` column from real decisions, the rows its
load sends, and the port check that runs before any training."""

from __future__ import annotations

import socket

import numpy as np
import pandas as pd
import pytest

from retrain.config import EvaluationConfig, GuardrailConfig, SliceConfig
from retrain.demo import FEATURES, ArrivingRows, run_demo, why
from retrain.errors import ConfigError
from retrain.evaluate import Footprint
from tests.unit.test_decide import FAST, RNG, N, _decide, _scores


def test_why_names_the_failed_guardrail_of_a_reject():
    big = Footprint(single_row_ms=1.0, batch_ms_per_1k=5.0, size_bytes=1_004_000)
    # the demo's months 10 and 11 before the size floor: 1.45 MB against 145 kB
    policy = EvaluationConfig(guardrails=GuardrailConfig(max_size_ratio=10.0, min_size_mb=0))
    decision, _ = _decide(_scores(1.5, 1), _scores(0.8, 2), policy, footprints=(big, FAST))
    assert decision.verdict.value == "reject"
    assert why(decision) == "size ratio 10.04x > 10x"


def test_why_says_the_interval_includes_zero_when_the_evidence_is_missing():
    champion = _scores(1.0, 3)
    challenger = np.clip(champion + RNG.normal(scale=0.01, size=N), 0, 1)
    decision, comparison = _decide(challenger, champion)
    assert decision.verdict.value == "keep"
    assert comparison.difference.low <= 0 <= comparison.difference.high
    assert why(decision) == "interval includes 0"


def test_why_gives_the_lower_bound_of_a_promotion_and_of_a_too_small_gain():
    decision, comparison = _decide(_scores(1.5, 1), _scores(0.8, 2))
    assert decision.verdict.value == "promote"
    assert why(decision) == f"lower bound {comparison.difference.low:+.4f} > +0.0000"
    policy = EvaluationConfig(min_improvement=0.5)
    decision, comparison = _decide(_scores(1.5, 1), _scores(0.8, 2), policy)
    assert decision.verdict.value == "keep" and comparison.difference.low > 0
    assert why(decision) == f"lower bound {comparison.difference.low:+.4f} <= +0.5000"


def test_why_names_a_regressed_slice_and_the_first_model():
    policy = EvaluationConfig(slices=(SliceConfig(column="region", min_rows=100,
                                                   tolerance=0.01),))
    decision, _ = _decide(_scores(3.0, 4, east=1.0), _scores(1.2, 5), policy)
    assert decision.verdict.value == "reject"
    assert why(decision).startswith("slice region=east -0.")
    assert why(decision).endswith(" past -0.0100")
    first, _ = _decide(_scores(1.5, 1), None, EvaluationConfig(min_score=0.6))
    assert why(first).startswith("first model: auc 0.") and why(first).endswith(">= 0.6000")


def test_the_load_sends_real_rows_of_the_newest_month():
    rows = ArrivingRows(seed=1)
    month = pd.DataFrame({name: range(5) for name in FEATURES}).astype("float64")
    month["carrier"] = pd.array(["UA", "AA", None, "DL", "B6"], dtype="string")
    month.loc[1, "temp"] = np.nan
    rows.arrive(month)
    seen = [rows.body()["dataframe_split"] for _ in range(200)]
    assert all(s["columns"] == FEATURES and len(s["data"]) == 1 for s in seen)
    sent = {tuple(s["data"][0]) for s in seen}
    assert len(sent) == 5  # every row of the month, not one replayed body
    by_distance = {row[FEATURES.index("distance")]: row for row in sent}
    assert by_distance[1.0][FEATURES.index("temp")] is None  # missing stays missing (JSON null)
    assert by_distance[2.0][FEATURES.index("carrier")] is None
    later = month.assign(distance=month["distance"] + 100)
    rows.arrive(later)
    assert all(rows.body()["dataframe_split"]["data"][0][FEATURES.index("distance")] >= 100
               for _ in range(50))


def test_a_taken_port_stops_the_demo_before_anything_is_written(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"cannot serve on 127.0.0.1:{port}.*--port"):
            run_demo(tmp_path / "demo", port=port)
    assert not (tmp_path / "demo").exists()
