"""The cycle from its search on, as one function per stage over the values fixed at its start:
search, judge, decide, register.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from retrain.candidates import partition_ages
from retrain.config import Config
from retrain.data import Split, training_sample
from retrain.decide import Decision, Verdict, decide
from retrain.drift import build_reference
from retrain.errors import RegistryError, SearchError
from retrain.evaluate import compare
from retrain.pipeline.finalists import _champion_finalist, _finalists, _footprints
from retrain.pipeline.record import _log_cycle, _record, _write_reports
from retrain.pipeline.state import CycleResult, CycleStage, _Cycle, _Judged, _silent, save_stage
from retrain.refit import refit_finalists
from retrain.registry import CHALLENGER, CHAMPION
from retrain.search import SearchResult, TrainData, WarmStart, run_search


def _stages(cycle: _Cycle, stage: CycleStage) -> CycleResult:
    """The cycle from its search on, skipping the steps with lasting effects that ``stage``
    says are done, and recording each one it does."""
    config = cycle.config
    resumed_from = stage.stage if stage.attempts > 1 else None
    stage, search, warm = _search_stage(cycle, stage)
    judged = _judge(cycle, stage, search, warm)
    # with a rollout, the champion alias moves only when the last canary step passes
    alias = CHALLENGER if rolls_out(config, stage.champion_version) else CHAMPION
    stage, decision = _decide_stage(cycle, stage, judged)
    stage, model_version = _register_stage(cycle, stage, judged, decision, alias)
    snapshot = _snapshot(cycle.split, judged.lineage)
    if not stage.reached("recorded"):
        _record(config, decision, judged.comparison, snapshot, search, cycle.run_id,
                stage.champion_version, model_version, alias=alias)
        stage = save_stage(cycle.folder, replace(stage, stage="recorded"))
    report_path, files = _write_reports(cycle, stage, decision, judged)
    _log_cycle(cycle, stage, decision, judged, snapshot, files,
               model_version=model_version, resumed_from=resumed_from)
    save_stage(cycle.folder, replace(stage, stage="done"))
    champion_version = stage.champion_version
    return CycleResult(
        cycle_id=stage.cycle_id,
        run_id=cycle.run_id,
        decision=decision,
        comparison=judged.comparison,
        search=search,
        model_version=model_version,
        champion_version=champion_version if rolls_out(config, champion_version)
        else model_version or champion_version,
        lineage=judged.lineage,
        wall_seconds=time.perf_counter() - cycle.start,
        report_path=str(report_path),
        admission=cycle.admission,
        excluded=tuple(sorted(cycle.excluded)),
        resumed_from=resumed_from,
    )


def _search_stage(cycle: _Cycle, stage: CycleStage
                  ) -> tuple[CycleStage, SearchResult, WarmStart | None]:
    """The search over every family; a resumed cycle's search reads back the trials that
    finished and runs only the rest."""
    config, split, registry = cycle.config, cycle.split, cycle.registry
    champion_version = stage.champion_version
    ages = partition_ages(split.pieces(), split.train_rows + split.valid_rows)
    data = TrainData(split.x_train, split.y_train, split.x_valid, split.y_valid,
                     ages=None if ages is None else ages[: split.train_rows])
    # warm-start trials continue the champion's booster on the rows it never trained on;
    # WarmStart says why not if they cannot (other features, a scikit-learn champion, no
    # new rows), and the search reports it
    warm = (WarmStart.of(cycle.champion_model, split, version=champion_version,
                         seen=registry.version_partitions(champion_version, trained_only=True),
                         rows=config.search.families.xgboost_warm_start.rows)
            if champion_version is not None
            and config.search.families.xgboost_warm_start.enabled else None)
    search = run_search(
        config, data, name=f"{config.project.name}-{stage.cycle_id}",
        progress=cycle.say is not _silent, warm_start=warm, split=split,
        read_only=stage.reached("searched"), data_parallel=cycle.data_parallel,
    )
    if not stage.reached("searched"):
        registry.log_trials(cycle.run_id, search)  # failed trials too, before giving up
        stage = save_stage(cycle.folder, replace(stage, stage="searched"))
    return stage, search, warm


def _judge(cycle: _Cycle, stage: CycleStage, search: SearchResult,
           warm: WarmStart | None) -> _Judged:
    """The finalists (refit where configured) and the champion, scored on the same holdout
    with their footprints measured in the same run."""
    config, split = cycle.config, cycle.split
    boosters, models, finalists, refit = _finalists(config, search, split, warm, cycle.say)
    champion = None
    if cycle.champion_model is not None and stage.champion_version is not None:
        models[f"v{stage.champion_version}"], champion = _champion_finalist(
            cycle.champion_model, stage.champion_version, split
        )
    footprints = _footprints(split, models)
    finalists = [replace(f, footprint=footprints[f.name]) for f in finalists]
    if champion is not None:
        champion = replace(champion, footprint=footprints[champion.name])
    comparison = compare(
        config.task.type, config.task.primary_metric, split.y_holdout, finalists, champion,
        policy=config.evaluation, slice_frame=split.holdout_raw,
    )
    return _Judged(search, warm, boosters, comparison,
                   {**cycle.lineage, "search.refit": refit})


def _decide_stage(cycle: _Cycle, stage: CycleStage, judged: _Judged
                  ) -> tuple[CycleStage, Decision]:
    """The decision, made once (a resumed cycle keeps it), and the challenger's model logged
    with it: refit on the holdout rows too when it is promoted and refit is ``all``."""
    decision = stage.kept_decision()
    if decision is not None:
        return stage, decision
    config, split, task = cycle.config, cycle.split, cycle.config.task
    decision = decide(judged.comparison, config.evaluation)
    challenger = judged.comparison.challenger.trial_id
    if challenger is None:  # finalists are trials; only a champion has no trial id
        raise SearchError("the challenger has no trial id; run a new cycle")
    chosen = judged.boosters[challenger]
    if decision.verdict is Verdict.PROMOTE and config.search.refit == "all" \
            and split.holds_training_rows:
        # served: the judged configuration trained on the holdout rows too
        trial = next(t for t in judged.search.trials if t.trial_id == challenger)
        final = refit_finalists(config, [trial], split, judged.warm, holdout=True)[challenger]
        chosen = replace(chosen, booster=final.model)
        cycle.say(f"  promoted model refit on all {final.rows} rows, the holdout's included")
    model_uri = cycle.registry.log_model(
        cycle.run_id, chosen.booster, chosen.spec, task=task.type, metric=task.primary_metric,
    )
    # what later admissions compare new partitions with, should this model be promoted
    cycle.registry.log_reference(cycle.run_id, _reference(config, split))
    stage = save_stage(cycle.folder, replace(stage, stage="decided", decision=decision.to_dict(),
                                             challenger=challenger, model_uri=model_uri))
    return stage, decision


def _register_stage(cycle: _Cycle, stage: CycleStage, judged: _Judged, decision: Decision,
                    alias: str) -> tuple[CycleStage, str | None]:
    """A promoted challenger registered once and ``alias`` moved to it."""
    model_version = stage.model_version
    if decision.verdict is not Verdict.PROMOTE or stage.reached("registered"):
        return stage, model_version
    if model_version is None:
        if stage.model_uri is None:  # logged when the cycle decided
            raise RegistryError(f"cycle {stage.cycle_id} decided to promote but logged no "
                                "model; run a new cycle")
        # idempotent: a driver that died after MLflow created the version (before the
        # stage below recorded it) gets that version back, not a second one
        model_version = cycle.registry.register(
            stage.model_uri,
            tags={**judged.lineage, "retrain.run_id": cycle.run_id,
                  "retrain.cycle_id": stage.cycle_id,
                  "retrain.search": judged.search.experiment_path,
                  "data.trained_partitions": _trained_partitions(cycle.config, cycle.split)},
        )
        # recorded before the alias moves: a crash in between resumes to the alias move
        # (idempotent), never to a second registration
        stage = save_stage(cycle.folder, replace(stage, model_version=model_version))
    cycle.registry.set_alias(alias, model_version)
    return save_stage(cycle.folder, replace(stage, stage="registered")), model_version


def _snapshot(split: Split, lineage: dict[str, str]) -> dict[str, Any]:
    return {
        "partitions": [
            {"value": p.value, "rows": p.rows, "sha256": p.digest,
             "role": "holdout" if p in split.holdout_partitions else "train"}
            for p in (*split.train_partitions, *split.holdout_partitions)
        ],
        "digest": lineage["data.digest"],
    }


def _trained_partitions(config: Config, split: Split) -> str:
    """The partitions a registered model trained on: the holdout's too when it was refit on
    them for serving (a later warm start then continues on what it has not seen)."""
    parts = list(split.train_partitions)
    if config.search.refit == "all" and split.holds_training_rows:
        parts += split.holdout_partitions
    return ",".join(p.value for p in parts)


#: training rows drawn for the drift reference when the driver did not load them all
REFERENCE_SAMPLE_ROWS = 1_000_000


def _reference(config: Config, split: Split):
    import pandas as pd

    target = config.data.target
    if split.holds_training_rows:
        frame = pd.concat([split.x_train, split.x_valid], ignore_index=True)
        frame[target] = list(split.y_train) + list(split.y_valid)
    else:
        # a uniform sample sketches the same distributions to well within the drift tests'
        # resolution (quantiles at 1 %)
        frame, y = training_sample(config.data, config.task.type, split,
                                   REFERENCE_SAMPLE_ROWS, seed=config.search.seed)
        frame[target] = y
    return build_reference(frame, target=target)


def rolls_out(config: Config, champion: str | None) -> bool:
    """A promoted version goes through a rollout (not straight to the champion alias) when
    rollouts are on and there is a champion serving to fall back to."""
    return config.rollout.enabled and champion is not None
