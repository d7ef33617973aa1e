"""One retraining cycle, composed from the stage functions: data -> search -> evaluate ->
decide -> registry -> ledger and report. Plain functions and typed values; no state outside
the arguments.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from retrain.admission_report import render_admission_report
from retrain.admit import AdmissionReport, admit
from retrain.config import Config
from retrain.data import Split, list_partitions, load_split, read_partition
from retrain.decide import Decision, Verdict, decide
from retrain.drift import build_reference
from retrain.errors import DataError
from retrain.evaluate import Comparison, Finalist, compare, measure_footprints
from retrain.ledger import EventKind, Ledger, LedgerEvent
from retrain.locks import cycle_lock
from retrain.quarantine import QuarantineRecord
from retrain.registry import CHALLENGER, CHAMPION, MlflowRegistry
from retrain.report import render_report
from retrain.runtime import ensure_ray, quiet_defaults
from retrain.search import SearchResult, TrainData, WarmStart, load_model, run_search
from serve.loader import LoadedModel
from serve.schemas import InvalidInput


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

    @property
    def promoted(self) -> bool:
        return self.decision.verdict is Verdict.PROMOTE


def _footprints(split: Split, models: dict[str, LoadedModel]):
    """Time every finalist and the champion together, so their latency ratios are fair."""
    return measure_footprints(
        {name: (lambda rows, m=m: m.predict(m.spec.frame(rows)), m.size_bytes())
         for name, m in models.items()},
        split.holdout_raw,
    )


def _champion_finalist(registry: MlflowRegistry, version: str, split: Split):
    champion = registry.load(version)
    try:
        frame = champion.spec.frame(split.holdout_raw)
    except InvalidInput as exc:
        raise DataError(
            f"the champion (version {version}) cannot score the new holdout: {exc}. The "
            "features changed since it was trained; compare on matching features or retire it"
        ) from exc
    return champion, Finalist(name=f"v{version}", predictions=champion.predict(frame),
                              version=version)


def _finalists(config: Config, search: SearchResult, split: Split):
    """The top trials by validation score, their boosters and their holdout predictions."""
    boosters, models, finalists = {}, {}, []
    for trial in search.finalists(config.evaluation.finalists):
        booster = load_model(trial)  # an XGBoost booster or a scikit-learn estimator
        model = LoadedModel(name=config.model_name, version=f"trial-{trial.trial_id}",
                            task=config.task.type, spec=split.spec, booster=booster,
                            flavor=trial.flavor)
        boosters[trial.trial_id] = booster
        models[f"trial-{trial.trial_id}"] = model
        finalists.append(Finalist(
            name=f"trial-{trial.trial_id}",
            predictions=model.predict(split.x_holdout),
            trial_id=trial.trial_id,
            valid_score=trial.score,
        ))
    return boosters, models, finalists


def _admission(config: Config, registry: MlflowRegistry, champion: str | None, cycle_id: str,
               partitions: list):
    """Judge the partitions the champion never saw; returns the report and what to leave out.

    Partitions quarantined before stay out while their content is unchanged.
    """
    record = QuarantineRecord(Path(config.project.workdir) / "quarantine.jsonl")
    held = record.held(partitions)
    if champion is None or not config.admission.enabled:
        return None, held
    reference = registry.load_reference(champion)
    if reference is None:
        return None, held
    known = registry.version_partitions(champion)
    new = [p for p in partitions if p.value not in known and p.value not in held]
    frames = {p.value: read_partition(config.data, p, reference.names) for p in new}
    report = admit(frames, reference, config.admission.policy())
    record.add(report, partitions, cycle_id=cycle_id)
    return report, held | frozenset(report.quarantined)


def run_cycle(config: Config, *, echo=None) -> CycleResult:
    """Run one cycle on the connected (or a new local) Ray cluster and return what happened.

    Works after ``ray.init(address=...)`` on an existing cluster, inside a Ray job, or on its
    own. Raises a `retrain.errors.RetrainError` with the cause and the fix on failure; the
    serving champion is never touched unless the decision is PROMOTE. One cycle per project
    at a time: a second one (`retrain run` while `retrain watch` runs one) gets `BusyError`.
    """
    with cycle_lock(config.project.workdir):
        return _run_cycle(config, echo=echo)


def _run_cycle(config: Config, *, echo=None) -> CycleResult:
    start = time.perf_counter()
    say = echo or (lambda line: None)
    quiet_defaults()
    cycle_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    task, policy = config.task, config.evaluation
    registry = MlflowRegistry.from_config(config)
    champion_version = registry.alias_version(CHAMPION)
    # listed (and content-hashed) once, for admission and the split alike
    partitions = list_partitions(config.data)
    admission, excluded = _admission(config, registry, champion_version, cycle_id, partitions)
    if admission is not None:
        say(admission.summary())
    split = load_split(config.data, task.type,
                       extra_columns=tuple(s.column for s in policy.slices), exclude=excluded,
                       partitions=partitions)
    lineage = split.lineage()
    if excluded:
        lineage["data.excluded_partitions"] = ",".join(sorted(excluded))
    say(
        f"data: train {lineage['data.train_partitions']} ({lineage['data.train_rows']} rows), "
        f"holdout {lineage['data.holdout_partitions']} ({lineage['data.holdout_rows']} rows)"
        + (f", left out (quarantined) {lineage['data.excluded_partitions']}" if excluded else "")
    )
    ensure_ray(config.ray)
    tags = {**lineage, "retrain.cycle_id": cycle_id}
    with registry.cycle_run(f"cycle-{cycle_id}", tags) as run_id:
        data = TrainData(split.x_train, split.y_train, split.x_valid, split.y_valid)
        # warm-start trials continue the champion's booster on the rows it never trained on;
        # WarmStart says why not if they cannot (other features, a scikit-learn champion, no
        # new rows), and the search reports it
        warm = (WarmStart.of(registry.load(champion_version), split, version=champion_version,
                             seen=registry.version_partitions(champion_version,
                                                              trained_only=True),
                             rows=config.search.families.xgboost_warm_start.rows)
                if champion_version is not None
                and config.search.families.xgboost_warm_start.enabled else None)
        search = run_search(
            config, data, name=f"{config.project.name}-{cycle_id}", progress=echo is not None,
            warm_start=warm,
        )
        registry.log_trials(run_id, search)  # failed trials too, before giving up on them
        boosters, models, finalists = _finalists(config, search, split)
        champion = None
        if champion_version is not None:
            models[f"v{champion_version}"], champion = _champion_finalist(
                registry, champion_version, split
            )
        footprints = _footprints(split, models)
        finalists = [replace(f, footprint=footprints[f.name]) for f in finalists]
        if champion is not None:
            champion = replace(champion, footprint=footprints[champion.name])
        comparison = compare(
            task.type, task.primary_metric, split.y_holdout, finalists, champion,
            policy=policy, slice_frame=split.holdout_raw,
        )
        decision = decide(comparison, policy)
        booster = boosters[comparison.challenger.trial_id]
        model_uri = registry.log_model(
            run_id, booster, split.spec, task=task.type, metric=task.primary_metric
        )
        # what later admissions compare new partitions with, should this model be promoted
        registry.log_reference(run_id, _reference(split, config.data.target))
        model_version = None
        if decision.verdict is Verdict.PROMOTE:
            model_version = registry.register(
                model_uri,
                tags={**lineage, "retrain.run_id": run_id, "retrain.cycle_id": cycle_id,
                      "retrain.search": search.experiment_path},
            )
            # with a rollout, the champion alias moves only when the last canary step passes
            alias = CHALLENGER if rolls_out(config, champion_version) else CHAMPION
            registry.set_alias(alias, model_version)
        snapshot = {
            "partitions": [
                {"value": p.value, "rows": p.rows, "sha256": p.digest,
                 "role": "holdout" if p in split.holdout_partitions else "train"}
                for p in (*split.train_partitions, *split.holdout_partitions)
            ],
            "digest": lineage["data.digest"],
        }
        _record(config, decision, comparison, snapshot, search, run_id, champion_version,
                model_version,
                alias=CHALLENGER if rolls_out(config, champion_version) else CHAMPION)
        report = render_report(
            title=f"{config.project.name} cycle {cycle_id}",
            decision=decision, comparison=comparison, search=search, lineage=lineage,
            tolerances={s.column: s.tolerance for s in policy.slices},
            admission=None if admission is None else {
                v.partition: f"{v.status}: " + "; ".join(v.problems or v.warnings or ("ok",))
                for v in admission.partitions
            },
        )
        report_path = Path(config.project.workdir) / "reports" / f"cycle-{cycle_id}.html"
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(report)
        files = {"report.html": str(report_path)}
        if admission is not None:  # the person's view of admission.json, plots included
            admission_path = report_path.with_name(f"admission-{cycle_id}.html")
            admission_path.write_text(render_admission_report(
                admission, title=f"{config.project.name} admission, cycle {cycle_id}",
                reference={"champion version": str(champion_version), "cycle": cycle_id},
                policy=config.admission.policy(),
                record=str(Path(config.project.workdir) / "quarantine.jsonl"),
            ))
            files["admission.html"] = str(admission_path)
        registry.log_cycle(
            run_id,
            params=_cycle_params(config, comparison),
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
            },
            artifacts={
                "decision.json": {
                    "decision": decision.to_dict(),
                    "comparison": comparison.to_dict(),
                    "lineage": lineage,
                    "data_snapshot": snapshot,
                },
                **({"admission.json": admission.to_dict()} if admission else {}),
            },
            files=files,
        )
    return CycleResult(
        cycle_id=cycle_id,
        run_id=run_id,
        decision=decision,
        comparison=comparison,
        search=search,
        model_version=model_version,
        champion_version=champion_version if rolls_out(config, champion_version)
        else model_version or champion_version,
        lineage=lineage,
        wall_seconds=time.perf_counter() - start,
        report_path=str(report_path),
        admission=admission,
        excluded=tuple(sorted(excluded)),
    )


def _reference(split: Split, target: str):
    import pandas as pd

    frame = pd.concat([split.x_train, split.x_valid], ignore_index=True)
    frame[target] = list(split.y_train) + list(split.y_valid)
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
