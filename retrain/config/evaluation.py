"""How challengers are judged (evaluation: metric, confidence, slices, guardrails) and how new
partitions are admitted (admission).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from retrain.config.base import _Section


class SliceConfig(_Section):
    """Groups of ``column`` whose primary metric must not regress against the champion."""

    column: str = Field(min_length=1)
    #: groups with fewer holdout rows are too noisy to judge and are skipped
    min_rows: int = Field(default=200, ge=1)
    #: largest allowed regression of a group's metric (in the metric's better direction)
    tolerance: float = Field(default=0.01, ge=0)


class GuardrailConfig(_Section):
    """Limits on serving cost; ratios are challenger / champion, measured in the same run."""

    max_latency_ratio: float | None = Field(default=2.0, gt=0)
    max_batch_latency_ratio: float | None = Field(default=2.0, gt=0)
    max_size_ratio: float | None = Field(default=10.0, gt=0)
    #: floors: a ratio is checked only when the challenger's value is above its floor (a
    #: 1.5 MB model ten times a 150 kB one, or 0.4 ms against 0.1 ms, costs nothing)
    min_latency_ms: float = Field(default=5.0, ge=0)
    min_batch_ms_per_1k: float = Field(default=50.0, ge=0)
    min_size_mb: float = Field(default=20.0, ge=0)
    #: absolute limits, also applied to the very first model
    max_latency_ms: float | None = Field(default=None, gt=0)
    max_size_mb: float | None = Field(default=None, gt=0)


class EvaluationConfig(_Section):
    #: value: the challenger's holdout score must reach this (for a lower-is-better metric:
    #: stay at or below it); with no champion yet it is the only bar besides the guardrails
    min_score: float | None = None
    #: superiority: promote only when the lower confidence bound of (challenger - champion),
    #: signed so that > 0 is better, exceeds this
    min_improvement: float = 0.0
    #: optional relative bar: the lower bound must also exceed this share of the champion's
    #: score (0.01 = 1 %)
    min_relative_improvement: float | None = Field(default=None, ge=0)
    #: non_inferiority: promote when the challenger is at most ``non_inferiority_margin`` worse
    #: (lower bound > -margin), e.g. to refresh a model on new data at no loss
    mode: Literal["superiority", "non_inferiority"] = "superiority"
    non_inferiority_margin: float = Field(default=0.0, ge=0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    bootstrap_samples: int = Field(default=1000, ge=100)
    #: fixed seed: the same data and models give the same decision
    seed: int = 0
    #: top trials (by validation score) scored on the holdout; intervals are Bonferroni-
    #: adjusted for the number of finalists, so picking the best of them stays honest
    finalists: int = Field(default=3, ge=1)
    slices: tuple[SliceConfig, ...] = ()
    guardrails: GuardrailConfig = GuardrailConfig()


class AdmissionConfig(_Section):
    """Checks on new partitions (those the champion never saw) before any training."""

    enabled: bool = True
    min_rows: int = Field(default=100, ge=1)
    #: numeric values may exceed the reference's [min, max] by this share of its range
    range_margin: float = Field(default=0.1, ge=0)
    max_out_of_range_share: float = Field(default=0.01, ge=0, lt=1)
    #: values outside that range warn (real data moves), or quarantine the partition;
    #: infinite, overflowing and entirely missing values always quarantine
    on_out_of_range: Literal["quarantine", "warn"] = "warn"
    #: a dataset-level distribution drift only warns (drift is information for the model and
    #: evidence for the drift trigger), or quarantines the partition
    on_drift: Literal["quarantine", "warn"] = "warn"
    psi_threshold: float = Field(default=0.2, gt=0)
    alpha: float = Field(default=0.01, gt=0, lt=1)
    #: the partition has drifted when more than this share of its features has
    max_drifted_share: float = Field(default=0.3, ge=0, lt=1)
    missing_rate_jump: float = Field(default=0.1, gt=0, le=1)

    def policy(self):
        from retrain.admit import AdmissionPolicy
        from retrain.drift import DriftPolicy

        return AdmissionPolicy(
            min_rows=self.min_rows, range_margin=self.range_margin,
            max_out_of_range_share=self.max_out_of_range_share, on_drift=self.on_drift,
            on_out_of_range=self.on_out_of_range,
            drift=DriftPolicy(psi_threshold=self.psi_threshold, alpha=self.alpha,
                              max_drifted_share=self.max_drifted_share,
                              missing_rate_jump=self.missing_rate_jump),
        )
