"""The admission page: pure rendering from an AdmissionReport (no Ray, no MLflow)."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pandas as pd
import pytest

from retrain.admission_report import render_admission_report
from retrain.admit import AdmissionPolicy, AdmissionReport, admit, admit_partition
from retrain.drift import OTHER, UNSEEN, build_reference, compare


def _frame(n: int, seed: int, *, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "x1": rng.normal(loc=shift, size=n),
        "x2": rng.uniform(0, 10, n),
        "cat": rng.choice(["a", "b", "c"], n),
    })


REFERENCE = build_reference(_frame(20_000, 0))


def _plotted(page: str) -> list[tuple[str, str]]:
    """(partition, feature) of every plot figure on the page, unescaped."""
    return [(html.unescape(p), html.unescape(f))
            for p, f in re.findall(r'<figure data-partition="([^"]*)" data-feature="([^"]*)">',
                                   page)]


def test_a_drifted_partition_gets_one_plot_per_drifted_feature_and_none_for_stable_ones():
    drifted = _frame(3000, 1, shift=2.0).assign(cat="c")  # x1 and cat move, x2 does not
    report = admit({"5": drifted, "6": _frame(3000, 2)}, REFERENCE)
    verdict = report.partitions[0]
    assert verdict.drift is not None and set(verdict.drift.drifted) == {"x1", "cat"}
    page = render_admission_report(report, title="cycle 1")
    assert sorted(_plotted(page)) == [("5", "cat"), ("5", "x1")]
    # each figure holds one inline PNG, and no other image is on the page
    assert page.count('src="data:image/png;base64,') == 2
    assert "No feature drifted: nothing to plot." in page  # partition 6


def test_quarantine_reasons_and_what_quarantine_means_appear():
    out_of_range = _frame(3000, 1)
    out_of_range.loc[:99, "x2"] = 250.0
    report = admit({"7": out_of_range, "8": _frame(3000, 2).drop(columns="cat")}, REFERENCE,
                   AdmissionPolicy(on_out_of_range="quarantine"))
    assert report.quarantined == ("7", "8")
    page = render_admission_report(report, title="t", record="/work/quarantine.jsonl")
    for verdict in report.partitions:
        for problem in verdict.problems:
            assert html.escape(problem) in page
    assert "outside the reference range" in page and "missing column(s)" in page
    assert "left on disk" in page and "How to re-admit" in page and "retrain readmit" in page
    assert "<code>/work/quarantine.jsonl</code>" in page
    assert page.count('<span class="status quarantined">quarantined</span></h2>') == 2
    # no columns to compare for 8, and x2's range problem is no distribution drift for 7
    assert "Distribution not checked" in page
    assert _plotted(page) == []


def test_odd_column_names_and_categories_are_escaped_in_text_and_safe_in_plots():
    odd = '<script>alert("x")</script> & $\\frac$'  # $...$ would be mathtext in matplotlib
    frame = _frame(20_000, 0).rename(columns={"x1": odd})
    reference = build_reference(frame)
    new = _frame(3000, 1, shift=2.0).rename(columns={"x1": odd}).assign(cat="<b>new</b>")
    report = admit({'p="1"<i>': new}, reference, AdmissionPolicy(on_drift="warn"))
    assert report.partitions[0].status == "warned"
    page = render_admission_report(report, title="<title> & co",
                                   reference={"<k>": "<v>"})
    assert "<script>" not in page and "<b>new</b>" not in page and 'p="1"<i>' not in page
    assert html.escape(odd) in page and "&lt;title&gt; &amp; co" in page
    assert "&lt;k&gt;" in page
    assert sorted(_plotted(page)) == sorted([('p="1"<i>', "cat"), ('p="1"<i>', odd)])


def test_an_admitted_only_report_renders_without_plots_or_problems():
    report = admit({"3": _frame(3000, 3), "4": _frame(3000, 4)}, REFERENCE)
    assert report.admitted == ("3", "4") and not report.quarantined
    page = render_admission_report(report, title="quiet month", policy=AdmissionPolicy(),
                                   reference={"champion version": "2"})
    assert "2 new partition(s): 2 admitted, 0 admitted with warnings, 0 quarantined" in page
    assert "Why it was quarantined" not in page and _plotted(page) == []
    assert "on_drift" in page and "champion version" in page
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")


def test_an_empty_report_says_there_was_nothing_to_judge():
    page = render_admission_report(AdmissionReport(()), title="t")
    assert "No new partitions: nothing to judge." in page


def test_a_feature_without_values_on_one_side_still_gets_its_plot():
    new = _frame(3000, 1).assign(x2=np.nan)  # all missing: no distribution, a missing-rate jump
    verdict = admit_partition("9", new, REFERENCE, AdmissionPolicy(on_drift="warn"))
    # a feature gone entirely missing is an integrity failure, and its plot still shows why
    assert verdict.status == "quarantined" and "every value is missing" in verdict.problems[0]
    (x2,) = [f for f in verdict.drift.features if f.name == "x2"]
    assert x2.drifted and x2.shares is None and x2.causes == ("missing_rate",)
    page = render_admission_report(AdmissionReport((verdict,)), title="t")
    assert _plotted(page) == [("9", "x2")]


# The shares drift.py carries for these plots -----------------------------------------------


def test_numeric_shares_are_the_reference_bins_and_sum_to_one():
    rng = np.random.default_rng(5)
    ref = pd.DataFrame({"x": rng.normal(size=5000), "d": np.floor(rng.normal(size=5000) * 2)})
    reference = build_reference(ref)
    new = pd.DataFrame({"x": rng.normal(1.0, size=2000), "d": np.floor(rng.normal(size=2000))})
    for feature in compare(reference, new).features:
        sketch, shares = reference.features[feature.name], feature.shares
        assert shares is not None and shares.edges == sketch.edges
        assert len(shares.reference) == len(shares.new) == len(sketch.edges) + 1
        assert shares.reference == pytest.approx(sketch.shares)
        assert sum(shares.new) == pytest.approx(1.0)
    # the new shares are those of the new values over the reference's bins
    x = compare(reference, new).features[0].shares
    edges = np.array(reference.features["x"].edges)
    expected = np.bincount(np.searchsorted(edges, new["x"], side="left"),
                           minlength=len(edges) + 1) / len(new)
    assert x.new == pytest.approx(expected.tolist())


def test_categorical_shares_keep_the_largest_categories_and_pool_the_rest():
    rng = np.random.default_rng(6)
    reference = build_reference(pd.DataFrame({"c": rng.integers(0, 60, 6000).astype(str)}))
    new = pd.DataFrame({"c": np.r_[np.full(1000, "59"), np.full(500, "new"),
                                   rng.integers(0, 60, 1500).astype(str)]})
    (feature,) = compare(reference, new).features
    shares = feature.shares
    assert len(shares.categories) == 22 and shares.categories[-2:] == (OTHER, UNSEEN)
    assert "59" in shares.categories  # surged in the new data, so shown
    assert sum(shares.reference) == pytest.approx(1.0) and sum(shares.new) == pytest.approx(1.0)
    assert shares.new[-1] == pytest.approx(500 / 3000) and shares.reference[-1] == 0.0
    data = json.loads(json.dumps(feature.to_dict(), allow_nan=False))
    assert data["shares"]["categories"][-1] == UNSEEN
