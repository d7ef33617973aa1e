"""One retraining cycle, composed from the stage functions: data -> search -> evaluate ->
decide -> registry -> ledger and report. Plain functions and typed values; no state outside
the arguments, except the cycle's stage record.

Resuming. A cycle writes ``<workdir>/cycles/<cycle_id>.json`` (`CycleStage`) once its MLflow
run is open and again after each step with lasting effects: ``started`` (admission judged,
quarantine recorded, the partitions, exclusions and champion fixed), ``searched`` (every
trial finished and logged), ``decided`` (the decision and the challenger's logged model),
``registered`` (a promoted version and the alias move), ``recorded`` (the ledger), ``done``.
``run_cycle(config, resume=True)`` (`retrain run --resume`) continues the newest cycle when
it is not done, in the same MLflow run:

- the search resumes (`retrain.search.run_search`): trials that had finished are read back
  from the first run's experiment and not run again, the rest of the budget runs as a new
  experiment beside it, and a search that had finished is only read back;
- steps with lasting effects are not repeated (quarantine records, trial runs, the logged
  model, the registration and alias move, the ledger entry), and a decision once made is
  kept;
- steps without lasting effects are simply redone, because that is cheaper and safer than
  storing their results: reading the split, judging admission again (pure, on the same
  data), loading the finalists and scoring them on the holdout (deterministic; only the
  measured latencies differ), the report.

A cycle resumes only on the data it started with (same partitions, same content) and only
while the champion it compared against still holds the alias; otherwise resuming would mix
two cycles, and the error says to run a new one. An error inside a cycle (say MLflow was down
after the search) leaves it resumable from the stage it reached.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from retrain.admission_report import render_admission_report
from retrain.admit import AdmissionReport, admit, integrity_verdicts
from retrain.candidates import partition_ages
from retrain.config import Config
from retrain.data import (
    Split,
    list_partitions,
    load_split,
    read_partition,
    training_row_count,
    training_sample,
)
from retrain.decide import Check, Decision, Verdict, decide
from retrain.drift import build_reference
from retrain.errors import DataError, RegistryError
from retrain.evaluate import Comparison, Finalist, compare, measure_footprints
from retrain.files import write_json_atomic
from retrain.ledger import EventKind, Ledger, LedgerEvent
from retrain.locks import cycle_lock
from retrain.quarantine import QuarantineRecord
from retrain.refit import refit_finalists, refit_problem
from retrain.registry import CHALLENGER, CHAMPION, MlflowRegistry
from retrain.report import render_report
from retrain.runtime import ensure_ray, quiet_defaults
from retrain.search import SearchResult, TrainData, WarmStart, load_model, run_search
from retrain.search.plan import driver_loads_training_rows
from serve.loader import LoadedModel
from serve.schemas import InvalidInput
from serve.scoring import Scorer, request_body


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


def _footprints(split: Split, models: dict[str, LoadedModel]):
    """Time every finalist and the champion together, so their latency ratios are fair, on
    the path a serving replica takes (`serve.scoring.Scorer`): a JSON ``/invocations`` body
    of the holdout's rows, decoded, read and predicted as the replica does, so a measured
    single-row latency is what a caller of that version waits for inside the replica."""
    # every model's features (extra columns are ignored, as a replica ignores them)
    names = tuple(dict.fromkeys(n for m in models.values() for n in m.spec.names))
    return measure_footprints(
        {name: (Scorer(m, allow_all_missing_rows=True).score_body, m.size_bytes())
         for name, m in models.items()},
        split.holdout_raw,
        prepare=lambda rows: request_body(rows, names),
    )


def _champion_finalist(champion: LoadedModel, version: str, split: Split):
    try:
        frame = champion.spec.frame(split.holdout_raw)
    except InvalidInput as exc:
        raise DataError(
            f"the champion (version {version}) cannot score the new holdout: {exc}. The "
            "features changed since it was trained; compare on matching features or retire it"
        ) from exc
    return champion, Finalist(name=f"v{version}", predictions=champion.predict(frame),
                              version=version)


def _finalists(config: Config, search: SearchResult, split: Split, warm: WarmStart | None,
               say=None):
    """The top trials by validation score, refit on every training row (`retrain.refit`)
    unless that is off or impossible, with their holdout predictions. Also says which rows
    the finalists' models trained on (for the lineage and the report)."""
    trials = search.finalists(config.evaluation.finalists)
    problem = refit_problem(config, split)
    refitted = {} if problem else refit_finalists(config, trials, split, warm)
    boosters, models, finalists = {}, {}, []
    for trial in trials:
        again = refitted.get(trial.trial_id)
        # an XGBoost booster or a scikit-learn estimator
        booster = again.model if again is not None else load_model(trial)
        # a warm-started model reads categories as its champion did (XGBoost keeps the
        # champion's categories in the model); new ones reach it as missing
        spec = warm.spec if trial.family == "xgboost_warm_start" and warm is not None \
            and warm.spec is not None else split.spec
        model = LoadedModel(name=config.model_name, version=f"trial-{trial.trial_id}",
                            task=config.task.type, spec=spec, booster=booster,
                            flavor=trial.flavor)
        boosters[trial.trial_id] = model
        models[f"trial-{trial.trial_id}"] = model
        finalists.append(Finalist(
            name=f"trial-{trial.trial_id}",
            # the split's holdout frame is already typed by its spec; only a warm start's
            # champion spec frames it again
            predictions=model.predict(split.x_holdout if spec is split.spec
                                      else spec.frame(split.holdout_raw)),
            trial_id=trial.trial_id,
            valid_score=trial.score,
            trained_rows=again.rows if again is not None else None,
        ))
    if problem:
        refit = f"not refit: {problem}"
    else:
        rows = split.train_rows + split.valid_rows
        refit = (f"refit on all {rows} training rows (validation rows included; a warm start "
                 "on the rows its champion had not seen)")
    if say is not None:
        say(f"  finalists {refit}")
    return boosters, models, finalists, refit


