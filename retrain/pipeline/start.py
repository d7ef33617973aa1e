"""What a cycle fixes before its MLflow run opens: its id and champion, the admission of new
partitions, the split and its lineage.
"""

from __future__ import annotations

import time
import uuid

from retrain.admit import AdmissionReport, admit, integrity_verdicts
from retrain.config import Config
from retrain.data import Split, load_split, read_partition, training_row_count
from retrain.pipeline.state import CycleStage, _check_resumable
from retrain.quarantine import QuarantineRecord
from retrain.registry import CHAMPION, Registry
from retrain.runtime import ensure_ray
from retrain.search.plan import DataParallelChoice, _cluster_totals, choose_data_parallel
from serve.loader import LoadedModel


def _admission(config: Config, registry: Registry, champion: str | None, cycle_id: str,
               partitions: list, resumed: CycleStage | None = None):
    """Judge the partitions the champion never saw; returns the report and what to leave out.

    Partitions quarantined before stay out while their content is unchanged. A resumed cycle
    judges the partitions it judged the first time again (admission is pure and the data is
    unchanged) and records nothing twice.
    """
    record = QuarantineRecord(config.quarantine_path)
    held = record.held(partitions) if resumed is None else frozenset(resumed.excluded)
    # integrity first, with or without a champion: unreadable files, and byte copies of
    # another partition (a copy judged as new data would judge models on rows they saw)
    broken = integrity_verdicts([p for p in partitions if p.value not in held], partitions)
    if champion is None or not config.admission.enabled:
        report = AdmissionReport(broken) if broken else None
    else:
        reference = registry.load_reference(champion)
        if reference is None:
            report = AdmissionReport(broken) if broken else None
        else:
            if resumed is None:
                # released by a person (`retrain readmit`): admitted as they are
                known = registry.version_partitions(champion) | record.released(partitions)
                new = [p for p in partitions if p.value not in known and p.value not in held]
            else:
                new = [p for p in partitions if p.value in resumed.judged]
            skip = {v.partition for v in broken}
            frames = {p.value: read_partition(config.data, p, reference.names) for p in new
                      if p.value not in skip}
            judged = admit(frames, reference, config.admission.policy())
            report = AdmissionReport((*broken, *judged.partitions))
    if report is None:
        return None, held
    if resumed is None:
        record.add(report, partitions, cycle_id=cycle_id)
    return report, held | frozenset(report.quarantined)


def _identity(registry: Registry, partitions: list, resumed: CycleStage | None,
              resume: bool, say) -> tuple[str, str | None]:
    """A new cycle's id and champion, or the resumed cycle's (checked to still hold)."""
    if resumed is None:
        if resume:
            say("nothing to resume: the newest cycle finished (or none ran); a new cycle")
        cycle_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        return cycle_id, registry.alias_version(CHAMPION)
    _check_resumable(resumed, partitions, registry.alias_version(CHAMPION))
    say(f"resuming cycle {resumed.cycle_id} after stage {resumed.stage!r} (attempt "
        f"{resumed.attempts + 1})" + (f"; it stopped with {resumed.error}"
                                      if resumed.error else ""))
    return resumed.cycle_id, resumed.champion_version


def _read_data(config: Config, registry: Registry, partitions: list,
               excluded: frozenset[str], champion_version: str | None, say
               ) -> tuple[Split, dict[str, str], LoadedModel | None, DataParallelChoice]:
    """The split, its lineage, the champion and the data-parallel choice, each made once."""
    def totals() -> dict[str, float]:
        ensure_ray(config.ray)
        return _cluster_totals()

    choice = choose_data_parallel(
        config, training_row_count(config.data, partitions, excluded), totals)
    # trials that all train data-parallel read their own rows: the driver then loads only
    # the holdout, so training data may outgrow the driver's node
    loads_rows = choice.driver_loads_rows
    # read once: its spec is the base the vocabularies grow from (known categories keep
    # their codes, so the champion's trees stay valid for a warm start), and it competes
    champion = None if champion_version is None else registry.load(champion_version)
    split = load_split(config.data, config.task.type,
                       extra_columns=tuple(s.column for s in config.evaluation.slices),
                       exclude=excluded, partitions=partitions, training_rows=loads_rows,
                       base_spec=None if champion is None else champion.spec,
                       # data-parallel workers read whole training partitions from Parquet
                       holdout_share=1.0 if choice.use else config.data.holdout_share)
    lineage = {**split.lineage(), "data.driver_rows": "all" if loads_rows else "holdout"}
    if excluded:
        lineage["data.excluded_partitions"] = ",".join(sorted(excluded))
    say(
        f"data: train {lineage['data.train_partitions']} ({lineage['data.train_rows']} rows"
        + ("" if loads_rows else ", read by the data-parallel workers only")
        + f"), holdout {lineage['data.holdout_partitions']} ({lineage['data.holdout_rows']} rows)"
        + (f", left out (quarantined) {lineage['data.excluded_partitions']}" if excluded else "")
    )
    return split, lineage, champion, choice
