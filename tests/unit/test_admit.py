import numpy as np
import pandas as pd
import pytest

from retrain.admit import AdmissionPolicy, admit, admit_partition
from retrain.drift import DriftPolicy, build_reference


def _frame(n: int, seed: int, *, shift: float = 0.0, missing: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(loc=shift, size=n)
    x1[rng.uniform(size=n) < missing] = np.nan
    return pd.DataFrame({
        "x1": x1,
        "x2": rng.uniform(0, 10, n),
        "cat": rng.choice(["a", "b", "c"], n),
    })


REFERENCE = build_reference(_frame(20_000, 0))


def test_a_clean_partition_is_admitted():
    verdict = admit_partition("7", _frame(3000, 1), REFERENCE)
    assert verdict.status == "admitted" and not verdict.problems and not verdict.warnings
    assert verdict.drift is not None and not verdict.drift.dataset_drifted


def test_missing_column_is_quarantined_with_its_name():
    verdict = admit_partition("7", _frame(3000, 1).drop(columns="x2"), REFERENCE)
    assert verdict.status == "quarantined"
    assert verdict.problems == ("missing column(s) ['x2']",)


def test_wrong_dtype_is_quarantined():
    frame = _frame(3000, 1).assign(x2=lambda f: f["x2"].astype(str))
    verdict = admit_partition("7", frame, REFERENCE)
    assert verdict.status == "quarantined"
    assert "column 'x2' should be numeric" in verdict.problems[0]


def test_out_of_range_values_warn_by_default_and_quarantine_when_asked():
    frame = _frame(3000, 1)
    frame.loc[:99, "x2"] = 250.0  # 3.3 % of rows far above the reference's [0, 10]
    verdict = admit_partition("7", frame, REFERENCE)
    assert verdict.status == "warned"  # real data moves: out of range is not a defect
    assert any(w.startswith("x2: 3.3% of values outside the reference range")
               for w in verdict.warnings)
    verdict = admit_partition("7", frame, REFERENCE,
                              AdmissionPolicy(on_out_of_range="quarantine"))
    assert verdict.status == "quarantined"
    assert any(p.startswith("x2: 3.3% of values outside the reference range")
               for p in verdict.problems)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, 1e300])
def test_values_that_cannot_be_real_always_quarantine(bad):
    frame = _frame(3000, 1)
    frame.loc[:14, "x1"] = bad  # 0.5 %: under any out-of-range share
    lenient = AdmissionPolicy(on_drift="warn", on_out_of_range="warn",
                              max_out_of_range_share=0.5)
    verdict = admit_partition("7", frame, REFERENCE, lenient)
    assert verdict.status == "quarantined"
    assert verdict.problems == ("x1: 15 value(s) infinite or beyond 1e+30 (overflow or "
                                "sentinel values cannot be trained on)",)


def test_a_feature_gone_entirely_missing_quarantines():
    verdict = admit_partition("7", _frame(3000, 1).assign(x2=np.nan), REFERENCE,
                              AdmissionPolicy(on_drift="warn"))
    assert verdict.status == "quarantined"
    assert verdict.problems[0].startswith("x2: every value is missing")


def test_a_strong_shift_is_quarantined_and_a_mild_one_only_warns():
    strong = _frame(3000, 1, shift=2.0).assign(cat="c")
    # by default drift admits with a warning (it is information for the model) ...
    assert admit_partition("7", strong, REFERENCE).status == "warned"
    # ... and quarantines when the project asks for it
    verdict = admit_partition("7", strong, REFERENCE, AdmissionPolicy(on_drift="quarantine"))
    assert verdict.status == "quarantined"
    assert "distribution drift in" in verdict.problems[0]
    # one drifted feature of three stays under a 50 % drifted-share rule: a warning
    lenient = AdmissionPolicy(drift=DriftPolicy(max_drifted_share=0.5))
    mild = admit_partition("8", _frame(3000, 2, shift=0.6), REFERENCE, lenient)
    assert mild.status == "warned"
    assert mild.warnings and "x1" in mild.warnings[0]


def test_missing_rate_jump_is_reported():
    verdict = admit_partition("7", _frame(3000, 1, missing=0.4), REFERENCE,
                              AdmissionPolicy(on_drift="warn"))
    assert verdict.status == "warned"
    assert any("missing" in w for w in verdict.warnings)


def test_too_few_rows():
    verdict = admit_partition("7", _frame(10, 1), REFERENCE)
    assert verdict.status == "quarantined" and "fewer than min_rows=100" in verdict.problems[0]


def test_report_lists_admitted_and_quarantined_in_order():
    report = admit({"5": _frame(2000, 5), "6": _frame(2000, 6).drop(columns="cat")}, REFERENCE)
    assert report.admitted == ("5",) and report.quarantined == ("6",)
    assert report.to_dict()["quarantined"] == ["6"]
    assert "6: quarantined (missing column(s) ['cat'])" in report.summary()


def test_policy_is_validated():
    with pytest.raises(ValueError, match="min_rows must be >= 1"):
        AdmissionPolicy(min_rows=0)
