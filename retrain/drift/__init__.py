"""Data drift against a compact reference sketch of the training data.

When a model version is registered, `build_reference` condenses its training data into a
`ReferenceSketch` (a few KB per feature, JSON-safe) that is stored with the version. New data
partitions (before training) and live inputs are then compared against the sketch, never
against a stored copy of the raw training data:

- numeric features: PSI on equal-frequency reference bins, and a two-sample KS test evaluated
  at the reference's percentiles (where the reference CDF is stored exactly);
- categorical features: a chi-square test of homogeneity and the Jensen-Shannon distance over
  the reference's top-K categories, and the share of categories the reference never saw;
- every feature: the change of its missing rate.

A feature drifts when its test is significant after Benjamini-Hochberg across all features
*and* the effect is material (PSI or JS distance over a threshold), or when its missing rate
or unseen-category share moves past a limit. The effect-size condition matters: on millions of
rows every trivial difference is significant, and an alarm nobody acts on is noise.

New data is reduced to counts, vectorised: numeric columns are sorted in blocks of bounded
size and the reference quantiles looked up in them; categorical columns are tallied once.
Memory is one block plus the sketches. `StreamingDrift` adds the same counts up over a sliding
window of live rows.
"""

from __future__ import annotations

from retrain.drift.build import build_reference
from retrain.drift.detect import benjamini_hochberg, compare
from retrain.drift.report import DriftPolicy, DriftReport, FeatureDrift, Shares
from retrain.drift.sketch import OTHER, UNSEEN, CategoricalSketch, NumericSketch, ReferenceSketch
from retrain.drift.stream import StreamingDrift

__all__ = [
    "OTHER",
    "UNSEEN",
    "CategoricalSketch",
    "DriftPolicy",
    "DriftReport",
    "FeatureDrift",
    "NumericSketch",
    "ReferenceSketch",
    "Shares",
    "StreamingDrift",
    "benjamini_hochberg",
    "build_reference",
    "compare",
]
