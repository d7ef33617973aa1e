"""Data admission: each new partition is checked against the champion's reference sketch
before any training, and admitted, admitted with warnings, or quarantined.

Checks: row count, schema (every feature present, numeric stays numeric), value ranges
against the reference's min/max, missing rates, unseen categories and the distribution
(`retrain.drift`, with Benjamini-Hochberg across features). Pure: frames and sketches in,
an `AdmissionReport` out. Quarantine is a record, never a deletion: the files stay where
they are and the cycle simply does not read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from retrain.drift import DriftPolicy, DriftReport, NumericSketch, ReferenceSketch, compare
from retrain.errors import InvalidValueError

Status = Literal["admitted", "warned", "quarantined"]


@dataclass(frozen=True, kw_only=True)
class AdmissionPolicy:
    min_rows: int = 100
    #: a numeric value is out of range beyond the reference's [min, max] widened by this share
    #: of the range on each side
    range_margin: float = 0.1
    #: quarantine when more than this share of a feature's values is out of range
    max_out_of_range_share: float = 0.01
    #: what values out of the reference's range do: by default a warning, since real data
    #: moves (prices rise, new ids grow); values that cannot be real (infinite, overflowing,
    #: a column gone entirely missing) always quarantine
    on_out_of_range: Literal["quarantine", "warn"] = "warn"
    #: what a dataset-level distribution drift does to the partition: by default a warning,
    #: since drift is information for the model (and evidence for the drift trigger), not a
    #: defect of the data
    on_drift: Literal["quarantine", "warn"] = "warn"
    drift: DriftPolicy = field(default_factory=DriftPolicy)

    def __post_init__(self) -> None:
        if self.min_rows < 1:
            raise InvalidValueError(f"min_rows must be >= 1, but got {self.min_rows=}")
        if self.range_margin < 0:
            raise InvalidValueError(f"range_margin must be >= 0, but got {self.range_margin=}")
        if not 0 <= self.max_out_of_range_share < 1:
            raise InvalidValueError(
                f"max_out_of_range_share must be in [0, 1), but got {self.max_out_of_range_share=}"
            )


@dataclass(frozen=True)
class PartitionVerdict:
    partition: str
    status: Status
    rows: int
    #: why it was quarantined (empty unless quarantined)
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    drift: DriftReport | None = None

    def to_dict(self) -> dict:
        return {
            "partition": self.partition, "status": self.status, "rows": self.rows,
            "problems": list(self.problems), "warnings": list(self.warnings),
            "drift": self.drift.to_dict() if self.drift else None,
        }


@dataclass(frozen=True)
class AdmissionReport:
    partitions: tuple[PartitionVerdict, ...]

    @property
    def admitted(self) -> tuple[str, ...]:
        return tuple(p.partition for p in self.partitions if p.status != "quarantined")

    @property
    def quarantined(self) -> tuple[str, ...]:
        return tuple(p.partition for p in self.partitions if p.status == "quarantined")

    def summary(self) -> str:
        if not self.partitions:
            return "admission: no new partitions"
        parts = []
        for p in self.partitions:
            why = "; ".join(p.problems or p.warnings)
            parts.append(f"{p.partition}: {p.status}" + (f" ({why})" if why else ""))
        line = "admission: " + ", ".join(parts)
        if self.quarantined:
            line += (f". Quarantined partitions stay on disk and out of training; fix the "
                     f"files (a changed file is judged again) or release one as it is with "
                     f"`retrain readmit {self.quarantined[0]} --reason '...'`")
        return line

    def to_dict(self) -> dict:
        return {
            "admitted": list(self.admitted),
            "quarantined": list(self.quarantined),
            "partitions": [p.to_dict() for p in self.partitions],
        }


def _schema_problems(frame: pd.DataFrame, reference: ReferenceSketch) -> list[str]:
    missing = [name for name in reference.names if name not in frame.columns]
    problems = [f"missing column(s) {missing}"] if missing else []
    for name, sketch in reference.features.items():
        if name in missing or not isinstance(sketch, NumericSketch):
            continue
        column = frame[name]
        if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            problems.append(f"column {name!r} should be numeric but has dtype {column.dtype}")
    return problems


#: beyond this magnitude a number is an overflow or a sentinel, not a measurement; XGBoost
#: refuses infinities and float32 overflows to them above 3.4e38
ABSURD = 1e30


def _absurd_problems(frame: pd.DataFrame, reference: ReferenceSketch) -> list[str]:
    """Numbers that cannot be real: infinite or overflow-range values."""
    problems = []
    for name, sketch in reference.features.items():
        if isinstance(sketch, NumericSketch):
            values = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
            absurd = int(np.sum(~np.isnan(values) & ~(np.abs(values) < ABSURD)))
            if absurd:
                problems.append(f"{name}: {absurd} value(s) infinite or beyond {ABSURD:.0e} "
                                "(overflow or sentinel values cannot be trained on)")
    return problems


def _emptied_problems(frame: pd.DataFrame, reference: ReferenceSketch) -> list[str]:
    """Features the reference knew with values that are entirely missing here."""
    return [f"{name}: every value is missing (the reference had values); fix the export, or "
            "leave the feature out with data.exclude"
            for name, sketch in reference.features.items()
            if len(frame) and frame[name].isna().all() and sketch.missing_rate < 1.0]


def _range_problems(frame: pd.DataFrame, reference: ReferenceSketch,
                    policy: AdmissionPolicy) -> list[str]:
    problems = []
    for name, sketch in reference.features.items():
        if not isinstance(sketch, NumericSketch) or sketch.min is None or sketch.max is None:
            continue
        values = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
        values = values[~np.isnan(values)]
        if not len(values):
            continue
        margin = policy.range_margin * (sketch.max - sketch.min)
        low, high = sketch.min - margin, sketch.max + margin
        outside = float(np.mean((values < low) | (values > high)))
        if outside > policy.max_out_of_range_share:
            problems.append(
                f"{name}: {outside:.1%} of values outside the reference range "
                f"[{sketch.min:.4g}, {sketch.max:.4g}] (seen {values.min():.4g} to "
                f"{values.max():.4g})"
            )
    return problems


def admit_partition(
    partition: str, frame: pd.DataFrame, reference: ReferenceSketch,
    policy: AdmissionPolicy | None = None,
) -> PartitionVerdict:
    """Judge one partition's rows (raw feature columns) against the reference."""
    policy = policy or AdmissionPolicy()
    rows = len(frame)
    if rows < policy.min_rows:
        return PartitionVerdict(partition, "quarantined", rows,
                                (f"{rows} row(s), fewer than min_rows={policy.min_rows}",))
    problems = _schema_problems(frame, reference)
    if problems:  # the distribution cannot be judged on columns that are not there
        return PartitionVerdict(partition, "quarantined", rows, tuple(problems))
    problems = _absurd_problems(frame, reference)
    if problems:  # the statistics below would be meaningless (or fail) on such values
        return PartitionVerdict(partition, "quarantined", rows, tuple(problems))
    problems = _emptied_problems(frame, reference)
    warnings: list[str] = []
    out_of_range = _range_problems(frame, reference, policy)
    if policy.on_out_of_range == "quarantine":
        problems += out_of_range
    else:
        warnings += out_of_range
    report = compare(reference, frame[list(reference.names)], policy=policy.drift)
    drifted = [f"{f.name}: {f.reason}" for f in report.features if f.drifted]
    if report.dataset_drifted and policy.on_drift == "quarantine":
        problems.append(
            f"distribution drift in {len(report.drifted)} of {len(report.features)} features "
            f"({report.drifted_share:.0%}): " + "; ".join(drifted)
        )
    elif drifted:
        warnings += drifted
    if problems:
        return PartitionVerdict(partition, "quarantined", rows, tuple(problems), (), report)
    return PartitionVerdict(partition, "warned" if warnings else "admitted", rows, (),
                            tuple(warnings), report)


def admit(
    frames: dict[str, pd.DataFrame], reference: ReferenceSketch,
    policy: AdmissionPolicy | None = None,
) -> AdmissionReport:
    """Judge every new partition (value -> rows) in partition order."""
    return AdmissionReport(tuple(
        admit_partition(value, frame, reference, policy) for value, frame in frames.items()
    ))


def integrity_verdicts(candidates, partitions) -> tuple[PartitionVerdict, ...]:
    """Quarantine verdicts for ``candidates`` (`retrain.data.Partition` values) that fail
    before any statistics: unreadable files, and content identical (same digest) to an
    older partition of ``partitions``. Partitions released by a person are not passed in."""
    first_of: dict[str, str] = {}
    for p in partitions:
        if p.problem is None:
            first_of.setdefault(p.digest, p.value)
    out = []
    for p in candidates:
        if p.problem is not None:
            out.append(PartitionVerdict(p.value, "quarantined", p.rows, (p.problem,)))
        elif first_of.get(p.digest, p.value) != p.value:
            out.append(PartitionVerdict(p.value, "quarantined", p.rows, (
                f"the same content (sha256 {p.digest[:12]}) as partition "
                f"{first_of[p.digest]}: a copy, not new data",)))
    return tuple(out)