def _admission(config: Config, registry: MlflowRegistry, champion: str | None, cycle_id: str,
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


def _silent(line: str) -> None:
    pass


def run_cycle(config: Config, *, echo=None, resume: bool = False) -> CycleResult:
    """Run one cycle on the connected (or a new local) Ray cluster and return what happened.

    Works after ``ray.init(address=...)`` on an existing cluster, inside a Ray job, or on its
    own. Raises a `retrain.errors.RetrainError` with the cause and the fix on failure; the
    serving champion is never touched unless the decision is PROMOTE. One cycle per project
    at a time: a second one (`retrain run` while `retrain watch` runs one) gets `BusyError`.

    ``resume=True`` continues the newest cycle if it did not finish (its driver died, or it
    raised), from the stage it reached (see the module docstring); with none to continue it
    runs a new cycle.
    """
    with cycle_lock(config.project.workdir):
        return _run_cycle(config, echo=echo, resume=resume)


def _run_cycle(config: Config, *, echo=None, resume: bool = False) -> CycleResult:
    from retrain.preflight import check

    start = time.perf_counter()
    say = echo or _silent
    check(config)  # an unwritable store or an unreachable server fails now, not minutes in
    quiet_defaults()
    folder = cycles_folder(config)
    resumed = unfinished_cycle(folder) if resume else None
    registry = MlflowRegistry.from_config(config)
    # listed (and content-hashed) once, for admission and the split alike
    partitions = list_partitions(config.data)
    cycle_id, champion_version = _identity(registry, partitions, resumed, resume, say)
    admission, excluded = _admission(config, registry, champion_version, cycle_id, partitions,
                                     resumed)
    if admission is not None:
        say(admission.summary())
    split, lineage, champion = _read_data(config, registry, partitions, excluded,
                                          champion_version, say)
    if champion is None and split.holds_training_rows and resumed is None:
        # the first model is where a leak or a row index gets in: say so before training
        from retrain.suspects import suspects_in

        for suspect in suspects_in(config, list(split.train_partitions)):
            say(f"warning: {suspect.message()}")
    ensure_ray(config.ray)
    tags = {**lineage, "retrain.cycle_id": cycle_id}
    opened = registry.cycle_run(f"cycle-{cycle_id}", tags,
                                run_id=None if resumed is None else resumed.run_id)
    with opened as run_id:
        if resumed is None:
            stage = save_stage(folder, CycleStage(
                cycle_id=cycle_id, stage="started", run_id=run_id,
                champion_version=champion_version,
                partitions={p.value: p.digest for p in partitions},
                excluded=tuple(sorted(excluded)),
                judged=() if admission is None else tuple(v.partition
                                                          for v in admission.partitions)))
        else:
            stage = save_stage(folder, replace(resumed, attempts=resumed.attempts + 1,
                                               error=None))
        cycle = _Cycle(config, registry, folder, split, lineage, admission, excluded, run_id,
                       say, start, champion)
        try:
            return _stages(cycle, stage)
        except BaseException as exc:
            save_stage(folder, replace(read_stage(folder, cycle_id),
                                       error=f"{type(exc).__name__}: {exc}"[:2000]))
            raise


def _identity(registry: MlflowRegistry, partitions: list, resumed: CycleStage | None,
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


def _read_data(config: Config, registry: MlflowRegistry, partitions: list,
               excluded: frozenset[str], champion_version: str | None, say
               ) -> tuple[Split, dict[str, str], LoadedModel | None]:
    """The split, its lineage and the champion, each read once."""
    # trials that all train data-parallel read their own rows: the driver then loads only
    # the holdout, so training data may outgrow the driver's node
    loads_rows = driver_loads_training_rows(
        config, training_row_count(config.data, partitions, excluded),
        connect=lambda: ensure_ray(config.ray))
    # read once: its spec is the base the vocabularies grow from (known categories keep
    # their codes, so the champion's trees stay valid for a warm start), and it competes
    champion = None if champion_version is None else registry.load(champion_version)
    split = load_split(config.data, config.task.type,
                       extra_columns=tuple(s.column for s in config.evaluation.slices),
                       exclude=excluded, partitions=partitions, training_rows=loads_rows,
                       base_spec=None if champion is None else champion.spec,
                       holdout_share=_holdout_share(config, partitions, excluded))
    lineage = {**split.lineage(), "data.driver_rows": "all" if loads_rows else "holdout"}
    if excluded:
        lineage["data.excluded_partitions"] = ",".join(sorted(excluded))
    say(
        f"data: train {lineage['data.train_partitions']} ({lineage['data.train_rows']} rows"
        + ("" if loads_rows else ", read by the data-parallel workers only")
        + f"), holdout {lineage['data.holdout_partitions']} ({lineage['data.holdout_rows']} rows)"
        + (f", left out (quarantined) {lineage['data.excluded_partitions']}" if excluded else "")
    )
    return split, lineage, champion


def read_stage(folder: Path, cycle_id: str) -> CycleStage:
    return next(s for s in read_stages(folder) if s.cycle_id == cycle_id)


@dataclass(frozen=True)
class _Cycle:
    """What every stage of one cycle reads: fixed once the cycle's MLflow run is open."""

    config: Config
    registry: MlflowRegistry
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


@dataclass(frozen=True)
class _Judged:
    """The finalists scored beside the champion on the holdout."""

    search: SearchResult
    warm: WarmStart | None
    boosters: dict[str, Any]
    comparison: Comparison
    lineage: dict[str, str]


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
        read_only=stage.reached("searched"),
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
    if cycle.champion_model is not None:
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


def _write_reports(cycle: _Cycle, stage: CycleStage, decision: Decision, judged: _Judged
                   ) -> tuple[Path, dict[str, str]]:
    """The cycle's HTML report, and the admission's where admission judged partitions."""
    config, admission, cycle_id = cycle.config, cycle.admission, stage.cycle_id
    report = render_report(
        title=f"{config.project.name} cycle {cycle_id}",
        decision=decision, comparison=judged.comparison, search=judged.search,
        lineage=judged.lineage,
        tolerances={s.column: s.tolerance for s in config.evaluation.slices},
        admission=None if admission is None else {
            v.partition: f"{v.status}: " + "; ".join(v.problems or v.warnings or ("ok",))
            for v in admission.partitions
        },
    )
    report_path = config.reports_dir / f"cycle-{cycle_id}.html"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(report)
    files = {"report.html": str(report_path)}
    if admission is not None:  # the person's view of admission.json, plots included
        admission_path = report_path.with_name(f"admission-{cycle_id}.html")
        admission_path.write_text(render_admission_report(
            admission, title=f"{config.project.name} admission, cycle {cycle_id}",
            reference={"champion version": str(stage.champion_version), "cycle": cycle_id},
            policy=config.admission.policy(),
            record=str(config.quarantine_path),
        ))
        files["admission.html"] = str(admission_path)
    return report_path, files


def _log_cycle(cycle: _Cycle, stage: CycleStage, decision: Decision, judged: _Judged,
               snapshot: dict[str, Any], files: dict[str, str], *,
               model_version: str | None, resumed_from: str | None) -> None:
    """The cycle's parameters, metrics, verdict tags and artifacts on its MLflow run."""
    comparison, search, champion_version = judged.comparison, judged.search, \
        stage.champion_version
    cycle.registry.log_cycle(
        cycle.run_id,
        params=_cycle_params(cycle.config, comparison),
        metrics=_cycle_metrics(comparison, search),
        tags={
            "retrain.verdict": decision.verdict.value,
            "retrain.reasons": "; ".join(decision.reasons),
            "retrain.challenger_score": f"{decision.challenger_score:.6f}",
            "retrain.champion_score": "" if decision.champion_score is None
            else f"{decision.champion_score:.6f}",
            "retrain.champion_version_before": champion_version or "",
            "retrain.model_version": model_version or "",
            "retrain.search": search.experiment_path,
            **({"retrain.resumed_from": resumed_from} if resumed_from else {}),
        },
        artifacts={
            "decision.json": {
                "decision": decision.to_dict(),
                "comparison": comparison.to_dict(),
                "lineage": judged.lineage,
                "data_snapshot": snapshot,
            },
            **({"admission.json": cycle.admission.to_dict()} if cycle.admission else {}),
        },
        files=files,
    )


def _holdout_share(config: Config, partitions: list, excluded: frozenset[str]) -> float:
    """``data.holdout_share``, or 1 (whole partitions judge) where trials may train
    data-parallel: their workers read whole training partitions from Parquet."""
    section = config.search.data_parallel
    if section.enabled is True or (section.enabled == "auto" and training_row_count(
            config.data, partitions, excluded) >= section.min_rows):
        return 1.0
    return config.data.holdout_share


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


def _record(config: Config, decision: Decision, comparison: Comparison, snapshot: dict,
            search: SearchResult, run_id: str, before: str | None, promoted: str | None,
            *, alias: str = CHAMPION) -> None:
    """The ledger: the decision always, and the alias move when there is one."""
    ledger = Ledger(config.ledger_path)
    common = dict(model_name=config.model_name, data_snapshot=snapshot,
                  search=search.experiment_path, run_id=run_id)
    ledger.append(LedgerEvent(
        kind=EventKind.DECISION, version=promoted, previous_version=before,
        verdict=decision.verdict.value, reasons=decision.reasons,
        details={"challenger": comparison.challenger.name,
                 "difference": comparison.difference.to_dict()
                 if comparison.difference else None},
        **common,
    ))
    if promoted is not None:
        ledger.append(LedgerEvent(
            kind=EventKind.ALIAS_MOVE, alias=alias, version=promoted,
            previous_version=before if alias == CHAMPION else None, reasons=decision.reasons,
            **common,
        ))


def _cycle_params(config: Config, comparison: Comparison) -> dict[str, Any]:
    return {
        "task": config.task.type,
        "metric": config.task.primary_metric,
        "num_samples": config.search.num_samples,
        "num_boost_round": config.search.num_boost_round,
        "early_stopping": config.search.early_stopping,
        "seed": config.search.seed,
        "evaluation.mode": config.evaluation.mode,
        "evaluation.min_improvement": config.evaluation.min_improvement,
        "evaluation.min_score": config.evaluation.min_score,
        "evaluation.confidence": config.evaluation.confidence,
        "evaluation.finalists": config.evaluation.finalists,
        "challenger": comparison.challenger.name,
    }


def _cycle_metrics(comparison: Comparison, search: SearchResult) -> dict[str, float]:
    out = {f"challenger_{k}": v for k, v in comparison.challenger.metrics.items()}
    if comparison.champion:
        out.update({f"champion_{k}": v for k, v in comparison.champion.metrics.items()})
    if comparison.difference:
        d = comparison.difference
        out.update(difference=d.estimate, difference_low=d.low, difference_high=d.high)
    out.update(
        search_wall_seconds=search.wall_seconds,
        trials_completed=search.count("completed"),
        trials_stopped=search.count("stopped"),
        trials_failed=search.count("failed"),
    )
    return out
