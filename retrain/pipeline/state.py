"""A cycle's record of how far it got (`<workdir>/cycles/<cycle_id>.json`), what it returns,
the values its stages share, and the checks that a cycle may resume.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from retrain.admit import AdmissionReport
from retrain.config import Config
from retrain.data import Split
from retrain.decide import Check, Decision, Verdict
from retrain.errors import DataError, RegistryError
from retrain.evaluate import Comparison
from retrain.files import write_json_atomic
from retrain.registry import Registry
from retrain.search import SearchResult, WarmStart
from retrain.search.plan import DataParallelChoice
from serve.loader import LoadedModel


@dataclass(frozen=True)
class CycleResult:
    cycle_id: str
    run_id: str
    decision: Decision
    comparison: Comparison
    search: SearchResult
    #: the registered version of this cycle's challenger (None unless promoted)
    model_version: str | None
    #: the champion after the cycle
    champion_version: str | None
    lineage: dict[str, str]
    wall_seconds: float
    #: the cycle's HTML report (also logged to the MLflow run)
    report_path: str | None = None
    #: the admission of new partitions (None when there was no champion to compare with)
    admission: AdmissionReport | None = None
    #: every partition left out of this cycle: quarantined now or before
    excluded: tuple[str, ...] = ()
    #: the stage this cycle was resumed from (None: it ran in one go)
    resumed_from: str | None = None

    @property
    def promoted(self) -> bool:
        return self.decision.verdict is Verdict.PROMOTE


#: what a cycle records, in order; each stage is written once its lasting effects are done
STAGES = ("started", "searched", "decided", "registered", "recorded", "done")


@dataclass(frozen=True)
class CycleStage:
    """How far a cycle got: the content of ``<workdir>/cycles/<cycle_id>.json``."""

    cycle_id: str
    stage: str
    run_id: str
    #: the champion the cycle compares with (None for the first model)
    champion_version: str | None
    #: partition value -> content digest, as the cycle found the data
    partitions: dict[str, str]
    #: partitions left out (quarantined by this cycle or before) and those admission judged
    excluded: tuple[str, ...] = ()
    judged: tuple[str, ...] = ()
    #: `Decision.to_dict()`, the challenger's trial and its logged model, once decided
    decision: dict | None = None
    challenger: str | None = None
    model_uri: str | None = None
    #: the registered version, once promoted
    model_version: str | None = None
    attempts: int = 1
    #: why the last attempt stopped, when it raised
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def reached(self, stage: str) -> bool:
        return STAGES.index(self.stage) >= STAGES.index(stage)

    def kept_decision(self) -> Decision | None:
        if self.decision is None:
            return None
        d = self.decision
        return Decision(verdict=Verdict(d["verdict"]), reasons=tuple(d["reasons"]),
                        metric=d["metric"], challenger_score=d["challenger_score"],
                        champion_score=d["champion_score"],
                        checks=tuple(Check(**c) for c in d["checks"]),
                        alerts=tuple(d.get("alerts", ())))


def cycles_folder(config: Config) -> Path:
    return config.cycles_dir


def save_stage(folder: Path, stage: CycleStage) -> CycleStage:
    """Write the record atomically (a crash leaves the old one or the new one, whole)."""
    stage = replace(stage, updated_at=time.time())
    write_json_atomic(folder / f"{stage.cycle_id}.json", asdict(stage), indent=1)
    return stage


def read_stages(folder: Path) -> list[CycleStage]:
    """Every recorded cycle, oldest first."""
    stages = []
    for path in folder.glob("*.json") if folder.exists() else ():
        raw = json.loads(path.read_text())
        raw["excluded"], raw["judged"] = tuple(raw["excluded"]), tuple(raw["judged"])
        stages.append(CycleStage(**raw))
    return sorted(stages, key=lambda s: (s.started_at, s.cycle_id))


def unfinished_cycle(folder: Path) -> CycleStage | None:
    """The newest cycle, when it is not done. An older unfinished one is not resumed: a
    newer cycle has run since, on newer data."""
    stages = read_stages(folder)
    return stages[-1] if stages and not stages[-1].reached("done") else None


def _check_resumable(stage: CycleStage, partitions: list, champion: str | None) -> None:
    now = {p.value: p.digest for p in partitions}
    if now != stage.partitions:
        added = sorted(set(now) - set(stage.partitions))
        removed = sorted(set(stage.partitions) - set(now))
        changed = sorted(v for v in set(now) & set(stage.partitions)
                         if now[v] != stage.partitions[v])
        raise DataError(
            f"cycle {stage.cycle_id} cannot resume: the data changed since it started "
            f"(partitions added {added}, removed {removed}, changed {changed}); its trials "
            "were trained on the old data. Run a new cycle (without --resume)"
        )
    # once registered, a promotion may have moved the alias to the cycle's own version
    expected = {stage.champion_version}
    if stage.model_version is not None:
        expected.add(stage.model_version)
    if champion not in expected:
        raise RegistryError(
            f"cycle {stage.cycle_id} cannot resume: the champion alias points at version "
            f"{champion} but the cycle compared against {stage.champion_version}; it was "
            "moved since. Run a new cycle (without --resume)"
        )


def _silent(line: str) -> None:
    pass


def read_stage(folder: Path, cycle_id: str) -> CycleStage:
    return next(s for s in read_stages(folder) if s.cycle_id == cycle_id)


@dataclass(frozen=True)
class _Cycle:
    """What every stage of one cycle reads: fixed once the cycle's MLflow run is open."""

    config: Config
    registry: Registry
    folder: Path
    split: Split
    lineage: dict[str, str]
    admission: AdmissionReport | None
    excluded: frozenset[str]
    run_id: str
    say: Callable[[str], None]
    start: float
    #: the champion read once (None for the first model): competitor and warm-start base
    champion_model: LoadedModel | None
    #: whether the XGBoost trials train data-parallel, decided once as the cycle began
    data_parallel: DataParallelChoice | None = None


@dataclass(frozen=True)
class _Judged:
    """The finalists scored beside the champion on the holdout."""

    search: SearchResult
    warm: WarmStart | None
    boosters: dict[str, Any]
    comparison: Comparison
    lineage: dict[str, str]
