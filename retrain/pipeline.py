"""One retraining cycle, composed from the stage functions: data -> search -> evaluate ->
decide -> registry. Plain functions and typed values; no state outside the arguments.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from retrain.config import Config
from retrain.data import Split, load_split
from retrain.decide import Decision, Verdict, decide
from retrain.errors import DataError
from retrain.evaluate import Comparison, compare
from retrain.registry import CHAMPION, MlflowRegistry
from retrain.runtime import ensure_ray, quiet_defaults
from retrain.search import SearchResult, TrainData, run_search
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

    @property
    def promoted(self) -> bool:
        return self.decision.verdict is Verdict.PROMOTE


def _champion_predictions(registry: MlflowRegistry, version: str, split: Split):
    champion = registry.load(version)
    try:
        frame = champion.spec.frame(split.holdout_raw)
    except InvalidInput as exc:
        raise DataError(
            f"the champion (version {version}) cannot score the new holdout: {exc}. The "
            "features changed since it was trained; compare on matching features or retire it"
        ) from exc
    return champion.predict(frame)


def run_cycle(config: Config, *, echo=None) -> CycleResult:
    """Run one cycle on the connected (or a new local) Ray cluster and return what happened.

    Works after ``ray.init(address=...)`` on an existing cluster, inside a Ray job, or on its
    own. Raises a `retrain.errors.RetrainError` with the cause and the fix on failure; the
    serving champion is never touched unless the decision is PROMOTE.
    """
    start = time.perf_counter()
    say = echo or (lambda line: None)
    quiet_defaults()
    cycle_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    task = config.task
    split = load_split(config.data, task.type)
    lineage = split.lineage()
    say(
        f"data: train {lineage['data.train_partitions']} ({lineage['data.train_rows']} rows), "
        f"holdout {lineage['data.holdout_partitions']} ({lineage['data.holdout_rows']} rows)"
    )
    registry = MlflowRegistry.from_config(config)
    champion_version = registry.alias_version(CHAMPION)
    ensure_ray(config.ray)
    tags = {**lineage, "retrain.cycle_id": cycle_id}
    with registry.cycle_run(f"cycle-{cycle_id}", tags) as run_id:
        data = TrainData(split.x_train, split.y_train, split.x_valid, split.y_valid)
        search = run_search(
            config, data, name=f"{config.project.name}-{cycle_id}", progress=echo is not None
        )
        registry.log_trials(run_id, search)  # failed trials too, before giving up on them
        best = search.require_best()
        booster = search.load_best()
        comparison = compare(
            task.type,
            task.primary_metric,
            split.y_holdout,
            booster.inplace_predict(split.x_holdout),
            None if champion_version is None
            else _champion_predictions(registry, champion_version, split),
            champion_version,
        )
        decision = decide(comparison, config.evaluation)
        model_uri = registry.log_model(
            run_id, booster, split.spec, task=task.type, metric=task.primary_metric
        )
        model_version = None
        if decision.verdict is Verdict.PROMOTE:
            model_version = registry.register(
                model_uri,
                tags={**lineage, "retrain.run_id": run_id, "retrain.cycle_id": cycle_id,
                      "retrain.search": search.experiment_path},
            )
            registry.set_alias(CHAMPION, model_version)
        registry.log_cycle(
            run_id,
            params=_cycle_params(config, search),
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
                    "comparison": {
                        "metric": comparison.metric,
                        "holdout_rows": comparison.holdout_rows,
                        "challenger": comparison.challenger,
                        "champion": comparison.champion,
                        "champion_version": comparison.champion_version,
                    },
                    "best_trial": {"trial_id": best.trial_id, "params": best.params},
                    "lineage": lineage,
                    "partitions": [
                        {"value": p.value, "rows": p.rows, "sha256": p.digest}
                        for p in (*split.train_partitions, *split.holdout_partitions)
                    ],
                }
            },
        )
    return CycleResult(
        cycle_id=cycle_id,
        run_id=run_id,
        decision=decision,
        comparison=comparison,
        search=search,
        model_version=model_version,
        champion_version=model_version or champion_version,
        lineage=lineage,
        wall_seconds=time.perf_counter() - start,
    )


def _cycle_params(config: Config, search: SearchResult) -> dict[str, Any]:
    return {
        "task": config.task.type,
        "metric": config.task.primary_metric,
        "num_samples": config.search.num_samples,
        "num_boost_round": config.search.num_boost_round,
        "early_stopping": config.search.early_stopping,
        "seed": config.search.seed,
        "min_improvement": config.evaluation.min_improvement,
        "min_score": config.evaluation.min_score,
        **{f"best.{k}": v for k, v in search.require_best().params.items()},
    }


def _cycle_metrics(comparison: Comparison, search: SearchResult) -> dict[str, float]:
    out = {f"challenger_{k}": v for k, v in comparison.challenger.items()}
    if comparison.champion:
        out.update({f"champion_{k}": v for k, v in comparison.champion.items()})
    out.update(
        search_wall_seconds=search.wall_seconds,
        trials_completed=search.count("completed"),
        trials_stopped=search.count("stopped"),
        trials_failed=search.count("failed"),
    )
    return out
