"""What a cycle leaves behind: the ledger entry, the HTML reports, and the parameters, metrics,
tags and artifacts of its MLflow run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retrain.admission_report import render_admission_report
from retrain.config import Config
from retrain.decide import Decision
from retrain.evaluate import Comparison
from retrain.ledger import EventKind, Ledger, LedgerEvent
from retrain.pipeline.state import CycleStage, _Cycle, _Judged
from retrain.registry import CHAMPION
from retrain.report import render_report
from retrain.search import SearchResult


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


def _record(config: Config, decision: Decision, comparison: Comparison, snapshot: dict,
            search: SearchResult, run_id: str, before: str | None, promoted: str | None,
            *, alias: str = CHAMPION) -> None:
    """The ledger: the decision always, and the alias move when there is one."""
    ledger = Ledger(config.ledger_path)
    common: dict[str, Any] = dict(model_name=config.model_name, data_snapshot=snapshot,
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
